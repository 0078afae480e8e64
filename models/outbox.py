"""The transactional outbox: one row per outgoing reply, written in the same
transaction as the decision that made it, delivered later by
``daemon.delivery.outbox``.

``inbound_message_id`` is unique, so one inbound message yields at most one
reply whatever crashes (analyst replies have none).  ``status`` goes
``pending`` -> ``sending`` (claimed under a lease) -> ``sent``, or
``failed`` (a 5xx, or temporary failures beyond ``give_up_hours``).
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, deferred, mapped_column

from models.base import Base, JSONType, UTCDateTime, utcnow

PENDING = "pending"
SENDING = "sending"
SENT = "sent"
FAILED = "failed"


class OutboxMessage(Base):
    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_status_next", "status", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: The inbound message this answers (unique: at most one reply each); null for analyst replies.
    inbound_message_id: Mapped[int | None] = mapped_column(Integer, unique=True)
    ticket_id: Mapped[int | None] = mapped_column(Integer, index=True)
    #: Envelope sender and recipients (RFC 5321).
    mail_from: Mapped[str] = mapped_column(String(320))
    rcpt_to: Mapped[list[str]] = mapped_column(JSONType)
    message_id: Mapped[str] = mapped_column(String(998), index=True)
    template: Mapped[str | None] = mapped_column(String(64))
    #: The whole message, CRLF line endings, ready for DATA.
    raw: Mapped[bytes] = deferred(mapped_column(LargeBinary, nullable=False))
    status: Mapped[str] = mapped_column(String(16), default=PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    #: A claimed row belongs to its sender until then (a crash frees it).
    lease_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    sent_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
