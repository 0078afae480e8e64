"""Quarantine: messages that could not be processed, kept with their raw
bytes and a reason, for an operator to look at and re-run after a fix."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.base import utcnow
from models.core import NEW, QUARANTINED, AuditEntry, InboundMessage, QuarantineRecord


def quarantine(session: Session, row: InboundMessage, reason: str, detail: str) -> QuarantineRecord:
    """Set ``row`` aside with ``reason``; return the open record."""
    row.state = QUARANTINED
    row.error = f"{reason}: {detail}"[:8000]
    record = QuarantineRecord(message_id=row.id, reason=reason, detail=detail[:4000], created_at=utcnow())
    session.add(record)
    return record


def retry(session: Session, record_ids: Sequence[int] | None, actor: str) -> int:
    """Resolve open records (all when ``record_ids`` is None) and send their messages back to ``new``."""
    query = select(QuarantineRecord).where(QuarantineRecord.resolved_at.is_(None))
    if record_ids:
        query = query.where(QuarantineRecord.id.in_(record_ids))
    records = list(session.scalars(query))
    now = utcnow()
    for record in records:
        record.resolved_at = now
        record.resolved_by = actor
        message = session.get(InboundMessage, record.message_id)
        if message is not None and message.state == QUARANTINED:
            message.state = NEW
            message.attempts = 0
            message.next_attempt_at = None
            message.error = None
        session.add(AuditEntry(at=now, actor=actor, action="quarantine.retry", subject_type="message",
                               subject_id=str(record.message_id), detail={"quarantine": record.id}))
    return len(records)


def still_quarantined(session: Session, record_ids: Sequence[int] | None) -> int:
    """Return how many of the messages behind ``record_ids`` are quarantined again."""
    query = select(QuarantineRecord.message_id)
    if record_ids:
        query = query.where(QuarantineRecord.id.in_(record_ids))
    ids = set(session.scalars(query))
    if not ids:
        return 0
    rows = session.scalars(select(InboundMessage.id).where(InboundMessage.id.in_(ids))
                           .where(InboundMessage.state == QUARANTINED))
    return len(list(rows))
