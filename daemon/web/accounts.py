"""Analyst accounts and console sessions: argon2 password hashes, server-side
sessions with expiry and a CSRF token each, and login rate limiting counted
from the audit log (so it holds across restarts and several instances)."""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, func, or_, select
from sqlalchemy.orm import Session

from models.analysts import ROLES, Analyst, WebSession
from models.base import utcnow
from models.core import AuditEntry

_HASHER = PasswordHasher()
MIN_PASSWORD = 10


class AccountError(Exception):
    """A refused account operation, in words for the person at the keyboard."""


@dataclass(frozen=True)
class Who:
    """The signed-in analyst as the pages see them."""

    id: int
    name: str
    role: str
    csrf: str

    def may(self, role: str) -> bool:
        """Whether this analyst's role includes ``role`` (admin > publisher > analyst)."""
        return ROLES.index(self.role) >= ROLES.index(role)


def _clean_name(name: str) -> str:
    name = name.strip().lower()
    if not name or len(name) > 200 or any(c.isspace() for c in name):
        raise AccountError("an analyst name is one word of at most 200 characters")
    return name


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise AccountError(f"a password needs at least {MIN_PASSWORD} characters")


def add_analyst(session: Session, name: str, role: str, password: str) -> Analyst:
    if role not in ROLES:
        raise AccountError(f"role must be one of {', '.join(ROLES)}")
    name = _clean_name(name)
    _check_password(password)
    if session.scalar(select(Analyst).where(Analyst.name == name)) is not None:
        raise AccountError(f"analyst {name} exists already")
    analyst = Analyst(name=name, role=role, password_hash=_HASHER.hash(password), disabled=False,
                      created_at=utcnow())
    session.add(analyst)
    session.flush()
    return analyst


def find_analyst(session: Session, name: str) -> Analyst:
    analyst = session.scalar(select(Analyst).where(Analyst.name == name.strip().lower()))
    if analyst is None:
        raise AccountError(f"no analyst {name}")
    return analyst


def set_password(session: Session, name: str, password: str) -> None:
    _check_password(password)
    analyst = find_analyst(session, name)
    analyst.password_hash = _HASHER.hash(password)
    # A new password signs every browser out.
    session.execute(delete(WebSession).where(WebSession.analyst_id == analyst.id))


def set_disabled(session: Session, name: str, disabled: bool = True) -> None:
    analyst = find_analyst(session, name)
    analyst.disabled = disabled
    if disabled:
        session.execute(delete(WebSession).where(WebSession.analyst_id == analyst.id))


def set_email(session: Session, name: str, email: str) -> str | None:
    """Set (or, with "", clear) where an analyst's escalation digests go; return the address kept."""
    from responders.render import RenderError, valid_address

    analyst = find_analyst(session, name)
    try:
        analyst.email = valid_address(email.strip()) if email.strip() else None
    except RenderError as exc:
        raise AccountError(f"e-mail address {email[:80]!r}: {exc}") from None
    return analyst.email


def list_analysts(session: Session) -> list[Analyst]:
    return list(session.scalars(select(Analyst).order_by(Analyst.name)))


def recent_failures(session: Session, name: str, client: str, since: dt.datetime) -> int:
    """Failed logins for this name or from this client address since ``since``."""
    return session.scalar(select(func.count()).select_from(AuditEntry).where(
        AuditEntry.action == "console.login_failed", AuditEntry.at >= since,
        or_(AuditEntry.subject_id == name[:64], AuditEntry.actor == f"client:{client}"[:200]))) or 0


def authenticate(session: Session, name: str, password: str) -> Analyst | None:
    """The enabled analyst with this name and password, or None (no hint which was wrong)."""
    analyst = session.scalar(select(Analyst).where(Analyst.name == name.strip().lower()))
    if analyst is None or analyst.disabled or not analyst.password_hash:
        # Hash anyway, so the answer takes as long for an unknown name.
        _HASHER.hash(password)
        return None
    try:
        _HASHER.verify(analyst.password_hash, password)
    except (VerificationError, InvalidHashError):
        return None
    if _HASHER.check_needs_rehash(analyst.password_hash):
        analyst.password_hash = _HASHER.hash(password)
    return analyst


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def open_session(session: Session, analyst: Analyst, hours: float) -> str:
    """Start a session for ``analyst``; return the cookie's token."""
    now = utcnow()
    token = secrets.token_urlsafe(32)
    session.add(WebSession(token_hash=_digest(token), analyst_id=analyst.id, csrf=secrets.token_urlsafe(24),
                           created_at=now, expires_at=now + dt.timedelta(hours=hours)))
    analyst.last_login_at = now
    # Expired sessions go as new ones come.
    session.execute(delete(WebSession).where(WebSession.expires_at < now))
    return token


def session_of(session: Session, token: str, hours: float) -> Who | None:
    """The analyst of a live session (its expiry slides forward), or None."""
    if not token or len(token) > 100:
        return None
    now = utcnow()
    row = session.get(WebSession, _digest(token))
    if row is None or row.expires_at < now:
        return None
    analyst = session.get(Analyst, row.analyst_id)
    if analyst is None or analyst.disabled:
        return None
    # Slide the expiry, but write at most once a minute per session.
    if row.expires_at - now < dt.timedelta(hours=hours) - dt.timedelta(minutes=1):
        row.expires_at = now + dt.timedelta(hours=hours)
    return Who(analyst.id, analyst.name, analyst.role, row.csrf)


def close_session(session: Session, token: str) -> None:
    session.execute(delete(WebSession).where(WebSession.token_hash == _digest(token)))


def enabled_analyst(session: Session, name: str) -> Analyst | None:
    """The enabled analyst of this name (the one a trusted proxy named), or None."""
    analyst = session.scalar(select(Analyst).where(Analyst.name == name.strip().lower()))
    if analyst is None or analyst.disabled:
        return None
    session.expunge(analyst)
    return analyst
