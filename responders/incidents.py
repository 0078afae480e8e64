"""Outage surges (the War Room): one incident instead of hundreds of tickets.

A burst of outage reports (``[incidents] label``, by default
``system_status``) above the recent baseline -- at least ``min_reports`` in
``window_minutes`` *and* ``factor`` times the usual rate over the
``baseline_hours`` before -- opens an incident.  Counting is by arrival time
(``received_at``), so a backlog processed after a restart is judged by when
the reports came, not when they were read.

Opening an incident, in the transaction of the batch that saw the burst:

* the on-call address gets one alert (``incident_alert``);
* a CSMS notice (``csms_type``, ``csms_topics``) is drafted for a publisher
  to review (``acedesk csms preview`` / ``publish``) -- never sent by itself;
* the open tickets of the window's earlier reports are attached to it.

While it is open, every later report is attached instead of becoming a
ticket and is answered with ``outage_known`` (the incident is known; the
Availability Dashboard link).  Closing it (``acedesk incidents close``) can
send one follow-up (``outage_resolved``) to each address attached, once.
Only one incident per label is open at a time (a unique key, so two workers
cannot open two).
"""

from __future__ import annotations

import bisect
import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from classifiers.labels import LABELS
from models.base import utcnow
from models.core import FAILED, QUARANTINED, InboundMessage
from models.duties import INCIDENT_CLOSED, INCIDENT_OPEN, Incident, IncidentReport
from models.outbox import PENDING, OutboxMessage
from models.responders import TICKET_CLOSED, ResponseRecord, Ticket
from responders.articles import Library, links_context, load_library
from responders.hours import DeskHours
from responders.policy import DROP_ACTION, REPLY
from responders.render import Draft, Reply, build_reply

if TYPE_CHECKING:  # service imports this module
    from responders.service import BatchStats, Plan, Responder, Writes

log = logging.getLogger("acedesk.incidents")

#: The decision record's action for a report attached to an incident (no ticket of its own).
ATTACHED = "incident"
OUTAGE_KNOWN = "outage_known"
OUTAGE_RESOLVED = "outage_resolved"
ALERT = "incident_alert"


@dataclass(frozen=True)
class IncidentConfig:
    """The ``[incidents]`` section."""

    enabled: bool = True
    #: The label whose reports make an outage.
    label: str = "system_status"
    #: A burst: at least ``min_reports`` in ``window_minutes`` ...
    window_minutes: float = 10.0
    min_reports: int = 15
    #: ... and ``factor`` times the usual rate over the ``baseline_hours`` before the window.
    baseline_hours: float = 24.0
    factor: float = 5.0
    #: Who is alerted (once per incident).
    oncall_address: str = "oncall@ace-support.example"
    #: The CSMS draft prepared for a publisher.
    csms_type: str = "INFORMATION"
    csms_topics: list[str] = field(default_factory=lambda: ["ACE"])
    #: The article the outage answer links (``acedesk articles``).
    dashboard_article: str = "availability-dashboard"
    #: Incident numbers: ``INC-2026-0001``.
    number_prefix: str = "INC"

    def __post_init__(self) -> None:
        if self.window_minutes <= 0 or self.baseline_hours <= 0:
            raise ValueError("window_minutes and baseline_hours must be positive")
        if self.min_reports < 1 or self.factor < 0:
            raise ValueError("min_reports must be at least 1 and factor not negative")
        if self.label not in LABELS:
            raise ValueError(f"label {self.label!r}: not a taxonomy label")


@dataclass(frozen=True)
class Burst:
    """Why an incident opened: the reports in the window and the usual number for such a window."""

    at: dt.datetime
    reports: int
    usual: float

    def to_dict(self) -> dict[str, Any]:
        return {"at": self.at.isoformat(), "reports": self.reports, "usual_per_window": round(self.usual, 2)}


def find_burst(times: Sequence[dt.datetime], candidates: Sequence[dt.datetime], baseline_reports: int,
               cfg: IncidentConfig) -> Burst | None:
    """Return the first of ``candidates`` at which the reports in ``times`` make a burst (pure).

    ``times`` are the sorted arrival times of reports around the candidates;
    ``baseline_reports`` is how many came in the ``baseline_hours`` before the window.
    """
    window = dt.timedelta(minutes=cfg.window_minutes)
    usual = baseline_reports * (cfg.window_minutes / 60.0) / cfg.baseline_hours
    for at in sorted(candidates):
        n = bisect.bisect_right(times, at) - bisect.bisect_right(times, at - window)
        if n >= cfg.min_reports and n >= cfg.factor * usual:
            return Burst(at, n, usual)
    return None


def wants(cfg: IncidentConfig, p: Plan, thread: object | None) -> bool:
    """Return whether a planned message is an outage report for an incident to take.

    Not screened-out mail, not a follow-up on a ticket, nothing flagged for
    security (impersonation, a held account): those take their usual path.
    """
    d = p.decision
    return cfg.enabled and p.label == cfg.label and d.kind != DROP_ACTION and thread is None and not d.security


def outage_plan(p: Plan) -> Plan:
    """Return ``p`` answering with the outage template (no answer where the plan had none)."""
    d = p.decision
    to = d.to if d.template else None
    return replace(p, decision=replace(d, kind=REPLY, template=OUTAGE_KNOWN if to else None, to=to))


def act_on_reports(session: Session, responder: Responder, reports: list[tuple[InboundMessage, Any, Plan]],
                   now: dt.datetime, writes: Writes, library: Library, stats: BatchStats,
                   drafts: dict[int, Draft] | None = None) -> list[tuple[InboundMessage, Any, Plan]]:
    """Attach outage reports to the open incident, opening one on a burst; return those left for tickets.

    Each attached report gets its decision record and, where its plan had an
    answer, the outage answer in the outbox (same transaction as the batch);
    all are rows of ``writes``, inserted with the batch's (``drafts``: the
    answers rendered before the write, by row id).
    """
    if not reports:
        return []
    cfg = responder.incidents
    incident = open_incident_for(session, cfg.label)
    if incident is None:
        burst = detect(session, cfg, [row.received_at for row, _, _ in reports])
        if burst is None:
            return reports
        incident = open_incident(session, responder, title="reports of ACE system problems", by="acedesk",
                                 now=now, burst=burst)
        log.warning("incident %s opened: %d %s reports in %g minutes (usual %.1f); on-call alerted, "
                    "CSMS draft %s", incident.number, burst.reports, cfg.label, cfg.window_minutes,
                    burst.usual, incident.csms_notice_id)
    for row, msg, p in reports:
        attach(session, responder, incident, row, msg, outage_plan(p), now, writes, library, stats,
               (drafts or {}).get(row.id))
    return []


def attach(session: Session, responder: Responder, incident: Incident, row: InboundMessage, msg: Any, p: Plan,
           now: dt.datetime, writes: Writes, library: Library, stats: BatchStats,
           draft: Draft | None = None) -> None:
    """Attach one report to ``incident``: its record, its report row, and the outage answer if any
    (``draft`` completed with the incident's number when it was rendered for it, else built here)."""
    from responders.render import RenderError
    from responders.service import completed, duty_context, render

    d = p.decision
    record: dict[str, Any] = dict(
        inbound_message_id=row.id, screen=p.screen.reason, screen_reasons=list(p.screen.reasons),
        verification=p.verification.status, verified_user_id=p.verification.user_id,
        verification_reasons=list(p.verification.reasons), action=ATTACHED, template=d.template,
        recipient=d.to, reasons=list(d.reasons) + [f"incident {incident.number}: attached, no ticket"],
        ticket_id=None, created_at=now)
    writes.records.append(record)
    report = dict(incident_id=incident.id, ticket_id=None, inbound_message_id=row.id, outbox_id=None,
                  requester=msg.sender.lower(), language=p.language, created_at=now)
    writes.reports.append(report)
    if not d.template or not d.to:
        return
    reply = completed(responder, msg, p, incident.number or "", draft)
    if reply is None:
        extra = {**duty_context(responder, library, d.template, p.label, p.language, now),
                 **outage_context(incident, library, responder.hours, responder.incidents.dashboard_article,
                                  p.language)}
        try:
            reply = render(responder, msg, p, incident.number or "", extra)
        except RenderError as exc:
            record["reasons"].append(f"no reply: {exc}")
            record["recipient"] = None
            log.warning("message %s: outage answer not built: %s", row.id, exc)
            return
    writes.replies.append((outbox_row(reply, now, inbound_id=row.id), report))
    writes.autoreplies.append(dict(recipient=reply.to, at=now))
    stats.replies += 1


def open_incident_for(session: Session, label: str) -> Incident | None:
    return session.scalars(select(Incident).where(Incident.open_key == label)).first()


def detect(session: Session, cfg: IncidentConfig, arrivals: Sequence[dt.datetime]) -> Burst | None:
    """Return a burst of reports around these arrivals, if there is one (two small queries)."""
    if not arrivals:
        return None
    window = dt.timedelta(minutes=cfg.window_minutes)
    first, last = min(arrivals), max(arrivals)
    counted = (InboundMessage.label == cfg.label) & InboundMessage.state.not_in((QUARANTINED, FAILED))
    times = sorted(session.scalars(select(InboundMessage.received_at).where(
        counted, InboundMessage.received_at > first - window, InboundMessage.received_at <= last)))
    if len(times) < cfg.min_reports:
        return None
    base_end = first - window
    baseline = session.scalar(select(func.count()).select_from(InboundMessage).where(
        counted, InboundMessage.received_at > base_end - dt.timedelta(hours=cfg.baseline_hours),
        InboundMessage.received_at <= base_end)) or 0
    return find_burst(times, arrivals, int(baseline), cfg)


def incident_number(cfg: IncidentConfig, year: int, seq: int) -> str:
    return f"{cfg.number_prefix}-{year:04d}-{seq:04d}"


def open_incident(session: Session, responder: Responder, *, title: str, by: str, now: dt.datetime,
                  burst: Burst | None = None) -> Incident:
    """Open an incident: the alert to on-call, the CSMS draft, the window's tickets attached."""
    cfg = responder.incidents
    incident = Incident(title=title, label=cfg.label, status=INCIDENT_OPEN, open_key=cfg.label, opened_at=now,
                        opened_by=by, trigger=burst.to_dict() if burst else None, followups_sent=0)
    session.add(incident)
    session.flush()
    incident.number = incident_number(cfg, now.year, incident.id)
    incident.csms_notice_id = draft_notice(session, responder, incident, burst)
    incident.alert_outbox_id = alert(session, responder, incident, burst, now)
    if burst is not None:
        attach_window_tickets(session, incident, burst.at - dt.timedelta(minutes=cfg.window_minutes), now)
    return incident


#: The CSMS draft's template (``responders/templates/<lang>/csms_outage_draft.txt.j2``).
CSMS_DRAFT = "csms_outage_draft"


@dataclass(frozen=True)
class DraftText:
    """One language of the CSMS draft: its title and Markdown body."""

    title: str
    body: str


def draft_text(responder: Responder, incident: Incident, burst: Burst | None, language: str) -> DraftText:
    """Return the CSMS draft of ``incident`` in ``language``, rendered from its template (the title is
    the template's ``title`` variable, so each language words its own)."""
    cfg = responder.incidents
    template = responder.renderer.env.get_template(f"{language}/{CSMS_DRAFT}.txt.j2")
    module = template.make_module({
        "incident": incident.number or "", "incident_title": incident.title,
        "since": responder.hours.describe_time(incident.opened_at, language),
        "reports": burst.reports if burst else 0, "window_minutes": f"{cfg.window_minutes:g}"})
    return DraftText(title=str(getattr(module, "title")), body=str(module).strip() + "\n")


def draft_notice(session: Session, responder: Responder, incident: Incident, burst: Burst | None) -> int | None:
    """Prepare the CSMS notice a publisher reviews, in English with its Spanish translation (publishing
    the English one sends each subscriber the version of their language); return the English one's id
    (None when no topic is configured)."""
    from csms.service import create_notice, ensure_topics

    cfg = responder.incidents
    if not cfg.csms_topics:
        return None
    ensure_topics(session, cfg.csms_topics)
    author, event = f"acedesk incident {incident.number}", {"incident": incident.number}
    english = draft_text(responder, incident, burst, "en")
    notice = create_notice(session, title=english.title, type=cfg.csms_type, body=english.body,
                           topics=cfg.csms_topics, author=author, event=event)
    spanish = draft_text(responder, incident, burst, "es")
    create_notice(session, title=spanish.title, type=cfg.csms_type, body=spanish.body, topics=cfg.csms_topics,
                  language="es", author=author, event=event, translation_of=notice)
    return int(notice.id)


def outbox_row(reply: Reply, now: dt.datetime, ticket_id: int | None = None,
               inbound_id: int | None = None) -> dict[str, Any]:
    """Return the outbox row of ``reply`` as values for the batch's executemany (``id`` set later)."""
    return dict(inbound_message_id=inbound_id, ticket_id=ticket_id, mail_from=reply.mail_from, rcpt_to=[reply.to],
                message_id=reply.message_id, template=reply.template, raw=reply.raw, status=PENDING, attempts=0,
                next_attempt_at=now, lease_until=None, last_error=None, created_at=now, sent_at=None)


def _outbox(session: Session, reply: Any, now: dt.datetime, ticket_id: int | None = None,
            inbound_id: int | None = None) -> OutboxMessage:
    out = OutboxMessage(inbound_message_id=inbound_id, ticket_id=ticket_id, mail_from=reply.mail_from,
                        rcpt_to=[reply.to], message_id=reply.message_id, template=reply.template, raw=reply.raw,
                        status=PENDING, attempts=0, next_attempt_at=now, created_at=now)
    session.add(out)
    return out


def alert(session: Session, responder: Responder, incident: Incident, burst: Burst | None,
          now: dt.datetime) -> int | None:
    """Queue the one alert to the on-call address; return its outbox id."""
    cfg = responder.incidents
    if not cfg.oncall_address:
        return None
    reply = build_reply(
        responder.renderer, template=ALERT, language="en", to=cfg.oncall_address,
        from_address=responder.desk.reply_from, from_name=responder.cfg.from_name,
        subject=f"[{incident.number}] ACE outage: {incident.title}", ticket=incident.number or "",
        secret=responder.secret, in_reply_to=None, references=[], auto_submitted="auto-generated",
        context={"incident": incident.number, "title": incident.title,
                 "opened_at": responder.hours.describe_time(incident.opened_at),
                 "reports": burst.reports if burst else 0, "usual": f"{burst.usual:.1f}" if burst else "",
                 "window_minutes": f"{cfg.window_minutes:g}", "notice_id": incident.csms_notice_id,
                 "name": "", "subject": incident.title})
    out = _outbox(session, reply, now)
    session.flush()
    return int(out.id)


def attach_window_tickets(session: Session, incident: Incident, since: dt.datetime, now: dt.datetime) -> int:
    """Attach the open tickets of reports that arrived in the window before the incident opened."""
    attached = select(IncidentReport.ticket_id).where(IncidentReport.ticket_id.is_not(None))
    # By when the report arrived (a backlog read later still belongs to its window).
    in_window = (select(ResponseRecord.ticket_id)
                 .join(InboundMessage, InboundMessage.id == ResponseRecord.inbound_message_id)
                 .where(InboundMessage.label == incident.label, InboundMessage.received_at >= since,
                        ResponseRecord.ticket_id.is_not(None)))
    tickets = session.scalars(select(Ticket).where(
        Ticket.label == incident.label, Ticket.status != TICKET_CLOSED, Ticket.id.in_(in_window),
        Ticket.id.not_in(attached)))
    n = 0
    for t in tickets:
        session.add(IncidentReport(incident_id=incident.id, ticket_id=t.id, requester=t.requester,
                                   language=t.language, created_at=now))
        n += 1
    return n


def outage_context(incident: Incident, library: Library, hours: DeskHours, dashboard: str,
                   language: str) -> dict[str, Any]:
    """Return what the outage answer says: which incident, since when, and the Dashboard link."""
    article = library.get(dashboard, language)
    return {"incident": incident.number, "incident_opened": hours.describe_time(incident.opened_at, language),
            "dashboard": links_context([article])[0] if article else None}


def close_incident(session: Session, responder: Responder, incident: Incident, *, by: str, resolution: str,
                   follow_up: bool, now: dt.datetime | None = None) -> int:
    """Close ``incident`` and, when asked, queue one follow-up per address attached; return how many."""
    if incident.status != INCIDENT_OPEN:
        raise ValueError(f"incident {incident.number} is already {incident.status}")
    now = now or utcnow()
    incident.status, incident.open_key = INCIDENT_CLOSED, None
    incident.closed_at, incident.closed_by, incident.resolution = now, by, resolution.strip() or None
    sent = 0
    if follow_up:
        seen: set[str] = set()
        reports = session.scalars(select(IncidentReport).where(IncidentReport.incident_id == incident.id)
                                  .order_by(IncidentReport.id))
        library = load_library(session)
        for report in reports:
            if report.requester in seen:
                continue
            seen.add(report.requester)
            language = report.language if report.language in ("en", "es") else "en"
            reply = build_reply(
                responder.renderer, template=OUTAGE_RESOLVED, language=language, to=report.requester,
                from_address=responder.desk.reply_from, from_name=responder.cfg.from_name,
                subject=f"Re: {incident.title} [{incident.number}]", ticket=incident.number or "",
                secret=responder.secret, in_reply_to=None, references=[],
                context={"name": "", "subject": incident.title, "resolution": incident.resolution or "",
                         **outage_context(incident, library, responder.hours,
                                          responder.incidents.dashboard_article, language)})
            _outbox(session, reply, now, ticket_id=report.ticket_id)
            sent += 1
    incident.followups_sent = sent
    return sent


def find_incident(session: Session, ref: str) -> Incident:
    """Return the incident numbered ``ref`` (or with id ``ref``); raise LookupError."""
    incident = session.scalars(select(Incident).where(Incident.number == ref.strip().upper())).first()
    if incident is None and ref.strip().isdigit():
        incident = session.get(Incident, int(ref))
    if incident is None:
        raise LookupError(f"no incident {ref}")
    return incident


def report_count(session: Session, incident_id: int) -> int:
    return int(session.scalar(select(func.count()).select_from(IncidentReport)
                              .where(IncidentReport.incident_id == incident_id)) or 0)
