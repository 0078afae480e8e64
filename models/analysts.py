"""Tables of the analysts' console: analyst accounts and their server-side
sessions.  What an analyst did is in the audit log (``models.core.AuditEntry``)
under their name."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Boolean, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, UTCDateTime, utcnow

#: Roles, each allowed what the one before it is, and more.
ANALYST = "analyst"      # works the queue and tickets
PUBLISHER = "publisher"  # also composes and publishes CSMS notices, manages subscribers
ADMIN = "admin"          # also sees the operators' pages
ROLES = (ANALYST, PUBLISHER, ADMIN)


class Analyst(Base):
    """A person who signs in to the console."""

    __tablename__ = "analysts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: The login name, lower-case; what the audit log shows.
    name: Mapped[str] = mapped_column(String(200), unique=True)
    role: Mapped[str] = mapped_column(String(16), default=ANALYST)
    #: argon2id hash (argon2-cffi's encoded form, parameters included).
    password_hash: Mapped[str] = mapped_column(String(200), default="")
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    #: Where escalation digests of the tickets assigned to them go (migration 0016d); None = not told.
    email: Mapped[str | None] = mapped_column(String(320))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_login_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class WebSession(Base):
    """One signed-in browser: the cookie carries a random token, the table its hash."""

    __tablename__ = "web_sessions"

    #: SHA-256 of the cookie's token (a stolen database holds no usable cookie).
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    analyst_id: Mapped[int] = mapped_column(ForeignKey("analysts.id", ondelete="CASCADE"), index=True)
    #: The CSRF token every POST of this session must carry.
    csrf: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)
