"""CSMS tables: notices and their number counter, topics, subscribers and
their subscriptions, pending (double opt-in) confirmations, one delivery row
per (notice, subscriber), bounce events, and the ledger of control mail
(confirmation requests and results) that the request-address rate limits count.

A notice moves through ``status``: ``draft`` -> ``scheduled`` ->
``publishing`` (its number is allocated and its delivery rows are written in
one transaction) -> ``done`` (every delivery is ``sent`` or ``failed``), or
``cancelled`` before it was published.  Numbers come from the
``csms_counters`` row, incremented atomically, so they are monotonic and
never reused, also under concurrent publishers.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, JSONType, UTCDateTime, utcnow

# Notice states.
DRAFT = "draft"
SCHEDULED = "scheduled"
PUBLISHING = "publishing"
DONE = "done"
CANCELLED = "cancelled"
NOTICE_STATES = (DRAFT, SCHEDULED, PUBLISHING, DONE, CANCELLED)

# Delivery states.
PENDING = "pending"
SENT = "sent"
FAILED = "failed"

# Subscriber states.
ACTIVE = "active"
UNSUBSCRIBED = "unsubscribed"
DISABLED = "disabled"   # too many hard bounces


class CsmsCounter(Base):
    """A named counter updated atomically (``UPDATE ... SET value = value + 1 RETURNING``)."""

    __tablename__ = "csms_counters"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger)


class Notice(Base):
    """One CSMS notice; a Spanish version or a reminder is a notice of its own."""

    __tablename__ = "csms_notices"
    __table_args__ = (Index("ix_csms_notices_status_scheduled", "status", "scheduled_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: ``CSMS #<number>``; allocated when publishing starts.
    number: Mapped[int | None] = mapped_column(BigInteger, unique=True)
    title: Mapped[str] = mapped_column(String(500))
    #: REMINDER, INFORMATION, ACTION REQUIRED, UPDATE ...
    type: Mapped[str] = mapped_column(String(64))
    tags: Mapped[list[str]] = mapped_column(JSONType)
    #: The body as written (Markdown).
    body: Mapped[str] = mapped_column(Text)
    #: "Programs Affected": the topic names it goes to.
    topics: Mapped[list[str]] = mapped_column(JSONType)
    #: Related notice numbers.
    related: Mapped[list[int]] = mapped_column(JSONType)
    language: Mapped[str] = mapped_column(String(8), default="en")
    #: The English notice this one translates (a Spanish version).
    translation_of_id: Mapped[int | None] = mapped_column(ForeignKey("csms_notices.id"), index=True)
    #: The notice a REMINDER was derived from.
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("csms_notices.id"), index=True)
    #: The event a reminder is about: ``{"kind", "at"}`` (ISO, UTC).
    event: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    author: Mapped[str] = mapped_column(String(200), default="")
    status: Mapped[str] = mapped_column(String(16), default=DRAFT)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    scheduled_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    published_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    #: Published after its time because the daemon was down.
    late: Mapped[bool] = mapped_column(Boolean, default=False)
    #: Held until a translation of it exists (``--with-translation``): not published before.
    hold_for_translation: Mapped[bool] = mapped_column(Boolean, default=False)
    #: Deliveries written when publishing started.
    total: Mapped[int] = mapped_column(Integer, default=0)
    #: The instance fanning it out, until ``lease_until`` (a crash frees it).
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class Topic(Base):
    """A program subscribers choose (ACE, ACE Portal, ACH Refunds, Cargo Release, ...)."""

    __tablename__ = "csms_topics"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")


class Subscriber(Base):
    __tablename__ = "csms_subscribers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: Lower-cased addr-spec.
    email: Mapped[str] = mapped_column(String(320), unique=True)
    language: Mapped[str] = mapped_column(String(8), default="en")
    status: Mapped[str] = mapped_column(String(16), default=ACTIVE)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class Subscription(Base):
    __tablename__ = "csms_subscriptions"
    __table_args__ = (UniqueConstraint("subscriber_id", "topic_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    subscriber_id: Mapped[int] = mapped_column(ForeignKey("csms_subscribers.id", ondelete="CASCADE"))
    topic_id: Mapped[int] = mapped_column(ForeignKey("csms_topics.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class PendingConfirmation(Base):
    """A subscribe/unsubscribe request by e-mail waiting for the address to confirm it."""

    __tablename__ = "csms_pending"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str] = mapped_column(String(320), index=True)
    #: ``subscribe`` or ``unsubscribe``.
    action: Mapped[str] = mapped_column(String(16))
    topics: Mapped[list[str]] = mapped_column(JSONType)
    language: Mapped[str] = mapped_column(String(8))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    confirmed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    #: The inbound message that asked for it.
    inbound_message_id: Mapped[int | None] = mapped_column(Integer)


class Delivery(Base):
    """One notice to one subscriber: unique, so nobody is planned twice."""

    __tablename__ = "csms_deliveries"
    __table_args__ = (
        UniqueConstraint("notice_id", "subscriber_id"),
        Index("ix_csms_deliveries_notice_status", "notice_id", "status", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    notice_id: Mapped[int] = mapped_column(ForeignKey("csms_notices.id", ondelete="CASCADE"))
    subscriber_id: Mapped[int] = mapped_column(ForeignKey("csms_subscribers.id", ondelete="CASCADE"),
                                               index=True)
    status: Mapped[str] = mapped_column(String(16), default=PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    first_attempt_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    sent_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    #: The language version sent (chosen per subscriber when their turn comes).
    language: Mapped[str | None] = mapped_column(String(8))
    #: The fan-out sender (``host:pid/...``) that claimed it, until ``claim_until``.
    claim_owner: Mapped[str | None] = mapped_column(String(200))
    claim_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class BounceEvent(Base):
    """A delivery status notification (or a 5xx at send time) about a subscriber."""

    __tablename__ = "csms_bounces"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    subscriber_id: Mapped[int] = mapped_column(ForeignKey("csms_subscribers.id", ondelete="CASCADE"),
                                               index=True)
    notice_number: Mapped[int | None] = mapped_column(BigInteger)
    #: ``hard`` (counted) or ``soft`` (delayed, 4.x.x: recorded, never counted), or ``complaint``
    #: (an ARF feedback report, RFC 5965: the subscriber marked a notice as spam).
    kind: Mapped[str] = mapped_column(String(16))
    #: ``dsn`` (RFC 3464), ``nondsn`` (another bounce format), ``arf`` or ``smtp``.
    source: Mapped[str] = mapped_column(String(8))
    action: Mapped[str] = mapped_column(String(32), default="")
    status_code: Mapped[str] = mapped_column(String(16), default="")
    diagnostic: Mapped[str] = mapped_column(Text, default="")
    inbound_message_id: Mapped[int | None] = mapped_column(Integer)
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class ControlMail(Base):
    """One message the request address sent to one address (a confirmation request, a result,
    help or an error): the ledger the rate limits count.  The message itself goes out through
    the transactional outbox (``outbox_id``), written in the same transaction as this row."""

    __tablename__ = "csms_mail"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    rcpt: Mapped[str] = mapped_column(String(320), index=True)
    #: ``confirm``, ``result``, ``help`` or ``error``.
    kind: Mapped[str] = mapped_column(String(32))
    inbound_message_id: Mapped[int | None] = mapped_column(Integer)
    outbox_id: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
