"""Outage incidents (War Room) in the console: what is open, what opened it,
how many reports are attached, the CSMS draft to review; closing one sends
one follow-up to everyone attached (or none).  Analysts may look and close;
the work is :mod:`responders.incidents`, audited under the analyst's name."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from daemon.web.app import web_of
from daemon.web.auth import audit, require
from models.duties import Incident
from responders.incidents import close_incident, report_count


def _back(msg: str) -> Response:
    return RedirectResponse(f"/incidents?{urlencode({'msg': msg})}", 303)


async def incidents_page(request: Request) -> Response:
    await require(request)
    web = web_of(request)

    def load(session: Session) -> list[dict[str, Any]]:
        rows = session.scalars(select(Incident).order_by(Incident.status.desc(), Incident.id.desc()).limit(100))
        return [{"number": i.number, "title": i.title, "status": i.status, "opened_at": i.opened_at,
                 "opened_by": i.opened_by, "trigger": i.trigger or {}, "reports": report_count(session, i.id),
                 "notice": i.csms_notice_id, "closed_at": i.closed_at, "closed_by": i.closed_by,
                 "followups": i.followups_sent} for i in rows]

    return web.page(request, "incidents.html", rows=await web.read(load))


async def close(request: Request) -> Response:
    who = await require(request)
    web = web_of(request)
    form = await request.form()
    number = request.path_params["number"]
    resolution = str(form.get("resolution", "")).strip()[:2000]
    follow_up = form.get("follow_up") == "yes"

    def change(session: Session) -> int:
        incident = session.scalars(select(Incident).where(Incident.number == number)).first()
        if incident is None:
            raise HTTPException(404, f"no incident {number}")
        try:
            sent = close_incident(session, web.responder(), incident, by=who.name, resolution=resolution,
                                  follow_up=follow_up)
        except ValueError as exc:
            raise HTTPException(409, f"{exc}. Nothing was changed.") from None
        audit(session, who, "incident.close", "incident", number, {"followups": sent})
        return sent

    sent = await web.write(change)
    if sent:
        web.ctx.waker("outbox")()
    return _back(f"{number} closed; {sent} follow-up(s) queued.")


def routes() -> list[Route]:
    return [
        Route("/incidents", incidents_page),
        Route("/incidents/{number}/close", close, methods=["POST"]),
    ]
