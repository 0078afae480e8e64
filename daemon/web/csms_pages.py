"""CSMS for publishers: the notices with their counts, the composer with a live
preview of the text and HTML mail (also over a saved draft, until it is
published), scheduling in ET, the confirmation with
recipient counts, publishing with live progress, subscribers (search, CSV
import, removal) and topics.  Analysts may look; only publishers change.
Every change is a :mod:`csms` function, audited under the publisher's name."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import func, select
from sqlalchemy.orm import Session
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from csms import audience, guards, service, subscribers
from csms.commands import match_topics
from csms.render import ET, NoticeView, render_for, to_et
from daemon.web.app import web_of
from daemon.web.auth import audit, require
from models.analysts import PUBLISHER
from models.base import utcnow
from models.csms import DRAFT, SCHEDULED, Delivery, Notice, Subscriber

log = logging.getLogger("acedesk.csms")

TYPES = ("INFORMATION", "REMINDER", "ACTION REQUIRED", "UPDATE", "DEADLINE", "OUTAGE")
TAGS = ("Deadline", "High Urgency", "Action Required", "Training", "Outage")
PAGE = 50


class FormError(Exception):
    pass


def _back(url: str, msg: str) -> Response:
    return RedirectResponse(f"{url}?{urlencode({'msg': msg})}", 303)


def parse_et(value: str) -> dt.datetime | None:
    """A ``datetime-local`` value meant in Eastern time, as UTC; None when empty."""
    value = value.strip()
    if not value:
        return None
    try:
        return dt.datetime.fromisoformat(value).replace(tzinfo=ET).astimezone(dt.timezone.utc)
    except ValueError:
        raise FormError(f"not a date and time: {value!r} (expected 2026-12-03T09:00, Eastern time)") from None


def _fields(form: Any, known_topics: list[str]) -> dict[str, Any]:
    topics = [t for t in (str(x) for x in form.getlist("topic")) if t in known_topics]
    language = str(form.get("language", "en"))
    return {"title": str(form.get("title", "")).strip()[:500], "type": str(form.get("type", "INFORMATION"))[:64],
            "body": str(form.get("body", ""))[:100_000], "topics": topics,
            "tags": [t for t in (str(x) for x in form.getlist("tag")) if t in TAGS],
            "language": language if language in ("en", "es") else "en"}


def preview_of(fields: dict[str, Any], number: int | None = None) -> dict[str, str]:
    view = NoticeView(number=number, title=fields["title"] or "(title)", type=fields["type"] or "INFORMATION",
                      body=fields["body"], topics=fields["topics"] or ["(no topic yet)"], tags=fields["tags"],
                      language=fields["language"])
    rendered = render_for(view, "subscriber@example.com", ", ".join(view.topics), "#unsubscribe", "#preferences")
    return {"subject": rendered.subject, "text": rendered.text, "html": rendered.html}


def _counts(session: Session, ids: list[int]) -> dict[int, dict[str, int]]:
    out: dict[int, dict[str, int]] = {i: {"sent": 0, "failed": 0, "pending": 0} for i in ids}
    if ids:
        for nid, status, n in session.execute(select(Delivery.notice_id, Delivery.status, func.count())
                                              .where(Delivery.notice_id.in_(ids))
                                              .group_by(Delivery.notice_id, Delivery.status)):
            out[nid][status] = int(n)
    return out


async def notices(request: Request) -> Response:
    await require(request)
    web = web_of(request)

    def load(session: Session) -> tuple[list[Notice], dict[int, dict[str, int]]]:
        rows = list(session.scalars(select(Notice).order_by(Notice.id.desc()).limit(200)))
        return rows, _counts(session, [n.id for n in rows])

    rows, counts = await web.read(load)
    return web.page(request, "csms_list.html", notices=rows, counts=counts, et=to_et)


async def compose(request: Request) -> Response:
    who = await require(request, PUBLISHER)
    web = web_of(request)
    topics = await web.read(service.topic_names)
    types = await web.read(lambda s: audience.known_types(s, TYPES))
    fields = {"title": "", "type": "INFORMATION", "body": "", "topics": [], "tags": [], "language": "en"}
    error = ""
    if request.method == "POST":
        form = await request.form()
        fields = _fields(form, topics)
        try:
            at = parse_et(str(form.get("at", "")))
            if at is not None:
                # The guard rail the CLI has too: a mistyped year must not send a notice within seconds.
                guards.check_schedule_time(at, utcnow(), late_ok=form.get("late_ok") == "1")

            def create(session: Session) -> int:
                notice = service.create_notice(session, title=fields["title"], type=fields["type"],
                                               body=fields["body"], topics=fields["topics"], tags=fields["tags"],
                                               language=fields["language"], author=who.name, scheduled_at=at)
                audit(session, who, "csms.create", "notice", notice.id, {"title": notice.title,
                                                                          "scheduled_at": at.isoformat() if at else None})
                return notice.id

            notice_id = await web.write(create)
            return _back(f"/csms/{notice_id}", "Scheduled." if at else "Draft saved.")
        except (FormError, service.CsmsError) as exc:
            error = str(exc)
    return web.page(request, "csms_compose.html", status=400 if error else 200, fields=fields, topics=topics,
                    types=types, tags=TAGS, error=error, preview=preview_of(fields), editing=None)


async def edit(request: Request) -> Response:
    """The composer over a saved draft (or scheduled notice): change it, with the live preview,
    and save it again.  A notice publishing or published is no longer editable: said plainly."""
    who = await require(request, PUBLISHER)
    web = web_of(request)
    notice_id = request.path_params["notice_id"]
    topics = await web.read(service.topic_names)
    types = await web.read(lambda s: audience.known_types(s, TYPES))

    def saved(session: Session) -> tuple[dict[str, Any], str]:
        notice = session.get(Notice, notice_id)
        if notice is None:
            raise HTTPException(404, f"no notice {notice_id}")
        return ({"title": notice.title, "type": notice.type, "body": notice.body, "topics": list(notice.topics),
                 "tags": list(notice.tags), "language": notice.language}, service.editable_refusal(notice))

    fields, refusal = await web.read(saved)
    if refusal:
        return _back(f"/csms/{notice_id}", f"Not editable: {refusal}.")
    error = ""
    if request.method == "POST":
        fields = _fields(await request.form(), topics)

        def change(session: Session) -> list[str]:
            notice = session.get(Notice, notice_id)
            if notice is None:
                raise HTTPException(404, f"no notice {notice_id}")
            changed = service.update_draft(session, notice, **fields)
            if changed:
                audit(session, who, "csms.edit", "notice", notice.id, {"fields": changed})
            return changed

        try:
            changed = await web.write(change)
            return _back(f"/csms/{notice_id}", "Draft saved." if changed else "Nothing changed.")
        except service.CsmsError as exc:
            error = str(exc)
    return web.page(request, "csms_compose.html", status=400 if error else 200, fields=fields, topics=topics,
                    types=types, tags=TAGS, error=error, preview=preview_of(fields), editing=notice_id)


async def preview(request: Request) -> Response:
    await require(request, PUBLISHER)
    web = web_of(request)
    topics = await web.read(service.topic_names)
    return JSONResponse(preview_of(_fields(await request.form(), topics)))


def _notice_view(session: Session, notice_id: int, number_start: int) -> dict[str, Any]:
    notice = session.get(Notice, notice_id)
    if notice is None:
        raise HTTPException(404, f"no notice {notice_id}")
    view = service.view(session, notice)
    rendered = render_for(view, "subscriber@example.com", ", ".join(view.topics), "#unsubscribe", "#preferences")
    plan, refusal = [], ""
    if notice.status in (DRAFT, SCHEDULED):
        # The shared guard rails: the number it will take, recipients per language; or why not.
        try:
            plan = guards.describe_plan(guards.plan(session, notice, number_start=number_start))
        except service.CsmsError as exc:
            refusal = str(exc)
    return {"notice": notice, "rendered": rendered, "audience": audience.audience(session, notice),
            "counts": service.counts(session, notice.id), "plan": plan, "refusal": refusal}


async def notice_page(request: Request) -> Response:
    await require(request)
    web = web_of(request)
    view = await web.read(lambda s: _notice_view(s, request.path_params["notice_id"], web.config.csms.number_start))
    return web.page(request, "csms_notice.html", et=to_et, editable=view["notice"].status in (DRAFT, SCHEDULED),
                    **view)


async def confirm_publish(request: Request) -> Response:
    await require(request, PUBLISHER)
    web = web_of(request)
    view = await web.read(lambda s: _notice_view(s, request.path_params["notice_id"], web.config.csms.number_start))
    return web.page(request, "csms_confirm.html", et=to_et, **view)


async def publish(request: Request) -> Response:
    who = await require(request, PUBLISHER)
    web = web_of(request)
    notice_id = request.path_params["notice_id"]
    cfg = web.config.csms

    def start(session: Session) -> tuple[int | None, int]:
        notice = session.get(Notice, notice_id)
        if notice is None:
            raise HTTPException(404, f"no notice {notice_id}")
        total = service.start_publish(session, notice, utcnow(), number_start=cfg.number_start,
                                      late_after=cfg.late_after)
        audit(session, who, "csms.publish", "notice", notice.id, {"number": notice.number, "total": total})
        return notice.number, total

    try:
        number, total = await web.write(start)
    except service.CsmsError as exc:
        return _back(f"/csms/{notice_id}", f"Not published: {exc}")
    web.ctx.wake("csms")
    log.info("console: %s published CSMS #%s to %d subscribers", who.name, number, total)
    return _back(f"/csms/{notice_id}", f"CSMS #{number} is going out to {total} subscriber(s).")


async def progress(request: Request) -> Response:
    await require(request)
    web = web_of(request)
    notice_id = request.path_params["notice_id"]

    def load(session: Session) -> dict[str, Any]:
        notice = session.get(Notice, notice_id)
        if notice is None:
            raise HTTPException(404, f"no notice {notice_id}")
        return {**service.counts(session, notice_id), "total": notice.total, "status": notice.status,
                "number": notice.number}

    return JSONResponse(await web.read(load))


async def schedule_or_cancel(request: Request) -> Response:
    who = await require(request, PUBLISHER)
    web = web_of(request)
    notice_id = request.path_params["notice_id"]
    action = request.path_params["action"]
    if action not in ("schedule", "cancel"):
        raise HTTPException(404, f"no action {action}")
    form = await request.form()
    try:
        at = parse_et(str(form.get("at", ""))) if action == "schedule" else None
        if action == "schedule" and at is None:
            raise FormError("give a date and time (Eastern) to schedule it")
        if at is not None:
            guards.check_schedule_time(at, utcnow(), late_ok=form.get("late_ok") == "1")

        def change(session: Session) -> str:
            notice = session.get(Notice, notice_id)
            if notice is None:
                raise HTTPException(404, f"no notice {notice_id}")
            if action == "schedule":
                assert at is not None
                service.schedule(session, notice, at)
                audit(session, who, "csms.schedule", "notice", notice.id, {"at": at.isoformat()})
                return f"Scheduled for {to_et(at):%Y-%m-%d %H:%M} ET."
            service.cancel(session, notice)
            audit(session, who, "csms.cancel", "notice", notice.id)
            return "Cancelled."

        message = await web.write(change)
    except (FormError, service.CsmsError) as exc:
        message = f"Not done: {exc}"
    web.ctx.wake("csms")
    return _back(f"/csms/{notice_id}", message)


async def subscribers_page(request: Request) -> Response:
    await require(request)
    web = web_of(request)
    q = request.query_params.get("q", "")
    try:
        page = max(0, int(request.query_params.get("page", "0")))
    except ValueError:
        page = 0
    rows = await web.read(lambda s: audience.find_subscribers(s, q, PAGE + 1, page * PAGE))
    return web.page(request, "csms_subscribers.html", rows=rows[:PAGE], more=len(rows) > PAGE, page=page, q=q)


async def import_subscribers(request: Request) -> Response:
    who = await require(request, PUBLISHER)
    web = web_of(request)
    form = await request.form()
    upload = form.get("file")
    if upload is None or isinstance(upload, str):
        return _back("/csms/subscribers", "Choose a CSV file (email,topics,language).")
    try:
        text = (await upload.read()).decode("utf-8-sig")
    except UnicodeDecodeError:
        return _back("/csms/subscribers", "The file is not UTF-8 text; nothing was imported.")
    rows, problems = subscribers.parse_subscribers_csv(text)

    def load(session: Session) -> subscribers.ImportStats:
        known = service.topic_names(session)
        resolved = []
        for _line, address, topics, language in rows:
            matched, unknown = match_topics(topics, known)
            resolved.append((address, matched + unknown, language))
            known += [u for u in unknown if u not in known]
        stats = subscribers.ImportStats()
        subscribers.import_subscribers(session, resolved, stats)
        audit(session, who, "csms.subscribers_import", "subscribers", len(rows),
              {"created": stats.created, "updated": stats.updated, "bad_rows": len(problems)})
        return stats

    stats = await web.write(load)
    bad = "; ".join(f"line {p.line}: {p.message}" for p in problems[:5])
    return _back("/csms/subscribers", f"Imported: {stats.created} created, {stats.updated} updated, "
                                      f"{stats.unchanged} unchanged, {len(problems)} bad row(s) skipped"
                                      + (f" ({bad})" if bad else "") + ".")


async def remove_subscriber(request: Request) -> Response:
    who = await require(request, PUBLISHER)
    web = web_of(request)
    sid = request.path_params["subscriber_id"]

    def remove(session: Session) -> str:
        subscriber = session.get(Subscriber, sid)
        if subscriber is None:
            raise HTTPException(404, f"no subscriber {sid}")
        subscribers.unsubscribe(session, subscriber)
        audit(session, who, "csms.subscriber_removed", "subscriber", sid, {"email": subscriber.email})
        return subscriber.email

    address = await web.write(remove)
    return _back("/csms/subscribers", f"{address} will receive no more notices.")


async def topics_page(request: Request) -> Response:
    await require(request)
    web = web_of(request)
    rows = await web.read(service.topic_counts)
    return web.page(request, "csms_topics.html", rows=rows)


def routes() -> list[Route]:
    return [
        Route("/csms", notices),
        Route("/csms/new", compose, methods=["GET", "POST"]),
        Route("/csms/preview", preview, methods=["POST"]),
        Route("/csms/subscribers", subscribers_page),
        Route("/csms/subscribers/import", import_subscribers, methods=["POST"]),
        Route("/csms/subscribers/{subscriber_id:int}/remove", remove_subscriber, methods=["POST"]),
        Route("/csms/topics", topics_page),
        Route("/csms/{notice_id:int}", notice_page),
        Route("/csms/{notice_id:int}/edit", edit, methods=["GET", "POST"]),
        Route("/csms/{notice_id:int}/publish", confirm_publish, methods=["GET"]),
        Route("/csms/{notice_id:int}/publish", publish, methods=["POST"]),
        Route("/csms/{notice_id:int}/progress.json", progress),
        Route("/csms/{notice_id:int}/{action:str}", schedule_or_cancel, methods=["POST"]),
    ]
