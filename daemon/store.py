"""Durable intake: the one function every ingress path (IMAP, SMTP, LMTP,
``acedesk ingest``) calls to commit raw bytes before it acknowledges them.

Duplicates are per desk: the same UID under the same UIDVALIDITY, or the same
bytes arriving again for the same desk, are one row (the database's unique
constraints decide, so two instances racing cannot both insert).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import insert
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from models.base import utcnow
from models.core import NEW, InboundMessage

_HEADER_END = re.compile(rb"\r?\n\r?\n")
_MESSAGE_ID = re.compile(rb"^message-id:[ \t]*((?:.*)(?:\r?\n[ \t].*)*)", re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True)
class NewMessage:
    """Raw bytes as received, and where they came from."""

    desk: str
    source: str
    raw: bytes
    envelope_from: str | None = None
    envelope_to: tuple[str, ...] = ()
    mailbox_id: int | None = None
    uidvalidity: int | None = None
    uid: int | None = None


def header_message_id(raw: bytes) -> str | None:
    """Return the Message-ID header of ``raw`` without parsing the whole message."""
    match = _HEADER_END.search(raw, 0, 256 * 1024)
    head = raw[: match.start()] if match else raw[: 256 * 1024]
    found = _MESSAGE_ID.search(head)
    if not found:
        return None
    value = re.sub(rb"\s+", b" ", found.group(1)).strip()
    return value.decode("ascii", "replace")[:998] or None


def row_values(item: NewMessage) -> dict[str, object]:
    """Return the column values of a new inbound row for ``item``."""
    now = utcnow()
    return {
        "desk": item.desk.lower(),
        "source": item.source,
        "mailbox_id": item.mailbox_id,
        "uidvalidity": item.uidvalidity,
        "uid": item.uid,
        "envelope_from": item.envelope_from,
        "envelope_to": list(item.envelope_to),
        "raw": item.raw,
        "size": len(item.raw),
        "sha256": hashlib.sha256(item.raw).hexdigest(),
        "message_id": header_message_id(item.raw),
        "received_at": now,
        "state": NEW,
        "attempts": 0,
        "updated_at": now,
    }


def insert_messages(session: Session, items: Sequence[NewMessage]) -> int:
    """Insert ``items`` in the caller's transaction, skipping duplicates; return how many were new."""
    if not items:
        return 0
    values = [row_values(item) for item in items]
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        stmt = postgresql.insert(InboundMessage).on_conflict_do_nothing()
    elif dialect == "sqlite":
        stmt = sqlite.insert(InboundMessage).on_conflict_do_nothing()
    else:  # pragma: no cover - only SQLite and PostgreSQL are supported
        stmt = insert(InboundMessage)
    if dialect == "sqlite":
        # sqlite3's executemany runs in C and sums rowcount over the batch; a
        # skipped duplicate counts 0, so the sum is the number really inserted.
        return max(session.connection().execute(stmt, values).rowcount, 0)
    # psycopg does not sum rowcount over a batch: RETURNING counts the rows.
    # Pages of 100 rows: psycopg re-parses each multi-row statement's text in
    # Python, which for SQLAlchemy's default 1,000-row pages costs more than
    # the extra round trips.
    conn = session.connection().execution_options(insertmanyvalues_page_size=100)
    result = conn.execute(stmt.returning(InboundMessage.id), values)
    return len(result.all())
