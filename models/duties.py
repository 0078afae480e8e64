"""Tables of the desk's own duties: knowledge articles (what replies link),
outage incidents (War Room) and the reports attached to them.

Account status lives on ``users`` and escalation on ``tickets``
(``models.responders``); who changed a status is in ``audit_log``.
No foreign keys point at other branches' tables except ``tickets``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Date, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, JSONType, UTCDateTime, utcnow

# Incident states.
INCIDENT_OPEN = "open"
INCIDENT_CLOSED = "closed"


class Article(Base):
    """A knowledge article (KMS): one language of one key, linked from the replies of its labels."""

    __tablename__ = "articles"
    __table_args__ = (UniqueConstraint("key", "language"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: Stable name shared by the languages of one article, e.g. ``availability-dashboard``.
    key: Mapped[str] = mapped_column(String(64))
    language: Mapped[str] = mapped_column(String(8))
    title: Mapped[str] = mapped_column(String(300))
    #: None when the source names the article without an address (cited by title; migration 0016).
    url: Mapped[str | None] = mapped_column(String(2000))
    #: The taxonomy labels whose replies link it.
    labels: Mapped[list[str]] = mapped_column(JSONType)
    last_reviewed: Mapped[dt.date | None] = mapped_column(Date)
    #: ``shipped`` (from the seeds' resources) or ``import``.
    source: Mapped[str] = mapped_column(String(16), default="import")
    retired_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    retired_by: Mapped[str | None] = mapped_column(String(200))
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class Incident(Base):
    """An outage the desk knows about: a burst of reports, or opened by hand."""

    __tablename__ = "incidents"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    number: Mapped[str | None] = mapped_column(String(32), unique=True)
    title: Mapped[str] = mapped_column(String(300))
    label: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default=INCIDENT_OPEN)
    #: The label while open, null once closed: unique, so two workers cannot open two at once.
    open_key: Mapped[str | None] = mapped_column(String(64), unique=True)
    opened_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    opened_by: Mapped[str] = mapped_column(String(200), default="")
    #: What opened it: the counts in the window and the baseline.
    trigger: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    alert_outbox_id: Mapped[int | None] = mapped_column(Integer)
    csms_notice_id: Mapped[int | None] = mapped_column(Integer)
    closed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    closed_by: Mapped[str | None] = mapped_column(String(200))
    resolution: Mapped[str | None] = mapped_column(Text)
    followups_sent: Mapped[int] = mapped_column(Integer, default=0)


class IncidentReport(Base):
    """One report of an outage attached to an incident (a message, or a ticket opened before it)."""

    __tablename__ = "incident_reports"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    incident_id: Mapped[int] = mapped_column(ForeignKey("incidents.id"), index=True)
    inbound_message_id: Mapped[int | None] = mapped_column(Integer, unique=True)
    ticket_id: Mapped[int | None] = mapped_column(Integer, unique=True)
    requester: Mapped[str] = mapped_column(String(320))
    language: Mapped[str] = mapped_column(String(8), default="en")
    outbox_id: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
