"""The analysts' triage queue as operations: claim, assign, note, relabel,
approve, reply and close.  The CLI (and the web console) find an item, call
one of these inside a transaction, and print what it returns; every rule of
the queue lives here.

The state machine: an item is ``open`` until an analyst approves, replies to
or closes it (``done``); only an open item can be claimed, assigned,
relabelled, approved or replied to -- anything else is refused with a
:class:`QueueError` that says what to do instead.  Closing closes the ticket
(refused once it is closed); a note may be added to any ticket.  Every operation is written to the audit log under the analyst's name.

A person's reply is a person's: the analyst's words only (no greeting added,
no "automatic answer" footer, no ``Auto-Submitted``), threaded to the latest
message of the ticket, from the desk address.  An approval sends the answer of
the item's label as the analyst sees it; a label without an answer of its own
(``other``) cannot be approved: relabel it, or reply.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.core import AuditEntry
from models.outbox import OutboxMessage
from models.responders import (
    TICKET_ANSWERED,
    TICKET_CLOSED,
    TRIAGE_DONE,
    TRIAGE_OPEN,
    Ticket,
    TicketMessage,
    TriageItem,
    User,
)
from responders.render import RenderError, build_reply
from responders.service import Responder, enqueue
from responders.settings import ACCOUNT_LABELS
from responders.tickets import find_ticket, reply_subject
from responders.verify import VERIFIED

#: Labels whose template promises a review rather than answering: nothing to approve.
NO_ANSWER = frozenset({"other"})
#: The template of a person's own words.
PERSON_TEMPLATE = "analyst_reply"


class QueueError(Exception):
    """The operation makes no sense for this item now; the message says why and what to do."""


@dataclass(frozen=True)
class Sent:
    """A reply written to the outbox."""

    to: str
    template: str
    outbox_id: int
    ticket: str


def find_item(session: Session, ref: str) -> TriageItem:
    """Return the item ``ref`` names: its id, or a ticket number (that ticket's open item, else its latest)."""
    ref = ref.strip()
    if ref.isdigit():
        item = session.get(TriageItem, int(ref))
        if item is None:
            raise QueueError(f"no triage item {ref}")
        return item
    ticket = find_ticket(session, ref)
    items = list(session.scalars(select(TriageItem).where(TriageItem.ticket_id == ticket.id)
                                 .order_by(TriageItem.id.desc())))
    if not items:
        raise QueueError(f"ticket {ticket.number} has no triage item: see 'acedesk tickets show {ticket.number}'")
    return next((i for i in items if i.status == TRIAGE_OPEN), items[0])


def _ticket(session: Session, item: TriageItem) -> Ticket:
    ticket = session.get(Ticket, item.ticket_id)
    assert ticket is not None  # a foreign key
    return ticket


def _require_open(item: TriageItem, action: str) -> None:
    if item.status != TRIAGE_OPEN:
        raise QueueError(f"triage item {item.id} is already {item.status} ({item.resolution or 'resolved'} by "
                         f"{item.resolved_by or '?'}): cannot {action} it")


def _audit(session: Session, analyst: str, action: str, item: TriageItem, now: dt.datetime,
           **detail: Any) -> None:
    session.add(AuditEntry(at=now, actor=analyst, action=f"queue.{action}", subject_type="triage_item",
                           subject_id=str(item.id), detail=detail))


def _resolve(session: Session, item: TriageItem, resolution: str, analyst: str, now: dt.datetime,
             **detail: Any) -> None:
    item.status = TRIAGE_DONE
    item.resolved_at = now
    item.resolved_by = analyst
    item.resolution = resolution
    _audit(session, analyst, resolution, item, now, **detail)


def claim(session: Session, item: TriageItem, analyst: str, now: dt.datetime) -> None:
    """Take the item for ``analyst`` (refused while another analyst has it)."""
    _require_open(item, "claim")
    if item.assigned_to and item.assigned_to != analyst:
        raise QueueError(f"triage item {item.id} is with {item.assigned_to}: ask them, or "
                         f"'queue assign {item.id} {analyst}'")
    assign(session, item, analyst, analyst, now)


def assign(session: Session, item: TriageItem, analyst: str, to: str, now: dt.datetime) -> None:
    """Give the item to analyst ``to``."""
    _require_open(item, "assign")
    if not to.strip():
        raise QueueError("assign to whom? give an analyst's name")
    previous = item.assigned_to
    item.assigned_to, item.assigned_at = to.strip(), now
    _audit(session, analyst, "assign", item, now, to=item.assigned_to, previous=previous)


def note(session: Session, item: TriageItem, analyst: str, text: str, now: dt.datetime) -> TicketMessage:
    """Keep an internal note on the item's ticket (never sent)."""
    if not text.strip():
        raise QueueError("an empty note: give its text")
    entry = TicketMessage(ticket_id=item.ticket_id, direction="note", author=analyst, text=text[:4000],
                          created_at=now)
    session.add(entry)
    _audit(session, analyst, "note", item, now, length=len(text))
    return entry


def relabel(session: Session, item: TriageItem, label: str, analyst: str, now: dt.datetime) -> str | None:
    """Correct the item's label (kept for training); return the previous one."""
    from models.classification import record_correction

    _require_open(item, "relabel")
    previous = item.label
    if item.inbound_message_id is not None:
        try:
            record_correction(session, item.inbound_message_id, label, analyst)
        except ValueError as exc:
            raise QueueError(str(exc)) from None
    item.label, item.confidence = label, 1.0
    _ticket(session, item).label = label
    _audit(session, analyst, "relabel", item, now, **{"from": previous, "to": label,
                                                       "message": item.inbound_message_id})
    return previous


def _send(session: Session, responder: Responder, ticket: Ticket, template: str, to: str, now: dt.datetime,
          context: dict[str, Any], person: str | None) -> OutboxMessage:
    """Render and queue one reply on ``ticket``, threaded to its latest message."""
    thread = [m for m in session.scalars(select(TicketMessage.message_id).where(
        TicketMessage.ticket_id == ticket.id, TicketMessage.message_id.is_not(None),
        TicketMessage.direction.in_(("in", "out"))).order_by(TicketMessage.id)) if m]
    try:
        reply = build_reply(
            responder.renderer, template=template, language=ticket.language, to=to,
            from_address=responder.desk.reply_from, from_name=responder.cfg.from_name,
            subject=reply_subject(ticket.subject, ticket.number or "", responder.cfg.ticket_prefix, ticket.language),
            ticket=ticket.number or "", secret=responder.secret,
            in_reply_to=thread[-1] if thread else None, references=thread,
            context={"name": "", "subject": ticket.subject[:200], "csms_address": responder.desk.csms_address,
                     "target_hours": f"{responder.cfg.target_hours:g}", **context},
            auto=person is None)
    except RenderError as exc:
        raise QueueError(str(exc)) from None
    out, history = enqueue(session, reply, ticket, None, now)
    if person is not None:
        history.author = person   # who wrote it; the message itself comes from the desk address
    return out


def _account_address(session: Session, ticket: Ticket, label: str) -> str:
    """Where an account answer may go: the verified user's address on file, else a refusal."""
    if ticket.verification != VERIFIED:
        raise QueueError(f"{label} answers go only to verified users at the address on file; ticket "
                         f"{ticket.number} is {ticket.verification}: reply in your own words or close it")
    user = session.scalars(select(User).where(User.user_id == ticket.user_id)).first()
    if user is None:
        raise QueueError(f"user {ticket.user_id} is no longer on file")
    return user.email


def approve(session: Session, responder: Responder, item: TriageItem, analyst: str, now: dt.datetime) -> Sent:
    """Send the answer of the item's label and resolve the item."""
    _require_open(item, "approve")
    ticket = _ticket(session, item)
    label = item.label or "other"
    if label in NO_ANSWER or not responder.renderer.has(label, ticket.language):
        raise QueueError(f"label {label!r} has no answer to send: relabel item {item.id} "
                         f"('queue relabel {item.id} LABEL') or reply in your own words ('queue reply')")
    to = _account_address(session, ticket, label) if label in ACCOUNT_LABELS else ticket.requester
    out = _send(session, responder, ticket, label, to, now, {}, None)
    ticket.status = TICKET_ANSWERED
    _resolve(session, item, "approved", analyst, now, template=label, outbox=out.id)
    return Sent(to, label, out.id, ticket.number or "")


def reply(session: Session, responder: Responder, item: TriageItem, analyst: str, now: dt.datetime, *,
          text: str | None = None, template: str | None = None) -> Sent:
    """Answer the requester with a template or in the analyst's own words, and resolve the item."""
    _require_open(item, "reply to")
    ticket = _ticket(session, item)
    if template:
        to = _account_address(session, ticket, template) if template in ACCOUNT_LABELS else ticket.requester
        out = _send(session, responder, ticket, template, to, now, {}, None)
    else:
        if not (text or "").strip():
            raise QueueError("an empty reply: give your text")
        to = ticket.requester
        out = _send(session, responder, ticket, PERSON_TEMPLATE, to, now, {"text": text}, analyst)
    _resolve(session, item, "replied", analyst, now, template=template or PERSON_TEMPLATE, outbox=out.id, to=to)
    return Sent(to, template or PERSON_TEMPLATE, out.id, ticket.number or "")


def close(session: Session, item: TriageItem, analyst: str, now: dt.datetime, text: str = "") -> Ticket:
    """Close the item's ticket (with an optional note), resolving the item if it is still open."""
    ticket = _ticket(session, item)
    if ticket.status == TICKET_CLOSED:
        raise QueueError(f"ticket {ticket.number} is already closed")
    ticket.status = TICKET_CLOSED
    ticket.resolved_at = ticket.resolved_at or now
    if text.strip():
        session.add(TicketMessage(ticket_id=ticket.id, direction="note", author=analyst, text=text[:4000],
                                  created_at=now))
    if item.status == TRIAGE_OPEN:
        _resolve(session, item, "closed", analyst, now, note=text)
    else:
        _audit(session, analyst, "close", item, now, note=text, ticket=ticket.number)
    return ticket
