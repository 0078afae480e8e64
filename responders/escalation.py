"""Escalation: a ticket about to miss its target is raised in priority and
somebody is told, once.

The desk's target (seed 002: >= 90% of tickets processed within 4 hours) is
each ticket's ``due_at``, which already skips the hours the desk is closed
(:mod:`responders.hours`).  A sweep (:func:`escalate_due`, run by the daemon
every ``[escalation] interval`` seconds and by ``acedesk escalate``) finds the
tickets still open -- not answered, not closed; an open triage item keeps its
ticket open -- whose ``due_at`` is within ``margin_minutes``, raises them to
``high``, records ``escalated_at`` (what the SLA report counts) and a note on
the ticket, and mails one digest per recipient: the ticket's assignee when it
has one, else the desk's escalation address.  ``escalated_at`` is set in the
same transaction as the digest's outbox row, so nobody is told twice.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from models.outbox import PENDING, OutboxMessage
from models.responders import TICKET_OPEN, Ticket, TicketMessage
from responders.render import build_reply

if TYPE_CHECKING:
    from responders.service import Responder

TEMPLATE = "escalation"


@dataclass(frozen=True)
class EscalationConfig:
    """The ``[escalation]`` section."""

    enabled: bool = True
    #: Escalate a ticket this many minutes before its target.
    margin_minutes: float = 30.0
    #: Who is told when the ticket has no assignee.
    address: str = "escalation@ace-support.example"
    #: Seconds between the daemon's sweeps.
    interval: float = 60.0
    #: At most this many tickets escalated per sweep (the rest wait for the next).
    batch_size: int = 500

    def __post_init__(self) -> None:
        if self.margin_minutes < 0 or self.interval <= 0:
            raise ValueError("margin_minutes must not be negative and interval must be positive")


def assignee_of(ticket: Ticket) -> str | None:
    """Return the analyst's address a ticket is assigned to, when tickets carry one."""
    value = getattr(ticket, "assignee", None)
    return value if isinstance(value, str) and "@" in value else None


def near_breach(session: Session, cfg: EscalationConfig, now: dt.datetime) -> list[Ticket]:
    """Return the open tickets due within the margin that were never escalated, soonest first."""
    limit = now + dt.timedelta(minutes=cfg.margin_minutes)
    return list(session.scalars(
        select(Ticket).where(Ticket.status == TICKET_OPEN, Ticket.escalated_at.is_(None),
                             Ticket.due_at.is_not(None), Ticket.due_at <= limit)
        .order_by(Ticket.due_at, Ticket.id).limit(cfg.batch_size).with_for_update(skip_locked=True)))


def escalate_due(session: Session, responder: Responder, cfg: EscalationConfig, now: dt.datetime) -> list[Ticket]:
    """Escalate what is near its target; return the tickets escalated now (the caller commits)."""
    tickets = near_breach(session, cfg, now)
    groups: dict[str, list[Ticket]] = defaultdict(list)
    for ticket in tickets:
        to = assignee_of(ticket) or cfg.address
        ticket.priority = "high"
        ticket.escalated_at, ticket.escalated_to = now, to
        session.add(TicketMessage(ticket_id=ticket.id, direction="note", author="acedesk escalation",
                                  text=f"escalated to {to}: due {ticket.due_at:%Y-%m-%d %H:%M} UTC, "
                                       f"priority raised to high", created_at=now))
        groups[to].append(ticket)
    for to, group in groups.items():
        items = [{"number": t.number, "subject": t.subject[:120], "label": t.label or "-",
                  "requester": t.requester, "due": responder.hours.describe_time(t.due_at or now),
                  "overdue": (t.due_at or now) <= now, "security": t.security} for t in group]
        first = group[0].number or ""
        reply = build_reply(
            responder.renderer, template=TEMPLATE, language="en", to=to, from_address=responder.desk.reply_from,
            from_name=responder.cfg.from_name,
            subject=f"Escalation: {len(group)} ticket(s) near the {responder.cfg.target_hours:g}-hour target"
                    + (f" ({first})" if len(group) == 1 else ""),
            ticket=first, secret=responder.secret, in_reply_to=None, references=[],
            auto_submitted="auto-generated",
            context={"name": "", "subject": "", "tickets": items, "margin": f"{cfg.margin_minutes:g}",
                     "target_hours": f"{responder.cfg.target_hours:g}"})
        # No ticket_id: a digest to the desk is not a response to the requester (it must not stop the clock).
        session.add(OutboxMessage(inbound_message_id=None, ticket_id=None,
                                  mail_from=reply.mail_from, rcpt_to=[reply.to], message_id=reply.message_id,
                                  template=TEMPLATE, raw=reply.raw, status=PENDING, attempts=0,
                                  next_attempt_at=now, created_at=now))
    return tickets


def escalations(session: Session, since: dt.datetime, until: dt.datetime) -> int:
    """Return how many tickets were escalated in ``[since, until)`` (the SLA report's count)."""
    return int(session.scalar(select(func.count()).select_from(Ticket).where(
        Ticket.escalated_at >= since, Ticket.escalated_at < until)) or 0)
