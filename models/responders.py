"""Tables owned by the responders: users on file, tickets and their messages,
the analyst triage queue, the per-message screening/decision record, and the
log of automatic answers that the per-recipient cap counts.

No foreign keys point at other branches' tables (``inbound_messages`` is
referred to by id only), so each branch migrates on its own.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Boolean, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, JSONType, UTCDateTime, utcnow

# Ticket states.
TICKET_OPEN = "open"
TICKET_ANSWERED = "answered"   # an automatic answer went out; reopened by a follow-up
TICKET_CLOSED = "closed"

# Account status of a user on file.
USER_ACTIVE = "active"
USER_INACTIVE = "inactive"
USER_SUSPENDED = "suspended"   # by security
USER_STATUSES = (USER_ACTIVE, USER_INACTIVE, USER_SUSPENDED)

# Triage item states.
TRIAGE_OPEN = "open"
TRIAGE_DONE = "done"


class User(Base):
    """A trade or PGA user on file (``acedesk users import``)."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: The ACE Portal UserID (unique; the key of re-imports).
    user_id: Mapped[str] = mapped_column(String(64), unique=True)
    #: The address on file, lower-cased.
    email: Mapped[str] = mapped_column(String(320), index=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    #: importer, broker, carrier, exporter, surety, pga...
    role: Mapped[str] = mapped_column(String(32), default="")
    #: The role's identifier (IOR number, filer code, SCAC, EIN, surety code), upper-cased.
    identifier: Mapped[str] = mapped_column(String(64), default="", index=True)
    account_owner_email: Mapped[str] = mapped_column(String(320), default="")
    language: Mapped[str] = mapped_column(String(8), default="en")
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    #: ``active``, ``inactive`` or ``suspended`` (by security); who set it, when and why.
    status: Mapped[str] = mapped_column(String(16), default=USER_ACTIVE)
    status_reason: Mapped[str | None] = mapped_column(Text)
    status_by: Mapped[str | None] = mapped_column(String(200))
    status_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class Ticket(Base):
    """One request from one requester, numbered ``ACE-YYYY-NNNNNN``."""

    __tablename__ = "tickets"
    __table_args__ = (Index("ix_tickets_status_due", "status", "due_at"),
                      # The console's queue walks tickets in due order (migration 0013).
                      Index("ix_tickets_due_at", "due_at"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    number: Mapped[str | None] = mapped_column(String(32), unique=True)
    status: Mapped[str] = mapped_column(String(16), default=TICKET_OPEN)
    #: ``normal`` or ``high`` (outage, cargo held, "urgent" from a verified user).
    priority: Mapped[str] = mapped_column(String(16), default="normal")
    label: Mapped[str | None] = mapped_column(String(64))
    language: Mapped[str] = mapped_column(String(8), default="en")
    requester: Mapped[str] = mapped_column(String(320), index=True)
    user_id: Mapped[str | None] = mapped_column(String(64))
    verification: Mapped[str | None] = mapped_column(String(16))
    subject: Mapped[str] = mapped_column(String(998), default="")
    #: Flagged for the security analysts (looks like impersonation).
    security: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    #: First response and resolution targets (created + ``target_hours``).
    due_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    first_response_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    resolved_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    #: The last permanent delivery failure of a reply on this ticket.
    last_error: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    #: When it was escalated for nearing its target (once), and who was told.
    escalated_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    escalated_to: Mapped[str | None] = mapped_column(String(320))


class TicketMessage(Base):
    """A message on a ticket: inbound mail, an outgoing reply, or a note."""

    __tablename__ = "ticket_messages"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), index=True)
    #: ``in``, ``out`` or ``note``.
    direction: Mapped[str] = mapped_column(String(8))
    inbound_message_id: Mapped[int | None] = mapped_column(Integer, index=True)
    outbox_id: Mapped[int | None] = mapped_column(Integer)
    message_id: Mapped[str | None] = mapped_column(String(998), index=True)
    author: Mapped[str] = mapped_column(String(320), default="")
    text: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class TriageItem(Base):
    """Something an analyst must look at: an unsure label, a failed verification, a follow-up."""

    __tablename__ = "triage_items"
    __table_args__ = (Index("ix_triage_items_status_created", "status", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), index=True)
    inbound_message_id: Mapped[int | None] = mapped_column(Integer, index=True)
    #: Why it is here, e.g. ``policy``, ``followup``, ``delivery_failed``.
    reason: Mapped[str] = mapped_column(String(64))
    security: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(16), default=TRIAGE_OPEN)
    label: Mapped[str | None] = mapped_column(String(64))
    confidence: Mapped[float | None] = mapped_column(Float)
    #: What the policy would do if the analyst approves (kind, template, to).
    suggestion: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    resolved_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    resolved_by: Mapped[str | None] = mapped_column(String(200))
    resolution: Mapped[str | None] = mapped_column(String(32))
    #: The analyst working it ("assign to me" in the console); None = nobody yet.
    assigned_to: Mapped[str | None] = mapped_column(String(200))


class ResponseRecord(Base):
    """Why one inbound message was (not) answered: screening, verification, decision."""

    __tablename__ = "response_records"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    inbound_message_id: Mapped[int] = mapped_column(Integer, unique=True)
    #: Null when the message may be answered; else the first screening reason.
    screen: Mapped[str | None] = mapped_column(String(64))
    screen_reasons: Mapped[list[str] | None] = mapped_column(JSONType)
    verification: Mapped[str] = mapped_column(String(16))
    verified_user_id: Mapped[str | None] = mapped_column(String(64))
    verification_reasons: Mapped[list[str] | None] = mapped_column(JSONType)
    action: Mapped[str] = mapped_column(String(16))
    template: Mapped[str | None] = mapped_column(String(64))
    recipient: Mapped[str | None] = mapped_column(String(320))
    ticket_id: Mapped[int | None] = mapped_column(Integer)
    reasons: Mapped[list[str] | None] = mapped_column(JSONType)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class AutoReplyLog(Base):
    """One automatic answer to one recipient: what the per-recipient cap counts."""

    __tablename__ = "autoreply_log"
    __table_args__ = (Index("ix_autoreply_log_recipient_at", "recipient", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    recipient: Mapped[str] = mapped_column(String(320))
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
