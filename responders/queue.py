"""The analysts' triage queue as domain operations: list with filters, and
claim/approve/relabel/reply/close/reopen/assign/note one item.  The CLI and the
web console only call these; each takes the caller's session (one transaction)
and the analyst's name for the audit log, and refuses what makes no sense
with :class:`QueueError`.

The state machine: an item is ``open`` until an analyst approves, replies to
or closes it; only an open item can be claimed (unless another analyst has
it), assigned, relabelled, approved or replied to; closing closes the ticket
(also after a reply; refused once it is closed); a resolved item can be
reopened.  A person's reply is a person's: their words only (no greeting
added, no "automatic answer" footer, no ``Auto-Submitted``), threaded to the
latest message of the ticket, from the desk address, its author recorded.  An
approval sends the answer of the label as the analyst sees it; a label with
no answer of its own (``other``, whose template only promises a review)
cannot be approved: relabel it, or reply.

The queue is ordered by the time left to the ticket's first-response target
(``[responders] target_hours``, 4 hours: seed 002), oldest due first.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import func, literal, or_, select
from sqlalchemy.orm import Session

from models.base import utcnow
from models.core import AuditEntry, InboundMessage
from models.responders import (TICKET_ANSWERED, TICKET_CLOSED, TICKET_OPEN, TRIAGE_DONE, TRIAGE_OPEN, Ticket,
                               TicketMessage, TriageItem, User)
from responders.render import RenderError, Reply, build_reply
from responders.accounts import held_status, load_held
from responders.articles import load_library
from responders.service import Responder, duty_context, enqueue
from responders.settings import ACCOUNT_LABELS
from responders.tickets import reply_subject

VERIFIED = "verified"
#: Labels whose template promises a review rather than answering: nothing to approve.
NO_ANSWER = frozenset({"other"})


class QueueError(Exception):
    """An action that makes no sense for this item, in words for the analyst."""


@dataclass(frozen=True)
class Filters:
    status: str = TRIAGE_OPEN
    label: str = ""
    language: str = ""
    verification: str = ""
    #: "yes", "no" or "" (either).
    security: str = ""
    priority: str = ""
    #: Only items older than this many hours (0: any age).
    older_than_hours: float = 0.0
    assigned_to: str = ""


@dataclass(frozen=True)
class QueueRow:
    id: int
    ticket: str
    reason: str
    label: str | None
    confidence: float | None
    language: str
    verification: str | None
    security: bool
    priority: str
    requester: str
    subject: str
    created_at: dt.datetime
    due_at: dt.datetime | None
    assigned_to: str | None
    status: str


#: The dimensions the queue counts per value (what a filter would leave).
DIMENSIONS = ("label", "language", "verification", "security", "priority")


def _where(query: Any, f: Filters, now: dt.datetime, skip: str = "") -> Any:
    if f.status:
        query = query.where(TriageItem.status == f.status)
    if f.label and skip != "label":
        query = query.where(TriageItem.label == f.label)
    if f.language and skip != "language":
        query = query.where(Ticket.language == f.language)
    if f.verification and skip != "verification":
        query = query.where(Ticket.verification == f.verification)
    if f.security and skip != "security":
        query = query.where(TriageItem.security.is_(f.security == "yes"))
    if f.priority and skip != "priority":
        query = query.where(Ticket.priority == f.priority)
    if f.older_than_hours:
        query = query.where(TriageItem.created_at <= now - dt.timedelta(hours=f.older_than_hours))
    if f.assigned_to:
        query = query.where(TriageItem.assigned_to == f.assigned_to)
    return query


def list_items(session: Session, f: Filters, *, after: tuple[dt.datetime, int] | None = None,
               limit: int = 50, now: dt.datetime | None = None) -> list[QueueRow]:
    """One page of the queue, due soonest first; ``after`` is the last row's ``(due_at, id)``
    (keyset paging: as fast on page 2,000 as on page 1)."""
    now = now or utcnow()
    status = f.status
    if status and session.get_bind().dialect.name == "sqlite" and _walk_by_due(session, status):
        # Hide the status index from SQLite's planner (``|| ''``): it then walks tickets in due
        # order and stops after ``limit`` rows, instead of sorting every open item.  (PostgreSQL's
        # planner weighs both plans itself.)
        f = replace(f, status="")
    query = (select(TriageItem.id, Ticket.number, TriageItem.reason, TriageItem.label, TriageItem.confidence,
                    Ticket.language, Ticket.verification, TriageItem.security, Ticket.priority, Ticket.requester,
                    Ticket.subject, TriageItem.created_at, Ticket.due_at, TriageItem.assigned_to, TriageItem.status)
             .join(Ticket, Ticket.id == TriageItem.ticket_id))
    query = _where(query, f, now)
    if status and not f.status:
        query = query.where((TriageItem.status + literal("")) == status)
    if after is not None:
        # Spelled out rather than a row-value comparison, so the planner walks the due_at index.
        query = query.where(Ticket.due_at >= after[0],
                            or_(Ticket.due_at > after[0], TriageItem.id > after[1]))
    query = query.order_by(Ticket.due_at, TriageItem.id).limit(limit)
    return [QueueRow(*row) for row in session.execute(query).all()]


def _walk_by_due(session: Session, status: str) -> bool:
    """Whether items in ``status`` are so many among all tickets that walking tickets in due
    order finds a page sooner than sorting those items (the planner cannot know)."""
    items = session.scalar(select(func.count()).select_from(TriageItem).where(TriageItem.status == status)) or 0
    tickets = session.scalar(select(func.max(Ticket.id))) or 0
    return items > 2000 and items * 4 > tickets


def counts(session: Session, f: Filters, now: dt.datetime | None = None) -> dict[str, dict[str, int]]:
    """For each dimension, how many items each value has under the other filters."""
    now = now or utcnow()
    columns = {"label": TriageItem.label, "language": Ticket.language, "verification": Ticket.verification,
               "security": TriageItem.security, "priority": Ticket.priority}
    result: dict[str, dict[str, int]] = {}
    for name, column in columns.items():
        query = select(column, func.count()).select_from(TriageItem).join(Ticket, Ticket.id == TriageItem.ticket_id)
        query = _where(query, f, now, skip=name).group_by(column)
        values: dict[str, int] = {}
        for value, n in session.execute(query).all():
            key = ("yes" if value else "no") if name == "security" else (value or "")
            values[key] = values.get(key, 0) + int(n)
        result[name] = dict(sorted(values.items(), key=lambda kv: (-kv[1], kv[0])))
    return result


def total(session: Session, f: Filters, now: dt.datetime | None = None) -> int:
    query = select(func.count()).select_from(TriageItem).join(Ticket, Ticket.id == TriageItem.ticket_id)
    return session.scalar(_where(query, f, now or utcnow())) or 0


# --- one item --------------------------------------------------------------------------


def item(session: Session, ref: int | str, *, lock: bool = False) -> TriageItem:
    """The item with this id, or for a ticket number that ticket's open item (else its newest)."""
    text = str(ref).strip()
    found = None
    if text.isdigit():
        found = session.get(TriageItem, int(text), with_for_update=lock or None)
    else:
        if session.scalar(select(Ticket.id).where(Ticket.number == text.upper())) is None:
            raise QueueError(f"no ticket {text!r} (ticket numbers look like ACE-2026-000123)")
        found = session.scalar(select(TriageItem).join(Ticket, Ticket.id == TriageItem.ticket_id)
                               .where(Ticket.number == text.upper())
                               .order_by((TriageItem.status == TRIAGE_OPEN).desc(), TriageItem.id.desc()).limit(1))
    if found is None:
        raise QueueError(f"no triage item {ref}")
    return found


def recorded_top_labels(session: Session, inbound_id: int | None) -> list[tuple[str, float]]:
    """The classifier's three likeliest labels for a message, as recorded when it was classified
    (empty for a message classified before they were recorded, or none at all)."""
    if inbound_id is None:
        return []
    stored = session.scalar(select(InboundMessage.top_labels).where(InboundMessage.id == inbound_id))
    return [(str(label), float(p)) for label, p in stored or []]


def _audit(session: Session, by: str, action: str, it: TriageItem, detail: dict[str, Any]) -> None:
    session.add(AuditEntry(at=utcnow(), actor=by, action=f"queue.{action}", subject_type="triage_item",
                           subject_id=str(it.id), detail=detail))


def _resolve(session: Session, it: TriageItem, resolution: str, by: str, detail: dict[str, Any]) -> None:
    it.status = TRIAGE_DONE
    it.resolved_at = utcnow()
    it.resolved_by = by
    it.resolution = resolution
    _audit(session, by, resolution, it, detail)


def _open(it: TriageItem) -> None:
    if it.status != TRIAGE_OPEN:
        raise QueueError(f"triage item {it.id} is already {it.resolution or it.status}; reopen it first")


def _latest_message_id(session: Session, ticket: Ticket) -> tuple[str | None, list[str]]:
    ids = [m for m in session.scalars(select(TicketMessage.message_id).where(
        TicketMessage.ticket_id == ticket.id, TicketMessage.message_id.is_not(None)).order_by(TicketMessage.id)) if m]
    return (ids[-1] if ids else None), ids[-10:]


def _render(session: Session, responder: Responder, ticket: Ticket, template: str, to: str,
            context: dict[str, Any], human: bool, articles: Sequence[str] = ()) -> Reply:
    parent, refs = _latest_message_id(session, ticket)
    library = load_library(session)
    unknown = [k for k in articles if library.get(k, ticket.language) is None]
    if unknown:
        raise QueueError(f"no article {', '.join(unknown)} in force (see 'acedesk articles list')")
    # The articles of the ticket's label, the analyst's own picks, and the desk's hours.
    context = {**duty_context(responder, library, template, ticket.label or "other", ticket.language, utcnow(),
                              articles), **context}
    try:
        return build_reply(
            responder.renderer, template=template, language=ticket.language, to=to,
            from_address=responder.desk.reply_from, from_name=responder.cfg.from_name,
            subject=reply_subject(ticket.subject, ticket.number or "", responder.cfg.ticket_prefix, ticket.language),
            ticket=ticket.number or "", secret=responder.secret, in_reply_to=parent, references=refs,
            context={"name": "", "subject": ticket.subject[:200], "csms_address": responder.desk.csms_address,
                     "target_hours": f"{responder.cfg.target_hours:g}", **context}, auto=not human)
    except RenderError as exc:
        raise QueueError(str(exc)) from None


def approval_recipient(session: Session, it: TriageItem, ticket: Ticket) -> tuple[str, str]:
    """``(template, to)`` that approving would send; refuses account answers to the unverified."""
    label = it.label or "other"
    if label in NO_ANSWER:
        raise QueueError(f"label {label!r} has no answer to send: relabel item {it.id} "
                         f"('queue relabel {it.id} LABEL') or reply in your own words ('queue reply')")
    if label in ACCOUNT_LABELS:
        if ticket.verification != VERIFIED:
            raise QueueError(f"{label} answers go only to verified users at the address on file; ticket "
                             f"{ticket.number} is {ticket.verification}: reply in your own words, or close it")
        user = session.scalar(select(User).where(User.user_id == ticket.user_id))
        if user is None:
            raise QueueError(f"user {ticket.user_id} is no longer on file")
        if user.status != "active":
            raise QueueError(f"user {user.user_id} is {user.status}: no account help until "
                             f"'acedesk users restore {user.user_id} --reason ...'")
        return label, user.email
    return label, ticket.requester


def preview_approval(session: Session, responder: Responder, ref: int | str) -> Reply:
    """The reply approving would send, rendered (nothing stored)."""
    it = item(session, ref)
    ticket = session.get(Ticket, it.ticket_id)
    assert ticket is not None
    template, to = approval_recipient(session, it, ticket)
    return _render(session, responder, ticket, template, to, {}, human=False)


def approve(session: Session, responder: Responder, ref: int | str, by: str) -> Reply:
    """Send the answer of the item's label (as the analyst saw it) and resolve the item."""
    it = item(session, ref, lock=True)
    _open(it)
    ticket = session.get(Ticket, it.ticket_id)
    assert ticket is not None
    template, to = approval_recipient(session, it, ticket)
    reply = _render(session, responder, ticket, template, to, {}, human=False)
    now = utcnow()
    out, _ = enqueue(session, reply, ticket, None, now)
    ticket.status = TICKET_ANSWERED
    ticket.first_response_at = ticket.first_response_at or now
    _resolve(session, it, "approved", by, {"template": template, "to": to, "outbox": out.id})
    return reply


def relabel(session: Session, ref: int | str, label: str, by: str) -> str | None:
    """Correct the label (kept for training); return the previous one."""
    from classifiers.labels import LABELS
    if label not in LABELS:
        raise QueueError(f"unknown label {label!r}")
    it = item(session, ref, lock=True)
    _open(it)
    previous = it.label
    if it.inbound_message_id is not None:
        from models.classification import record_correction
        try:
            record_correction(session, it.inbound_message_id, label, by)
        except ValueError as exc:
            raise QueueError(str(exc)) from None
    it.label = label
    it.confidence = 1.0
    ticket = session.get(Ticket, it.ticket_id)
    if ticket is not None:
        ticket.label = label
    _audit(session, by, "relabel", it, {"from": previous, "to": label, "message": it.inbound_message_id})
    return previous


def reply(session: Session, responder: Responder, ref: int | str, by: str, *, template: str = "",
          text: str = "", articles: Sequence[str] = ()) -> Reply:
    """A person's reply through the outbox: a template, or their own words; resolves the item."""
    it = item(session, ref, lock=True)
    _open(it)
    ticket = session.get(Ticket, it.ticket_id)
    assert ticket is not None
    if template:
        if template in ACCOUNT_LABELS and ticket.verification != VERIFIED:
            raise QueueError(f"the {template} answer goes only to verified users; ticket {ticket.number} is "
                             f"{ticket.verification}")
        if template in ACCOUNT_LABELS:
            held = held_status(load_held(session, [ticket.requester], [ticket.user_id or ""]),
                               ticket.requester, ticket.user_id)
            if held:
                raise QueueError(f"the account of ticket {ticket.number} is {held}: no account help "
                                 "until it is restored (acedesk users restore)")
        if not responder.renderer.has(template, ticket.language):
            raise QueueError(f"no reply template {template!r}")
        out_reply = _render(session, responder, ticket, template, ticket.requester, {}, human=True,
                            articles=articles)
    else:
        if not text.strip():
            raise QueueError("write a reply, or choose a template")
        out_reply = _render(session, responder, ticket, "analyst_reply", ticket.requester, {"text": text},
                            human=True, articles=articles)
    now = utcnow()
    out, history = enqueue(session, out_reply, ticket, None, now)
    history.author = by
    ticket.status = TICKET_ANSWERED
    ticket.first_response_at = ticket.first_response_at or now
    _resolve(session, it, "replied", by, {"template": template or None, "outbox": out.id})
    return out_reply


def close(session: Session, ref: int | str, by: str, note_text: str = "") -> None:
    """Close the item's ticket (also after a reply), resolving the item if it is still open."""
    it = item(session, ref, lock=True)
    ticket = session.get(Ticket, it.ticket_id)
    assert ticket is not None
    if ticket.status == TICKET_CLOSED:
        raise QueueError(f"ticket {ticket.number} is already closed; reopen it first")
    now = utcnow()
    ticket.status = TICKET_CLOSED
    ticket.resolved_at = ticket.resolved_at or now
    if note_text.strip():
        session.add(TicketMessage(ticket_id=ticket.id, direction="note", author=by, text=note_text[:4000],
                                  created_at=now))
    if it.status == TRIAGE_OPEN:
        _resolve(session, it, "closed", by, {"note": note_text[:200]})
    else:
        _audit(session, by, "close", it, {"note": note_text[:200], "ticket": ticket.number})


def reopen(session: Session, ref: int | str, by: str) -> None:
    """Put a resolved item back in the queue and reopen its ticket."""
    it = item(session, ref, lock=True)
    if it.status == TRIAGE_OPEN:
        raise QueueError(f"triage item {it.id} is open already")
    it.status = TRIAGE_OPEN
    it.resolved_at = None
    it.resolution = None
    it.resolved_by = None
    ticket = session.get(Ticket, it.ticket_id)
    if ticket is not None:
        ticket.status = TICKET_OPEN
        ticket.resolved_at = None
    _audit(session, by, "reopen", it, {})


def assign(session: Session, ref: int | str, to: str, by: str) -> None:
    """Assign the item to an analyst (``claim`` is assigning it to yourself)."""
    it = item(session, ref, lock=True)
    _open(it)
    previous = it.assigned_to
    it.assigned_to = to or None
    _audit(session, by, "assign", it, {"from": previous, "to": to or None})


def claim(session: Session, ref: int | str, by: str) -> None:
    """Take the item for yourself (refused while another analyst has it)."""
    it = item(session, ref, lock=True)
    if it.assigned_to and it.assigned_to != by:
        raise QueueError(f"triage item {it.id} is with {it.assigned_to}: ask them, or "
                         f"'queue assign {it.id} {by}'")
    assign(session, ref, by, by)


def note(session: Session, ref: int | str, text: str, by: str) -> None:
    """An internal note on the item's ticket (never sent)."""
    if not text.strip():
        raise QueueError("an empty note says nothing")
    it = item(session, ref)
    session.add(TicketMessage(ticket_id=it.ticket_id, direction="note", author=by, text=text[:4000],
                              created_at=utcnow()))
    _audit(session, by, "note", it, {"chars": len(text)})
