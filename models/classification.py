"""Tables owned by the classification work: analysts' corrections of the
classifier's labels, and the functions that record and read them.

The triage queue records a correction with :func:`record_correction`; the
next ``acedesk train`` reads them with :func:`corrections_for_training` and
trains on the stored new text of each corrected message with the analyst's
label (the newest correction of a message wins).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import ForeignKey, Integer, String, select
from sqlalchemy.orm import Mapped, Session, mapped_column, undefer

from classifiers.labels import check_label
from models.base import Base, UTCDateTime, utcnow
from models.core import InboundMessage
from models.parsed import ParsedMessage


class LabelCorrection(Base):
    """An analyst's verdict on a message's label: ``message, correct label, who, when``."""

    __tablename__ = "label_corrections"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("inbound_messages.id", ondelete="CASCADE"), index=True)
    label: Mapped[str] = mapped_column(String(64))
    #: The label the model gave, for the record (``None`` if it never classified the message).
    previous_label: Mapped[str | None] = mapped_column(String(64))
    model_version: Mapped[str | None] = mapped_column(String(64))
    corrected_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


@dataclass(frozen=True)
class CorrectedExample:
    message_id: int
    label: str
    #: Subject and new text of the message, as the classifier reads them.
    text: str
    language: str


def record_correction(session: Session, message_id: int, label: str, who: str) -> LabelCorrection:
    """Record that message ``message_id`` should have been ``label``, according to ``who``.

    Also sets the message's label (confidence 1, not automatic).  Raises
    ``ValueError`` for a label outside the taxonomy or an unknown message.
    """
    check_label(label)
    message = session.get(InboundMessage, message_id)
    if message is None:
        raise ValueError(f"no inbound message {message_id}")
    correction = LabelCorrection(message_id=message_id, label=label, previous_label=message.label,
                                 model_version=message.model_version, corrected_by=who)
    session.add(correction)
    message.label = label
    message.confidence = 1.0
    message.auto = False
    session.flush()
    return correction


def corrections_for_training(session: Session) -> list[CorrectedExample]:
    """Return the newest correction of every corrected message that has a parsed text."""
    newest: dict[int, LabelCorrection] = {}
    for c in session.scalars(select(LabelCorrection).order_by(LabelCorrection.created_at, LabelCorrection.id)):
        newest[c.message_id] = c
    if not newest:
        return []
    rows = session.scalars(select(InboundMessage).where(InboundMessage.id.in_(list(newest)))
                           .options(undefer(InboundMessage.parsed)))
    out = []
    for row in sorted(rows, key=lambda r: r.id):
        if not row.parsed:
            continue
        parsed = ParsedMessage.from_dict(row.parsed)
        text = parsed.classifier_text
        if text:
            out.append(CorrectedExample(message_id=row.id, label=newest[row.id].label, text=text,
                                        language=row.language or ""))
    return out
