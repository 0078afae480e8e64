"""Core tables: IMAP mailboxes and their checkpoints, inbound messages (raw
bytes first, then what each pipeline stage learned), quarantine records, and
the audit log.

An inbound message moves through ``state``:
``new`` -> ``parsed`` -> ``classified`` -> ``done``; CSMS mail (commands to
the request address, bounces to a VERP return path) goes ``new`` -> ``csms``
-> ``done``; or ``quarantined`` (it
could not be parsed; raw bytes kept), or ``failed`` (a stage kept raising
after ``max_attempts``).  Stages claim rows by state; see ``daemon.worker``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    BigInteger,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, deferred, mapped_column

from models.base import Base, JSONType, UTCDateTime, utcnow

# Message states (see module docstring).
NEW = "new"
PARSED = "parsed"
#: Automatic mail found by screening at parse time: never classified, recorded and dropped by respond.
SCREENED = "screened"
CLASSIFIED = "classified"
DONE = "done"
#: CSMS traffic (subscription commands, bounces of notices) for the csms stage.
CSMS = "csms"
QUARANTINED = "quarantined"
FAILED = "failed"
STATES = (NEW, PARSED, SCREENED, CLASSIFIED, CSMS, DONE, QUARANTINED, FAILED)
#: States in which a message waits for a stage (the backlog).
WAITING = (NEW, PARSED, SCREENED, CLASSIFIED, CSMS)


class Mailbox(Base):
    """One watched IMAP folder: its UID checkpoint and who holds its lease."""

    __tablename__ = "mailboxes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    uidvalidity: Mapped[int | None] = mapped_column(BigInteger)
    #: Highest UID committed under ``uidvalidity``.
    last_uid: Mapped[int] = mapped_column(BigInteger, default=0)
    #: The instance currently allowed to watch it, until ``lease_until``.
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class InboundMessage(Base):
    """A message as received, and what the pipeline has learned about it."""

    __tablename__ = "inbound_messages"
    __table_args__ = (
        # The same bytes to the same desk are one message (a redelivery).
        UniqueConstraint("desk", "sha256"),
        # The same UID under the same UIDVALIDITY is one message.
        UniqueConstraint("mailbox_id", "uidvalidity", "uid"),
        Index("ix_inbound_state_next", "state", "next_attempt_at"),
        # Outage surges are counted by label and arrival time (responders.incidents).
        Index("ix_inbound_label_received", "label", "received_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: The desk address the message was delivered to (one row per desk).
    desk: Mapped[str] = mapped_column(String(320))
    #: ``imap``, ``smtp``, ``lmtp`` or ``cli``.
    source: Mapped[str] = mapped_column(String(16))
    mailbox_id: Mapped[int | None] = mapped_column(ForeignKey("mailboxes.id"))
    uidvalidity: Mapped[int | None] = mapped_column(BigInteger)
    uid: Mapped[int | None] = mapped_column(BigInteger)
    envelope_from: Mapped[str | None] = mapped_column(String(998))
    envelope_to: Mapped[list[str] | None] = mapped_column(JSONType)
    raw: Mapped[bytes] = deferred(mapped_column(LargeBinary, nullable=False))
    size: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    message_id: Mapped[str | None] = mapped_column(String(998), index=True)
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    state: Mapped[str] = mapped_column(String(16), default=NEW)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    error: Mapped[str | None] = mapped_column(Text)

    #: The normalised record from the parse stage (``models.parsed.ParsedMessage.to_dict``).
    parsed: Mapped[dict[str, Any] | None] = deferred(mapped_column(JSONType))
    label: Mapped[str | None] = mapped_column(String(64))
    confidence: Mapped[float | None] = mapped_column(Float)
    #: Whether the confidence cleared the label's threshold for an automatic action.
    auto: Mapped[bool | None]
    model_version: Mapped[str | None] = mapped_column(String(64))
    language: Mapped[str | None] = mapped_column(String(8))
    identifiers: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    #: The classifier's three likeliest labels as ``[[label, probability], ...]``, best first, as
    #: recorded when it was classified (the console shows them; it never loads the model).
    top_labels: Mapped[list[Any] | None] = mapped_column(JSONType)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class QuarantineRecord(Base):
    """Why a message could not be processed; resolved when an operator retries it."""

    __tablename__ = "quarantine"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("inbound_messages.id"), index=True)
    #: A short machine-readable reason, e.g. ``not_rfc5322``, ``no_body``, ``parser_error``.
    reason: Mapped[str] = mapped_column(String(64))
    detail: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    resolved_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    resolved_by: Mapped[str | None] = mapped_column(String(200))


class AuditEntry(Base):
    """Who did what to which object, for operators and analysts."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    #: ``daemon@host:pid``, an analyst's name, or ``cli``.
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(64))
    subject_type: Mapped[str] = mapped_column(String(64))
    subject_id: Mapped[str] = mapped_column(String(64))
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
