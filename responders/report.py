"""The desk's numbers, for the dashboard and ``acedesk report sla``: messages
per day and label, the share answered automatically, first-response and
resolution times against the target (``[responders] target_hours``; seed 002
wants at least 90% within 4 hours) per label and per week, analysts'
corrections per label (how often the model was overruled), and the backlog.

Everything is aggregated in the database (one pass per figure), so it stays
fast with hundreds of thousands of rows.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from models.classification import LabelCorrection
from models.core import WAITING, InboundMessage
from models.responders import TRIAGE_OPEN, ResponseRecord, Ticket, TriageItem

#: Seed 002: at least this share of first responses within the target.
GOAL = 0.90


def _hours(session: Session, end: Any, start: Any) -> Any:
    if session.get_bind().dialect.name == "postgresql":
        return func.extract("epoch", end - start) / 3600.0
    return (func.julianday(end) - func.julianday(start)) * 24.0


def _bucket(session: Session, column: Any, unit: str) -> Any:
    """The day (``YYYY-MM-DD``) or ISO-like week (``YYYY-Www``) of a timestamp, as text."""
    if session.get_bind().dialect.name == "postgresql":
        return func.to_char(func.timezone("UTC", column), "YYYY-MM-DD" if unit == "day" else 'IYYY-"W"IW')
    return func.strftime("%Y-%m-%d" if unit == "day" else "%Y-W%W", column)


@dataclass(frozen=True)
class SlaRow:
    scope: str
    key: str
    tickets: int
    responded: int
    within_target: int
    share_within_target: float | None
    mean_first_response_hours: float | None
    resolved: int
    mean_resolution_hours: float | None
    corrections: int = 0
    #: Tickets escalated for nearing their target (responders.escalation).
    escalated: int = 0

    def cells(self) -> list[Any]:
        return [self.scope, self.key, self.tickets, self.responded, self.within_target,
                "" if self.share_within_target is None else round(self.share_within_target, 4),
                "" if self.mean_first_response_hours is None else round(self.mean_first_response_hours, 2),
                self.resolved, "" if self.mean_resolution_hours is None else round(self.mean_resolution_hours, 2),
                self.corrections, self.escalated]


@dataclass
class Figures:
    since: dt.datetime
    until: dt.datetime
    target_hours: float
    overall: SlaRow | None = None
    by_label: list[SlaRow] = field(default_factory=list)
    by_week: list[SlaRow] = field(default_factory=list)
    #: ``(day, label, messages)``.
    per_day: list[tuple[str, str, int]] = field(default_factory=list)
    decisions: int = 0
    automatic: int = 0
    corrections: dict[str, int] = field(default_factory=dict)
    backlog: dict[str, int] = field(default_factory=dict)

    @property
    def auto_share(self) -> float | None:
        return self.automatic / self.decisions if self.decisions else None

    def rows(self) -> list[list[Any]]:
        rows = [self.overall] if self.overall else []
        return [r.cells() for r in [*rows, *self.by_label, *self.by_week]]

    def to_dict(self) -> dict[str, Any]:
        return {"since": self.since.isoformat(), "until": self.until.isoformat(), "target_hours": self.target_hours,
                "goal_share_within_target": GOAL, "overall": asdict(self.overall) if self.overall else None,
                "by_label": [asdict(r) for r in self.by_label], "by_week": [asdict(r) for r in self.by_week],
                "messages_per_day": [{"day": d, "label": lab, "messages": n} for d, lab, n in self.per_day],
                "decisions": self.decisions, "answered_automatically": self.automatic,
                "auto_share": self.auto_share, "corrections_by_label": self.corrections, "backlog": self.backlog}


def _sla_rows(session: Session, since: dt.datetime, until: dt.datetime, scope: str, key: Any | None,
              corrections: dict[str, int]) -> list[SlaRow]:
    first = _hours(session, Ticket.first_response_at, Ticket.created_at)
    resolution = _hours(session, Ticket.resolved_at, Ticket.created_at)
    columns = [func.count(), func.count(Ticket.first_response_at),
               func.sum(case((Ticket.first_response_at <= Ticket.due_at, 1), else_=0)),
               func.avg(first), func.count(Ticket.resolved_at), func.avg(resolution), func.count(Ticket.escalated_at)]
    query = select(*([key] if key is not None else []), *columns).where(
        Ticket.created_at >= since, Ticket.created_at < until)
    if key is not None:
        query = query.group_by(key).order_by(key)
    out = []
    for row in session.execute(query).all():
        name = (row[0] or "-") if key is not None else "all"
        n, responded, within, mean_first, resolved, mean_resolution, escalated = row[1:] if key is not None else row
        if not n:
            continue
        out.append(SlaRow(scope, str(name), int(n), int(responded), int(within or 0),
                          (within or 0) / responded if responded else None,
                          float(mean_first) if mean_first is not None else None, int(resolved),
                          float(mean_resolution) if mean_resolution is not None else None,
                          corrections.get(str(name), 0) if scope == "label" else 0, int(escalated or 0)))
    return out


def sla(session: Session, since: dt.datetime, until: dt.datetime, target_hours: float) -> Figures:
    """All the desk's figures for tickets and messages from ``since`` up to ``until``."""
    figures = Figures(since, until, target_hours)
    figures.corrections = {str(label or "-"): int(n) for label, n in session.execute(
        select(LabelCorrection.previous_label, func.count()).where(
            LabelCorrection.created_at >= since, LabelCorrection.created_at < until)
        .group_by(LabelCorrection.previous_label)).all()}
    overall = _sla_rows(session, since, until, "all", None, figures.corrections)
    figures.overall = overall[0] if overall else None
    figures.by_label = _sla_rows(session, since, until, "label", Ticket.label, figures.corrections)
    figures.by_week = _sla_rows(session, since, until, "week", _bucket(session, Ticket.created_at, "week"),
                                figures.corrections)
    day = _bucket(session, InboundMessage.received_at, "day")
    figures.per_day = [(str(d), str(label or "-"), int(n)) for d, label, n in session.execute(
        select(day, InboundMessage.label, func.count()).where(
            InboundMessage.received_at >= since, InboundMessage.received_at < until)
        .group_by(day, InboundMessage.label).order_by(day)).all()]
    # Automatic answers: replies, and outage reports answered for their incident (responders.incidents).
    automatic = (ResponseRecord.action == "reply") | ((ResponseRecord.action == "incident")
                                                     & ResponseRecord.template.is_not(None))
    decided = session.execute(select(func.count(), func.sum(case((automatic, 1), else_=0)))
                              .where(ResponseRecord.created_at >= since, ResponseRecord.created_at < until)).one()
    figures.decisions, figures.automatic = int(decided[0] or 0), int(decided[1] or 0)
    figures.backlog = {
        "triage_open": session.scalar(select(func.count()).select_from(TriageItem)
                                      .where(TriageItem.status == TRIAGE_OPEN)) or 0,
        "waiting_for_pipeline": session.scalar(select(func.count()).select_from(InboundMessage)
                                               .where(InboundMessage.state.in_(WAITING))) or 0,
    }
    return figures
