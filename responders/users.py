"""Users on file: reading ``acedesk users import`` CSV files (pure) and
upserting them by UserID (re-import updates, never duplicates).

Columns (design.md): ``user_id,email,name,role,identifier,account_owner_email,language``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.base import utcnow
from models.csvfile import read_rows
from models.responders import User
from responders.verify import UserRecord

COLUMNS = ("user_id", "email", "name", "role", "identifier", "account_owner_email", "language")
REQUIRED = ("user_id", "email")
ROLES = ("", "importer", "broker", "carrier", "exporter", "surety", "pga", "cbp", "other")
_EMAIL = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")
_USER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


@dataclass(frozen=True)
class RowError:
    line: int
    message: str


def parse_users_csv(text: str) -> tuple[list[tuple[int, UserRecord]], list[RowError]]:
    """Return the valid rows (with their line numbers) and one error per bad row."""
    parsed = read_rows(text, COLUMNS)
    if not parsed.header:
        return [], [RowError(line, message) for line, message in parsed.errors]
    header = parsed.header
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        return [], [RowError(1, f"missing column(s) {', '.join(missing)}; expected {','.join(COLUMNS)}")]
    unknown = [h for h in header if h not in COLUMNS]
    if unknown:
        return [], [RowError(1, f"unknown column(s) {', '.join(unknown)}; expected {','.join(COLUMNS)}")]
    rows: list[tuple[int, UserRecord]] = []
    errors: list[RowError] = [RowError(line, message) for line, message in parsed.errors]
    seen: dict[str, int] = {}
    for line, record in parsed.records:
        values = {k: (record.get(k) or "").strip() for k in COLUMNS}
        if not any(values.values()):
            continue
        problem = _check(values)
        if problem:
            errors.append(RowError(line, problem))
            continue
        key = values["user_id"].lower()
        if key in seen:
            errors.append(RowError(line, f"user_id {values['user_id']!r} repeats line {seen[key]}"))
            continue
        seen[key] = line
        rows.append((line, UserRecord(
            user_id=values["user_id"], email=values["email"].lower(), name=values["name"][:200],
            role=values["role"].lower(), identifier=values["identifier"].upper(),
            account_owner_email=values["account_owner_email"].lower(), language=values["language"].lower() or "en")))
    return rows, errors


def _check(v: dict[str, str]) -> str | None:
    if not v["user_id"]:
        return "user_id is empty"
    if not _USER_ID.match(v["user_id"]):
        return f"user_id {v['user_id'][:40]!r} is not a UserID"
    if not _EMAIL.match(v["email"]):
        return f"email {v['email'][:80]!r} is not an e-mail address"
    if v["account_owner_email"] and not _EMAIL.match(v["account_owner_email"]):
        return f"account_owner_email {v['account_owner_email'][:80]!r} is not an e-mail address"
    if v["language"] and v["language"].lower() not in ("en", "es"):
        return f"language {v['language'][:10]!r}: expected en or es"
    if v["role"].lower() not in ROLES:
        return f"role {v['role'][:20]!r}: expected one of {', '.join(r for r in ROLES if r)}"
    if len(v["identifier"]) > 64:
        return "identifier longer than 64 characters"
    return None


def upsert_users(session: Session, records: list[UserRecord]) -> tuple[int, int]:
    """Insert or update ``records`` by UserID (case-insensitive); return ``(created, updated)``."""
    if not records:
        return 0, 0
    existing = {u.user_id.lower(): u for u in session.scalars(select(User))} if len(records) > 500 else {
        u.user_id.lower(): u for u in session.scalars(
            select(User).where(User.user_id.in_({v for r in records for v in (r.user_id, r.user_id.lower(),
                                                                               r.user_id.upper())})))}
    created = updated = 0
    now = utcnow()
    for r in records:
        user = existing.get(r.user_id.lower())
        fields = dict(email=r.email, name=r.name, role=r.role, identifier=r.identifier,
                      account_owner_email=r.account_owner_email, language=r.language)
        if user is None:
            user = User(user_id=r.user_id, updated_at=now, **fields)
            session.add(user)
            existing[r.user_id.lower()] = user
            created += 1
        elif any(getattr(user, k) != val for k, val in fields.items()):
            for k, val in fields.items():
                setattr(user, k, val)
            user.updated_at = now
            updated += 1
    return created, updated
