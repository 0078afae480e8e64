"""Read-only views of tickets for people: the list and search (by number,
requester, UserID, label, state, text) and one ticket's whole thread in order,
each inbound message with its new text set apart from quoted history and
signature, its verification record and identifiers (SSN-shaped ones masked).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import exists, or_, select
from sqlalchemy.orm import Session, undefer

from models.core import InboundMessage
from models.parsed import Attachment, ParsedMessage
from models.responders import ResponseRecord, Ticket, TicketMessage, TriageItem
from responders.redact import redact

#: The headers an analyst needs to judge a message.
SHOWN_HEADERS = ("from", "reply-to", "to", "cc", "date", "subject", "message-id", "authentication-results",
                 "auto-submitted", "list-id", "x-mailer")


def mask(value: str) -> str:
    """An SSN-shaped number shown as ``***-**-1234``; anything else as it is (``responders.redact``)."""
    return redact(value, keep_last4=True)


def mask_text(text: str) -> str:
    """Free text with SSN-shaped numbers shown as ``***-**-1234`` (the one pattern, ``responders.redact``)."""
    return redact(text, keep_last4=True)


def masked_identifiers(identifiers: dict[str, Any] | None) -> list[tuple[str, str]]:
    """``(kind, value)`` pairs for display, SSN-shaped values masked."""
    out: list[tuple[str, str]] = []
    for kind, values in (identifiers or {}).items():
        for value in values if isinstance(values, list) else [values]:
            shown = mask(str(value))
            out.append((kind, "***-**-" + shown[-4:] if kind.lower() in ("ssn",) else shown))
    return out


@dataclass(frozen=True)
class ThreadEntry:
    at: dt.datetime
    #: ``in``, ``out`` or ``note``.
    direction: str
    author: str
    text: str
    inbound_id: int | None = None
    quoted: str = ""
    signature: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)
    has_html: bool = False
    verification: str | None = None
    verification_reasons: list[str] = field(default_factory=list)
    decision: str | None = None
    label: str | None = None
    confidence: float | None = None
    identifiers: list[tuple[str, str]] = field(default_factory=list)
    subject: str = ""


def _inbound_entry(row: InboundMessage, record: ResponseRecord | None, at: dt.datetime) -> ThreadEntry:
    msg = ParsedMessage.from_dict(row.parsed) if row.parsed else None
    if msg is None:
        return ThreadEntry(at=at, direction="in", author=row.envelope_from or "", text="(not parsed)",
                           inbound_id=row.id)
    headers = [(name, value) for name in SHOWN_HEADERS for value in msg.headers.get(name, [])]
    if not any(n == "from" for n, _ in headers):
        headers = [("from", f"{msg.sender_name} <{msg.sender}>"), ("subject", msg.subject),
                   ("date", msg.date or "")] + headers
    return ThreadEntry(
        at=at, direction="in", author=msg.sender, text=mask_text(msg.new_text or msg.text), inbound_id=row.id,
        quoted=mask_text(msg.quoted_text), signature=mask_text(msg.signature), headers=headers, attachments=list(msg.attachments),
        has_html="html" in (msg.content_type or "") or (msg.content_type or "").startswith("multipart"),
        subject=msg.subject,
        verification=record.verification if record else None,
        verification_reasons=list(record.verification_reasons or []) if record else [],
        decision=f"{record.action} {record.template or ''}".strip() if record else None,
        label=row.label, confidence=row.confidence, identifiers=masked_identifiers(row.identifiers))


def thread(session: Session, ticket: Ticket) -> list[ThreadEntry]:
    """The ticket's messages, notes and replies, oldest first."""
    history = list(session.scalars(select(TicketMessage).where(TicketMessage.ticket_id == ticket.id)
                                   .order_by(TicketMessage.created_at, TicketMessage.id)))
    inbound_ids = [m.inbound_message_id for m in history if m.inbound_message_id]
    rows = {r.id: r for r in session.scalars(select(InboundMessage).where(InboundMessage.id.in_(inbound_ids))
                                             .options(undefer(InboundMessage.parsed)))} if inbound_ids else {}
    records = {r.inbound_message_id: r for r in session.scalars(
        select(ResponseRecord).where(ResponseRecord.inbound_message_id.in_(inbound_ids)))} if inbound_ids else {}
    out = []
    for m in history:
        row = rows.get(m.inbound_message_id or -1)
        if m.direction == "in" and row is not None:
            out.append(_inbound_entry(row, records.get(row.id), m.created_at))
        else:
            out.append(ThreadEntry(at=m.created_at, direction=m.direction, author=m.author, text=m.text))
    return out


@dataclass(frozen=True)
class TicketRow:
    id: int
    number: str | None
    status: str
    priority: str
    label: str | None
    language: str
    requester: str
    user_id: str | None
    verification: str | None
    subject: str
    created_at: dt.datetime
    due_at: dt.datetime | None
    security: bool


def search(session: Session, *, text: str = "", state: str = "", label: str = "", limit: int = 50,
           offset: int = 0) -> list[TicketRow]:
    """Tickets, newest first: ``text`` matches a number, requester, UserID, subject or message text."""
    query = select(Ticket.id, Ticket.number, Ticket.status, Ticket.priority, Ticket.label, Ticket.language,
                   Ticket.requester, Ticket.user_id, Ticket.verification, Ticket.subject, Ticket.created_at,
                   Ticket.due_at, Ticket.security)
    if state:
        query = query.where(Ticket.status == state)
    if label:
        query = query.where(Ticket.label == label)
    text = text.strip()
    if text:
        like = f"%{text.replace('%', '').replace('_', '')}%"
        query = query.where(or_(Ticket.number == text.upper(), Ticket.requester.ilike(like),
                                Ticket.user_id == text, Ticket.subject.ilike(like),
                                exists().where(TicketMessage.ticket_id == Ticket.id, TicketMessage.text.ilike(like))))
    query = query.order_by(Ticket.id.desc()).limit(limit).offset(offset)
    return [TicketRow(*r) for r in session.execute(query).all()]


def find_ticket(session: Session, ref: str | int) -> Ticket | None:
    text = str(ref).strip()
    if text.isdigit():
        return session.get(Ticket, int(text))
    return session.scalar(select(Ticket).where(Ticket.number == text.upper()))


def ticket_items(session: Session, ticket_id: int) -> list[TriageItem]:
    return list(session.scalars(select(TriageItem).where(TriageItem.ticket_id == ticket_id).order_by(TriageItem.id)))
