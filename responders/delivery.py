"""What the delivery of a reply means for its ticket: the clocks when it is
sent, and when it cannot be delivered a note, the error and a triage item so
that a person sees it.  Called by the outbox through its ``on_sent`` and
``on_failed`` hooks, inside the transaction that records the outcome."""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection

from sqlalchemy import update
from sqlalchemy.orm import Session

from models.responders import TICKET_ANSWERED, Ticket, TicketMessage, TriageItem


def replies_sent(session: Session, ticket_ids: Collection[int], now: dt.datetime) -> None:
    """Start the first-response clock of these tickets and resolve the answered ones (two statements)."""
    if not ticket_ids:
        return
    ids = sorted(ticket_ids)
    session.execute(update(Ticket).where(Ticket.id.in_(ids), Ticket.first_response_at.is_(None))
                    .values(first_response_at=now))
    session.execute(update(Ticket).where(Ticket.id.in_(ids), Ticket.status == TICKET_ANSWERED,
                                         Ticket.resolved_at.is_(None))
                    .values(resolved_at=now))


def reply_failed(session: Session, ticket_id: int, outbox_id: int, message_id: str, why: str,
                 now: dt.datetime) -> None:
    """Record on the ticket that reply ``message_id`` will never be delivered, and queue it for a person."""
    ticket = session.get(Ticket, ticket_id)
    if ticket is None:
        return
    ticket.last_error = f"reply {message_id} not delivered: {why}"[:2000]
    session.add(TicketMessage(ticket_id=ticket.id, direction="note", outbox_id=outbox_id, author="outbox",
                              text=f"Delivery failed permanently: {why}"[:4000], created_at=now))
    session.add(TriageItem(ticket_id=ticket.id, reason="delivery_failed", security=ticket.security,
                           label=ticket.label, created_at=now, suggestion={"error": why[:500]}))
