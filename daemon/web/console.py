"""The console's queue, message and ticket pages, and the actions on an item.
Every action calls :mod:`responders.queue`; this module only reads forms,
checks who may, and shows the result."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import logging
from typing import Any
from urllib.parse import urlencode

import nh3
from sqlalchemy import select
from sqlalchemy.orm import Session, undefer
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from classifiers.labels import LABELS
from daemon.web.app import web_of
from daemon.web.auth import require
from models.base import utcnow
from models.core import InboundMessage
from models.responders import Ticket
from responders import queue, threads
from responders.queue import Filters, QueueError

log = logging.getLogger("acedesk.web")

#: The HTML of a message, shown only in a sandboxed frame: no scripts, no remote anything.
MESSAGE_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; sandbox"
FILTER_KEYS = ("label", "language", "verification", "security", "priority", "older_than_hours", "assigned_to")


def filters_of(request: Request) -> Filters:
    q = request.query_params
    try:
        age = float(q.get("older_than_hours", "") or 0)
    except ValueError:
        age = 0.0
    status = q.get("status", "open")
    return Filters(status=status if status in ("open", "done", "") else "open", label=q.get("label", ""),
                   language=q.get("language", ""), verification=q.get("verification", ""),
                   security=q.get("security", "") if q.get("security") in ("yes", "no") else "",
                   priority=q.get("priority", ""), older_than_hours=max(0.0, age), assigned_to=q.get("assigned_to", ""))


def _after(request: Request) -> tuple[dt.datetime, int] | None:
    raw = request.query_params.get("after", "")
    due, _, ident = raw.rpartition("_")
    try:
        return dt.datetime.fromisoformat(due), int(ident)
    except ValueError:
        return None


async def home(request: Request) -> Response:
    await require(request)
    return RedirectResponse("/queue", 303)


async def queue_page(request: Request) -> Response:
    await require(request)
    web = web_of(request)
    f = filters_of(request)
    size = web.config.web.page_size
    after = _after(request)
    now = utcnow()

    rows = await web.read(lambda s: queue.list_items(s, f, after=after, limit=size + 1, now=now))
    # Counts per filter value take a pass over every open item: kept a few seconds.
    counts, counted_at = await web.counts.get(f, lambda: web.read(lambda s: queue.counts(s, f)))
    # Each dimension is counted under all the other filters: the security one gives the total.
    total = counts["security"].get(f.security, 0) if f.security else sum(counts["security"].values())
    more = len(rows) > size
    rows = rows[:size]
    current = {k: getattr(f, k) for k in FILTER_KEYS if getattr(f, k)}
    if f.status != "open":
        current["status"] = f.status
    next_url = ""
    if more and rows and rows[-1].due_at is not None:
        next_url = "/queue?" + urlencode({**current, "after": f"{rows[-1].due_at.isoformat()}_{rows[-1].id}"})
    target = web.config.responders.target_hours
    return web.page(request, "queue.html", rows=rows, counts=counts, total=total, f=f, current=current,
                    next_url=next_url, first_page=after is None, now=now,
                    counted_at=dt.datetime.fromtimestamp(counted_at, dt.timezone.utc), target=target, labels=LABELS,
                    link=lambda **kw: "/queue?" + urlencode({k: v for k, v in {**current, **kw}.items() if v}))


def _item_view(session: Session, item_id: int, responder: Any) -> dict[str, Any]:
    it = queue.item(session, item_id)
    ticket = session.get(Ticket, it.ticket_id)
    assert ticket is not None
    approval, approval_error = None, ""
    if it.status == "open":
        try:
            approval = queue.preview_approval(session, responder, it.id)
        except QueueError as exc:
            approval_error = str(exc)
    return {"item": it, "ticket": ticket, "entries": threads.thread(session, ticket), "approval": approval,
            "approval_error": approval_error, "items": threads.ticket_items(session, ticket.id),
            "top": queue.recorded_top_labels(session, it.inbound_message_id)}


async def item_page(request: Request) -> Response:
    await require(request)
    web = web_of(request)
    item_id = request.path_params["item_id"]
    responder = web.responder()
    try:
        view = await web.read(lambda s: _item_view(s, item_id, responder))
    except QueueError as exc:
        raise HTTPException(404, str(exc)) from None
    templates = [t for t in LABELS if responder.renderer.has(t, view["ticket"].language)]
    return web.page(request, "item.html", labels=LABELS, templates=templates, now=utcnow(),
                    target=web.config.responders.target_hours, **view)


async def item_action(request: Request) -> Response:
    who = await require(request)
    web = web_of(request)
    item_id = request.path_params["item_id"]
    action = request.path_params["action"]
    form = await request.form()
    responder = web.responder()

    def act(session: Session) -> str:
        if action == "approve":
            reply = queue.approve(session, responder, item_id, who.name)
            return f"Approved: the {reply.template} answer is on its way to {reply.to}."
        if action == "relabel":
            label = str(form.get("label", ""))
            previous = queue.relabel(session, item_id, label, who.name)
            return f"Label corrected from {previous or '-'} to {label} (kept for training)."
        if action == "reply":
            reply = queue.reply(session, responder, item_id, who.name, template=str(form.get("template", "")),
                                text=str(form.get("text", "")))
            return f"Reply queued to {reply.to}."
        if action == "assign":
            queue.claim(session, item_id, who.name)
            return f"Assigned to {who.name}."
        if action == "note":
            queue.note(session, item_id, str(form.get("text", "")), who.name)
            return "Note added."
        if action == "close":
            queue.close(session, item_id, who.name, str(form.get("note", "")))
            return "Closed."
        if action == "reopen":
            queue.reopen(session, item_id, who.name)
            return "Reopened."
        raise HTTPException(404, f"no action {action}")

    try:
        message = await web.write(act)
    except QueueError as exc:
        return RedirectResponse(f"/items/{item_id}?" + urlencode({"msg": f"Not done: {exc}"}), 303)
    if action in ("approve", "reply"):
        web.ctx.wake("outbox")
    log.info("console: %s %s item %s", who.name, action, item_id)
    return RedirectResponse(f"/items/{item_id}?" + urlencode({"msg": message}), 303)


def _raw(session: Session, message_id: int) -> bytes:
    row = session.scalar(select(InboundMessage).where(InboundMessage.id == message_id)
                         .options(undefer(InboundMessage.raw)))
    if row is None:
        raise HTTPException(404, f"no message {message_id}")
    return row.raw


def _parts(raw: bytes) -> list[Any]:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    return list(msg.walk())


async def attachment(request: Request) -> Response:
    """An attachment, only ever as a download (never rendered in the browser)."""
    await require(request)
    web = web_of(request)
    raw = await web.read(lambda s: _raw(s, request.path_params["message_id"]))
    index = request.path_params["index"]
    found = [p for p in _parts(raw) if p.get_content_disposition() == "attachment"
             or (p.get_filename() and not p.is_multipart())]
    if index >= len(found):
        raise HTTPException(404, "no such attachment")
    part = found[index]
    payload = part.get_payload(decode=True) or b""
    name = (part.get_filename() or f"attachment-{index}").replace('"', "").replace("\r", "").replace("\n", "")
    ascii_name = name.encode("ascii", "replace").decode().replace("?", "_")
    from urllib.parse import quote
    return Response(payload, media_type="application/octet-stream", headers={
        "Content-Disposition": f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name)}",
        "Content-Security-Policy": "default-src 'none'; sandbox", "X-Content-Type-Options": "nosniff"})


async def message_html(request: Request) -> Response:
    """The HTML part of a message, sanitised, for a sandboxed frame that runs and loads nothing."""
    await require(request)
    web = web_of(request)
    raw = await web.read(lambda s: _raw(s, request.path_params["message_id"]))
    html = next((p.get_content() for p in _parts(raw) if p.get_content_type() == "text/html"), None)
    if html is None:
        html = "<p>This message has no HTML part.</p>"
    # nh3 keeps markup and drops scripts, event handlers and dangerous URLs; the CSP then forbids
    # every remote load (tracking images) and the frame's sandbox any script that slipped through.
    clean = nh3.clean(html, url_schemes={"mailto"}, link_rel="noopener noreferrer nofollow")
    page = f'<!DOCTYPE html><html><head><meta charset="utf-8"></head><body>{clean}</body></html>'
    return Response(page, media_type="text/html; charset=utf-8",
                    headers={"Content-Security-Policy": MESSAGE_CSP, "X-Frame-Options": "SAMEORIGIN"})


async def tickets_page(request: Request) -> Response:
    await require(request)
    web = web_of(request)
    q = request.query_params
    try:
        page = max(0, int(q.get("page", "0")))
    except ValueError:
        page = 0
    size = web.config.web.page_size
    text, state, label = q.get("q", ""), q.get("state", ""), q.get("label", "")
    rows = await web.read(lambda s: threads.search(s, text=text, state=state, label=label, limit=size + 1,
                                                   offset=page * size))
    return web.page(request, "tickets.html", rows=rows[:size], more=len(rows) > size, page=page, q=text,
                    state=state, label=label, labels=LABELS,
                    link=lambda p: "/tickets?" + urlencode({"q": text, "state": state, "label": label, "page": p}))


async def ticket_page(request: Request) -> Response:
    await require(request)
    web = web_of(request)
    ref = request.path_params["ref"]

    def load(session: Session) -> dict[str, Any] | None:
        ticket = threads.find_ticket(session, ref)
        if ticket is None:
            return None
        return {"ticket": ticket, "entries": threads.thread(session, ticket),
                "items": threads.ticket_items(session, ticket.id)}

    view = await web.read(load)
    if view is None:
        raise HTTPException(404, f"no ticket {ref}")
    return web.page(request, "ticket.html", now=utcnow(), target=web.config.responders.target_hours, **view)


def routes() -> list[Route]:
    return [
        Route("/", home),
        Route("/queue", queue_page),
        Route("/items/{item_id:int}", item_page),
        Route("/items/{item_id:int}/{action}", item_action, methods=["POST"]),
        Route("/messages/{message_id:int}/attachments/{index:int}", attachment),
        Route("/messages/{message_id:int}/html", message_html),
        Route("/tickets", tickets_page),
        Route("/tickets/{ref}", ticket_page),
    ]
