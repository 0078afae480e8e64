"""The normalised record of a parsed message: plain data that every pipeline
stage reads (screen, classify, verify, decide), stored as JSON on the
inbound row."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Attachment:
    filename: str
    content_type: str
    size: int


@dataclass(frozen=True)
class ParsedMessage:
    """What the parse stage learned from the raw bytes."""

    #: ``From`` address (lower-cased addr-spec) and display name.
    sender: str
    sender_name: str
    #: Envelope sender (Return-Path / MAIL FROM); ``""`` for the null path ``<>``.
    return_path: str | None
    to: list[str]
    cc: list[str]
    reply_to: list[str]
    subject: str
    date: str | None
    message_id: str | None
    in_reply_to: str | None
    references: list[str]
    #: Decoded body text (HTML turned into text), whole.
    text: str
    #: The sender's own new words: body without quoted history and signature.
    new_text: str
    #: Quoted history and signature, set apart.
    quoted_text: str
    signature: str
    attachments: list[Attachment] = field(default_factory=list)
    #: Selected headers kept for screening and verification (lower-case names, all values).
    headers: dict[str, list[str]] = field(default_factory=dict)
    content_type: str = "text/plain"
    #: Problems noticed while parsing that did not prevent it (for operators).
    defects: list[str] = field(default_factory=list)
    #: The trace fields in header order, top (newest) first: ``[name, value]`` pairs of
    #: ``Received`` and ``Authentication-Results``; where an AR sits decides whether it counts.
    trace: list[list[str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        # What dataclasses.asdict returns, built by hand: its recursive deep copy was a tenth
        # of the parse stage's cost.  Containers are copied; strings need not be.
        data: dict[str, Any] = {name: getattr(self, name) for name in _SCALARS}
        data.update(to=list(self.to), cc=list(self.cc), reply_to=list(self.reply_to),
                    references=list(self.references), defects=list(self.defects),
                    attachments=[{"filename": a.filename, "content_type": a.content_type, "size": a.size}
                                 for a in self.attachments],
                    headers={k: list(v) for k, v in self.headers.items()},
                    trace=[list(t) for t in self.trace])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ParsedMessage":
        data = dict(data)
        data["attachments"] = [Attachment(**a) for a in data.get("attachments", [])]
        known = _FIELDS if cls is ParsedMessage else {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def header(self, name: str) -> str | None:
        """Return the first value of header ``name`` (case-insensitive), or None."""
        values = self.headers.get(name.lower())
        return values[0] if values else None

    @property
    def classifier_text(self) -> str:
        """Subject and new text: what the classifier reads."""
        return f"{self.subject}\n{self.new_text}".strip()


_CONTAINERS = frozenset({"to", "cc", "reply_to", "references", "defects", "attachments", "headers", "trace"})
_SCALARS = tuple(f.name for f in dataclasses.fields(ParsedMessage) if f.name not in _CONTAINERS)
#: Field names (from_dict ignores other keys); dataclasses.fields() per call was a third of its cost.
_FIELDS = frozenset(f.name for f in dataclasses.fields(ParsedMessage))
