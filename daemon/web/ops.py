"""The operators' endpoints: ``/metrics`` (Prometheus text format),
``/healthz`` (the event loop answers) and ``/readyz`` (the database answers,
and the pipeline and delivery make progress with the backlog under a bound).

``/metrics`` is served without a login to the addresses in ``[web]
trusted_proxies`` (the scraper on the host); anyone else must be signed in.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import func, select, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from daemon.metrics import REGISTRY
from daemon.web.app import web_of
from models.base import utcnow
from models.core import WAITING as WAITING_STATES
from models.core import InboundMessage
from models.csms import Delivery
from models.outbox import PENDING, SENDING, OutboxMessage
from models.responders import TRIAGE_OPEN, TriageItem

WAITING = WAITING_STATES


@dataclass(frozen=True)
class Snapshot:
    """The database's view of the desk at one moment."""

    messages: dict[str, int]
    outbox: dict[str, int]
    outbox_errors: int
    deliveries: dict[str, int]
    triage_open: int
    oldest_waiting: dt.datetime | None
    oldest_outbox: dt.datetime | None
    model_version: str | None


def snapshot(session: Session) -> Snapshot:
    now = utcnow()
    messages = dict(session.execute(select(InboundMessage.state, func.count()).group_by(InboundMessage.state)).all())
    outbox = dict(session.execute(select(OutboxMessage.status, func.count()).group_by(OutboxMessage.status)).all())
    outbox_errors = session.scalar(select(func.count()).select_from(OutboxMessage).where(
        OutboxMessage.last_error.is_not(None))) or 0
    deliveries = dict(session.execute(select(Delivery.status, func.count()).group_by(Delivery.status)).all())
    triage = session.scalar(select(func.count()).select_from(TriageItem).where(TriageItem.status == TRIAGE_OPEN)) or 0
    # Work that could run now (not waiting for a retry's backoff).
    oldest_waiting = session.scalar(select(func.min(InboundMessage.received_at)).where(
        InboundMessage.state.in_(WAITING),
        (InboundMessage.next_attempt_at.is_(None)) | (InboundMessage.next_attempt_at <= now)))
    oldest_outbox = session.scalar(select(func.min(OutboxMessage.created_at)).where(
        OutboxMessage.status.in_((PENDING, SENDING)),
        (OutboxMessage.next_attempt_at.is_(None)) | (OutboxMessage.next_attempt_at <= now)))
    model = session.scalar(select(InboundMessage.model_version).where(InboundMessage.model_version.is_not(None))
                           .order_by(InboundMessage.id.desc()).limit(1))
    return Snapshot({k: int(v) for k, v in messages.items()}, {k: int(v) for k, v in outbox.items()},
                    int(outbox_errors), {k: int(v) for k, v in deliveries.items()}, int(triage),
                    oldest_waiting, oldest_outbox, model)


def _families(snap: Snapshot) -> list[Any]:
    now = utcnow()
    messages = GaugeMetricFamily("acedesk_messages", "Inbound messages by state (pipeline stage)", labels=["state"])
    for state, n in sorted(snap.messages.items()):
        messages.add_metric([state], n)
    outbox = GaugeMetricFamily("acedesk_outbox_messages", "Outgoing replies by status", labels=["status"])
    for status, n in sorted(snap.outbox.items()):
        outbox.add_metric([status], n)
    errors = GaugeMetricFamily("acedesk_outbox_smtp_errors", "Outgoing replies whose last SMTP attempt failed")
    errors.add_metric([], snap.outbox_errors)
    fanout = GaugeMetricFamily("acedesk_csms_deliveries", "CSMS notice deliveries by status", labels=["status"])
    for status, n in sorted(snap.deliveries.items()):
        fanout.add_metric([status], n)
    triage = GaugeMetricFamily("acedesk_triage_open", "Open items in the analysts' triage queue")
    triage.add_metric([], snap.triage_open)
    backlog = GaugeMetricFamily("acedesk_backlog_oldest_seconds", "Age of the oldest message waiting for the pipeline")
    backlog.add_metric([], (now - snap.oldest_waiting).total_seconds() if snap.oldest_waiting else 0.0)
    model = GaugeMetricFamily("acedesk_model_info", "The classifier model version in use", labels=["version"])
    model.add_metric([snap.model_version or "none"], 1)
    return [messages, outbox, errors, fanout, triage, backlog, model]


class _Fixed:
    def __init__(self, families: list[Any]) -> None:
        self.families = families

    def collect(self) -> list[Any]:
        return self.families


async def metrics(request: Request) -> Response:
    web = web_of(request)
    if request.client is None or request.client.host not in web.config.web.trusted_proxies:
        from daemon.web.auth import require
        await require(request)
    snap = await web.read(snapshot)
    registry = CollectorRegistry()
    registry.register(_Fixed(_families(snap)))  # type: ignore[arg-type]
    body = generate_latest(REGISTRY) + generate_latest(registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


async def healthz(request: Request) -> Response:
    return PlainTextResponse("ok\n")


def readiness(session: Session, max_backlog: int, stall_seconds: float) -> list[str]:
    """Why the desk is not ready (empty: ready)."""
    session.execute(text("SELECT 1"))
    snap = snapshot(session)
    now = utcnow()
    problems = []
    waiting = sum(snap.messages.get(s, 0) for s in WAITING)
    if waiting > max_backlog:
        problems.append(f"backlog of {waiting} messages is above {max_backlog}")
    if snap.oldest_waiting and (now - snap.oldest_waiting).total_seconds() > stall_seconds:
        problems.append(f"the pipeline has left a message waiting since {snap.oldest_waiting:%Y-%m-%d %H:%M:%S} UTC")
    if snap.oldest_outbox and (now - snap.oldest_outbox).total_seconds() > stall_seconds:
        problems.append(f"a reply has waited for delivery since {snap.oldest_outbox:%Y-%m-%d %H:%M:%S} UTC")
    return problems


async def readyz(request: Request) -> Response:
    web = web_of(request)
    cfg = web.config.web
    try:
        problems = await web.read(lambda s: readiness(s, cfg.ready_max_backlog, cfg.ready_stall_seconds))
    except SQLAlchemyError as exc:
        problems = [f"database unreachable: {str(exc).splitlines()[0][:200]}"]
    if problems:
        return JSONResponse({"ready": False, "problems": problems}, status_code=503)
    return JSONResponse({"ready": True, "problems": []})


def routes() -> list[Route]:
    return [Route("/metrics", metrics), Route("/healthz", healthz), Route("/readyz", readyz)]
