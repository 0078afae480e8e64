"""The desk's numbers: the dashboard page (figures of :mod:`responders.report`,
charts drawn as SVG on the server)."""

from __future__ import annotations

import datetime as dt

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from daemon.web import charts
from daemon.web.app import web_of
from daemon.web.auth import require
from models.base import utcnow
from responders import report


def _window(request: Request) -> tuple[dt.datetime, dt.datetime, int]:
    try:
        days = min(max(int(request.query_params.get("days", "28")), 1), 366)
    except ValueError:
        days = 28
    until = utcnow()
    start = (until - dt.timedelta(days=days - 1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return start, until, days


async def dashboard(request: Request) -> Response:
    await require(request)
    web = web_of(request)
    since, until, days = _window(request)
    target = web.config.responders.target_hours
    # A pass over every ticket and message of the window: kept a minute.
    figures, at = await web.figures.get(days, lambda: web.read(lambda s: report.sla(s, since, until, target)))
    if request.query_params.get("format") == "json":
        return JSONResponse(figures.to_dict())
    return web.page(request, "dashboard.html", f=figures, days=days, goal=report.GOAL,
                    computed_at=dt.datetime.fromtimestamp(at, dt.timezone.utc),
                    per_day=charts.stacked_days(figures.per_day, [
                        (since + dt.timedelta(days=i)).strftime("%Y-%m-%d") for i in range(days)]),
                    by_label=charts.shares([(r.key, r.share_within_target) for r in figures.by_label], report.GOAL),
                    by_week=charts.shares([(r.key, r.share_within_target) for r in figures.by_week], report.GOAL))


def routes() -> list[Route]:
    return [Route("/dashboard", dashboard)]
