"""Escalation: a ticket about to miss its target is raised in priority and
the people who must act are told, once.

The desk's target (seed 002: >= 90% of tickets processed within 4 hours;
urgent priority requests, ACE Command Center / War Room activities) is each
ticket's ``due_at``, which already skips the hours the desk is closed
(:mod:`responders.hours`).  A sweep (:func:`escalate_due`, run by the daemon
every ``[escalation] interval`` seconds and by ``acedesk escalate``) finds the
tickets still open -- not answered, not closed; an open triage item keeps its
ticket open -- whose ``due_at`` is within ``margin_minutes``, raises them to
``high``, records ``escalated_at`` (what the SLA report counts) and a note on
the ticket, and mails digests:

* the desk's escalation ``address`` gets every ticket escalated now, urgent
  ones (already ``high`` before: outages, held cargo) marked, and the War
  Room's open incidents;
* each analyst a ticket's open triage item is assigned to gets a digest of
  their own tickets only, at the e-mail address on their analyst account
  (``acedesk analysts add NAME --email`` / ``analysts email``); an analyst
  with no address, or disabled, is not written to (the desk's digest names
  them).

``escalated_at`` is set in the same transaction as the digests' outbox rows,
so a ticket is escalated, and each person told, once -- also across restarts.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from models.analysts import Analyst
from models.duties import INCIDENT_OPEN, Incident, IncidentReport
from models.outbox import PENDING, OutboxMessage
from models.responders import TICKET_OPEN, TRIAGE_OPEN, Ticket, TicketMessage, TriageItem
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
    #: The desk's escalation address: told of every escalated ticket (assignees of their own too).
    address: str = "escalation@ace-support.example"
    #: Seconds between the daemon's sweeps.
    interval: float = 60.0
    #: At most this many tickets escalated per sweep (the rest wait for the next).
    batch_size: int = 500

    def __post_init__(self) -> None:
        if self.margin_minutes < 0 or self.interval <= 0:
            raise ValueError("margin_minutes must not be negative and interval must be positive")


@dataclass(frozen=True)
class Assignee:
    """The analyst a ticket's open triage item is assigned to."""

    name: str
    #: Their account's e-mail address; None when they have none or are disabled (not written to).
    email: str | None


def assignees(session: Session, ticket_ids: list[int]) -> dict[int, Assignee]:
    """Return who each of ``ticket_ids`` is assigned to (through its open triage item), when anyone."""
    if not ticket_ids:
        return {}
    rows = session.execute(
        select(TriageItem.ticket_id, TriageItem.assigned_to, Analyst.name, Analyst.email, Analyst.disabled)
        # Analyst names are stored lower-case; 'queue assign ID Ann' keeps what was typed.
        .outerjoin(Analyst, Analyst.name == func.lower(func.trim(TriageItem.assigned_to)))
        .where(TriageItem.ticket_id.in_(ticket_ids), TriageItem.status == TRIAGE_OPEN,
               TriageItem.assigned_to.is_not(None))
        .order_by(TriageItem.id))
    found: dict[int, Assignee] = {}
    for ticket_id, assigned_to, account, email, disabled in rows:
        # The newest open item of a ticket wins (a follow-up reassigned to someone else).
        found[ticket_id] = Assignee(account or assigned_to, email if email and not disabled else None)
    return found


def near_breach(session: Session, cfg: EscalationConfig, now: dt.datetime) -> list[Ticket]:
    """Return the open tickets due within the margin that were never escalated, soonest first."""
    limit = now + dt.timedelta(minutes=cfg.margin_minutes)
    return list(session.scalars(
        select(Ticket).where(Ticket.status == TICKET_OPEN, Ticket.escalated_at.is_(None),
                             Ticket.due_at.is_not(None), Ticket.due_at <= limit)
        .order_by(Ticket.due_at, Ticket.id).limit(cfg.batch_size).with_for_update(skip_locked=True)))


def war_room(session: Session, responder: Responder) -> list[dict[str, object]]:
    """Return the open incidents, for the desk's digest (one small query each; rarely more than one)."""
    items: list[dict[str, object]] = []
    for incident in session.scalars(select(Incident).where(Incident.status == INCIDENT_OPEN).order_by(Incident.id)):
        reports = session.scalar(select(func.count()).select_from(IncidentReport)
                                 .where(IncidentReport.incident_id == incident.id)) or 0
        items.append({"number": incident.number, "title": incident.title, "reports": int(reports),
                      "opened": responder.hours.describe_time(incident.opened_at)})
    return items


def escalate_due(session: Session, responder: Responder, cfg: EscalationConfig, now: dt.datetime) -> list[Ticket]:
    """Escalate what is near its target; return the tickets escalated now (the caller commits)."""
    tickets = near_breach(session, cfg, now)
    if not tickets:
        return []
    owners = assignees(session, [t.id for t in tickets])
    items: dict[int, dict[str, object]] = {}
    mine: dict[str, list[int]] = defaultdict(list)
    for ticket in tickets:
        owner = owners.get(ticket.id)
        items[ticket.id] = {
            "number": ticket.number, "subject": ticket.subject[:120], "label": ticket.label or "-",
            "requester": ticket.requester, "due": responder.hours.describe_time(ticket.due_at or now),
            "overdue": (ticket.due_at or now) <= now, "security": ticket.security,
            # Already high before the sweep: an urgent request (outage, cargo held), seed 002's War Room work.
            "urgent": ticket.priority == "high", "assignee": owner.name if owner else ""}
        told = [cfg.address] + ([owner.email] if owner and owner.email else [])
        ticket.priority = "high"
        ticket.escalated_at, ticket.escalated_to = now, ", ".join(told)[:320]
        session.add(TicketMessage(ticket_id=ticket.id, direction="note", author="acedesk escalation",
                                  text=f"escalated to {' and '.join(told)}: due {ticket.due_at:%Y-%m-%d %H:%M} UTC, "
                                       f"priority raised to high", created_at=now))
        if owner and owner.email:
            mine[owner.email].append(ticket.id)
    _queue_digest(session, responder, cfg, cfg.address, list(items.values()), now,
                  incidents=war_room(session, responder), assignee=None)
    for email, ids in mine.items():
        _queue_digest(session, responder, cfg, email, [items[i] for i in ids], now, incidents=[],
                      assignee=str(owners[ids[0]].name))
    return tickets


def _queue_digest(session: Session, responder: Responder, cfg: EscalationConfig, to: str,
                  items: list[dict[str, object]], now: dt.datetime, *, incidents: list[dict[str, object]],
                  assignee: str | None) -> None:
    """Put one digest to ``to`` in the outbox (an assignee's names only their tickets)."""
    first = str(items[0]["number"] or "")
    reply = build_reply(
        responder.renderer, template=TEMPLATE, language="en", to=to, from_address=responder.desk.reply_from,
        from_name=responder.cfg.from_name,
        subject=f"Escalation: {len(items)} ticket(s) {'assigned to you ' if assignee else ''}near the "
                f"{responder.cfg.target_hours:g}-hour target" + (f" ({first})" if len(items) == 1 else ""),
        ticket=first, secret=responder.secret, in_reply_to=None, references=[],
        auto_submitted="auto-generated",
        context={"name": assignee or "", "subject": "", "tickets": items, "margin": f"{cfg.margin_minutes:g}",
                 "target_hours": f"{responder.cfg.target_hours:g}", "assignee": assignee or "",
                 "incidents": incidents})
    # No ticket_id: a digest to the desk is not a response to the requester (it must not stop the clock).
    session.add(OutboxMessage(inbound_message_id=None, ticket_id=None,
                              mail_from=reply.mail_from, rcpt_to=[reply.to], message_id=reply.message_id,
                              template=TEMPLATE, raw=reply.raw, status=PENDING, attempts=0,
                              next_attempt_at=now, created_at=now))


def escalations(session: Session, since: dt.datetime, until: dt.datetime) -> int:
    """Return how many tickets were escalated in ``[since, until)`` (the SLA report's count)."""
    return int(session.scalar(select(func.count()).select_from(Ticket).where(
        Ticket.escalated_at >= since, Ticket.escalated_at < until)) or 0)
