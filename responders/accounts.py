"""Account status of users on file (seed 002: timely inactivation or
restoration of ACE Portal accounts for cybersecurity).

A user is ``active``, ``inactive`` or ``suspended`` (by security), with who
changed it, when and why; every change is written to the audit log.  The
check :func:`held_status` is pure: a message from (or about) an account that
is not active never gets self-service account help -- the policy step
``account_status`` (``responders.policy.DECIDE``) sends it to the queue
flagged for security, and any reply becomes the one that discloses nothing.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.base import utcnow
from models.core import AuditEntry
from models.responders import USER_ACTIVE, USER_INACTIVE, USER_STATUSES, USER_SUSPENDED, User

__all__ = ["USER_ACTIVE", "USER_INACTIVE", "USER_SUSPENDED", "USER_STATUSES", "AccountError", "held_status",
           "load_held", "set_status"]


class AccountError(Exception):
    """A status change that cannot be made (no such user, nothing to change)."""


def held_status(records: Iterable[object], sender: str, user_id: str | None) -> str | None:
    """Return the status of the account this message comes from or is about, when it is not active.

    ``records`` are the users on file relevant to the message (anything with
    ``user_id``, ``email`` and ``status``): the user verification settled on,
    and every user whose address on file is the sender's.
    """
    sender = (sender or "").lower()
    key = (user_id or "").lower()
    for r in records:
        status = getattr(r, "status", USER_ACTIVE) or USER_ACTIVE
        if status == USER_ACTIVE:
            continue
        if (key and getattr(r, "user_id", "").lower() == key) or getattr(r, "email", "").lower() == sender:
            return str(status)
    return None


def load_held(session: Session, senders: Iterable[str], user_ids: Iterable[str]) -> list[User]:
    """Return the users on file that are not active and concern these senders or UserIDs (one query)."""
    senders = {s.lower() for s in senders if s}
    ids = {u for u in user_ids if u}
    if not senders and not ids:
        return []
    return list(session.scalars(select(User).where(User.status != USER_ACTIVE,
                                                   User.email.in_(senders) | User.user_id.in_(ids))))


def set_status(session: Session, user_id: str, status: str, reason: str, by: str) -> tuple[User, str]:
    """Set ``user_id``'s status (audited); return the user and the status before."""
    if status not in USER_STATUSES:
        raise AccountError(f"status {status!r}: expected one of {', '.join(USER_STATUSES)}")
    if not reason.strip():
        raise AccountError("a status change needs a reason (--reason)")
    user = session.scalars(select(User).where(User.user_id.in_({user_id, user_id.lower(), user_id.upper()}))
                           ).first()
    if user is None:
        raise AccountError(f"no user {user_id!r} on file")
    before = user.status or USER_ACTIVE
    if before == status:
        raise AccountError(f"user {user.user_id} is already {status}")
    now = utcnow()
    user.status, user.status_reason, user.status_by, user.status_at = status, reason.strip(), by, now
    session.add(AuditEntry(at=now, actor=by, action=f"user.{status}", subject_type="user", subject_id=user.user_id,
                           detail={"from": before, "to": status, "reason": reason.strip()}))
    return user, before


def history(session: Session, user_id: str) -> list[AuditEntry]:
    """Return the status changes of ``user_id``, oldest first."""
    return list(session.scalars(select(AuditEntry).where(AuditEntry.subject_type == "user",
                                                         AuditEntry.subject_id == user_id)
                                .order_by(AuditEntry.at, AuditEntry.id)))
