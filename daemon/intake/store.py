"""Durable intake: the one function every ingress path (IMAP, SMTP, LMTP,
``acedesk ingest``) calls to commit raw bytes before it acknowledges them.

Duplicates are per desk: the same UID under the same UIDVALIDITY, or the same
bytes arriving again for the same desk, are one row (the database's unique
constraints decide, so two instances racing cannot both insert).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from models.base import utcnow
from models.core import NEW, InboundMessage

_HEADER_END = re.compile(rb"\r?\n\r?\n")
_WHITESPACE = re.compile(rb"\s+")
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
    #: The duplicate key when it is not that of ``raw`` (the ingress keys a message by what the client
    #: sent, not by the Received line it prepended itself).
    key: str | None = None


def header_message_id(raw: bytes) -> str | None:
    """Return the Message-ID header of ``raw`` without parsing the whole message."""
    match = _HEADER_END.search(raw, 0, 256 * 1024)
    head = raw[: match.start()] if match else raw[: 256 * 1024]
    found = _MESSAGE_ID.search(head)
    if not found:
        return None
    value = found.group(1)
    if b"\n" in value or b"\t" in value:  # folded over several lines (rare): unfold
        value = _WHITESPACE.sub(b" ", value)
    value = value.strip()
    return value.decode("ascii", "replace")[:998] or None


def fingerprint(raw: bytes) -> str:
    """Return the duplicate key of ``raw``: its SHA-256 with every line ending made CRLF, so that the
    same message arriving again with only CRLF/LF changed is the same message (and a message in
    canonical CRLF form keys as its plain SHA-256)."""
    if raw.count(b"\n") != raw.count(b"\r\n"):
        raw = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return hashlib.sha256(raw).hexdigest()


#: The columns an intake row sets, in the order of :func:`row_tuple`.
COLUMNS = ("desk", "source", "mailbox_id", "uidvalidity", "uid", "envelope_from", "envelope_to", "raw", "size",
           "sha256", "message_id", "received_at", "state", "attempts", "updated_at")


def row_values(item: NewMessage, now: dt.datetime | None = None) -> dict[str, object]:
    """Return the column values of a new inbound row for ``item``."""
    return dict(zip(COLUMNS, row_tuple(item, now or utcnow())))


def row_tuple(item: NewMessage, now: dt.datetime) -> tuple[object, ...]:
    """Return the values of :data:`COLUMNS` for ``item``, as Python objects."""
    return (item.desk.lower(), item.source, item.mailbox_id, item.uidvalidity, item.uid, item.envelope_from,
            list(item.envelope_to), item.raw, len(item.raw), item.key or fingerprint(item.raw),
            header_message_id(item.raw), now, NEW, 0, now)


def insert_messages(session: Session, items: Sequence[NewMessage]) -> int:
    """Insert ``items`` in the caller's transaction, skipping duplicates; return how many were new.

    Intake is the hot path of ingestion (thousands of rows a second), so the
    rows go straight to the driver's ``executemany`` in the session's own
    connection and transaction: SQLAlchemy's per-row parameter processing
    cost more than the database did.  The values are converted here exactly
    as the column types would (UTC timestamps, JSON); the tests read them
    back through the ORM on both backends.
    """
    if not items:
        return 0
    now = utcnow()
    rows = [row_tuple(item, now) for item in items]
    connection = session.connection()
    dialect = connection.dialect
    driver = connection.connection.driver_connection
    if dialect.name not in ("sqlite", "postgresql"):
        raise NotImplementedError(f"intake on {dialect.name}: only SQLite and PostgreSQL are supported")
    try:
        if dialect.name == "sqlite":
            return _insert_sqlite(driver, rows)
        return _insert_postgresql(driver, rows)
    except dialect.loaded_dbapi.Error as exc:
        # Callers handle SQLAlchemy's errors (451 to the sender, a reconnect...), as for any other statement.
        raise DBAPIError.instance(f"INSERT INTO {InboundMessage.__tablename__}", None, exc,
                                  dialect.loaded_dbapi.Error, dialect=dialect) from exc


def _insert_sqlite(driver: Any, rows: list[tuple[object, ...]]) -> int:
    sql = (f"INSERT INTO {InboundMessage.__tablename__} ({', '.join(COLUMNS)}) "
           f"VALUES ({', '.join('?' * len(COLUMNS))}) ON CONFLICT DO NOTHING")
    cursor = driver.cursor()
    try:
        # sqlite3 sums rowcount over the batch; a skipped duplicate counts 0.
        cursor.executemany(sql, [_sqlite_row(row) for row in rows])
        return max(cursor.rowcount, 0)
    finally:
        cursor.close()


#: PostgreSQL types of the per-row columns, in the order of :data:`COLUMNS` (the last four are per batch).
_PG_TYPES = ("text", "text", "integer", "bigint", "bigint", "text", "jsonb", "bytea", "integer", "text", "text")


def _insert_postgresql(driver: Any, rows: list[tuple[object, ...]]) -> int:
    # One statement for the batch: each column goes as one array (in binary, so the messages are not
    # escaped to text) and unnest() turns them back into rows.  Duplicates within the batch and
    # against the table are skipped alike by ON CONFLICT DO NOTHING; rowcount counts the new rows.
    per_row = len(_PG_TYPES)
    names = ", ".join(COLUMNS[:per_row])
    arrays = ", ".join(f"%b::{kind}[]" for kind in _PG_TYPES)
    sql = (f"INSERT INTO {InboundMessage.__tablename__} ({', '.join(COLUMNS)}) "
           f"SELECT {names}, %b, %b, %b, %b FROM unnest({arrays}) AS t({names}) ON CONFLICT DO NOTHING")
    from psycopg.types.json import Jsonb

    columns: list[list[object]] = [list(values) for values in zip(*(row[:per_row] for row in rows))]
    columns[_ENVELOPE_TO] = [Jsonb(value) for value in columns[_ENVELOPE_TO]]
    received_at, state, attempts, updated_at = rows[0][per_row:]
    with driver.cursor() as cursor:
        cursor.execute(sql, [received_at, state, attempts, updated_at, *columns])
        return max(cursor.rowcount, 0)


_ENVELOPE_TO = COLUMNS.index("envelope_to")
_TIMESTAMPS = (COLUMNS.index("received_at"), COLUMNS.index("updated_at"))


def _sqlite_row(row: tuple[object, ...]) -> tuple[object, ...]:
    """``row`` as SQLAlchemy stores it in SQLite: JSON text, naive UTC timestamps as text."""
    values = list(row)
    values[_ENVELOPE_TO] = json.dumps(values[_ENVELOPE_TO])
    for i in _TIMESTAMPS:
        moment = values[i]
        assert isinstance(moment, dt.datetime)
        values[i] = moment.astimezone(dt.timezone.utc).replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")
    return tuple(values)


def _postgresql_row(row: tuple[object, ...]) -> tuple[object, ...]:
    """``row`` for psycopg: the envelope as JSONB; aware timestamps and bytes pass as they are."""
    from psycopg.types.json import Jsonb

    values = list(row)
    values[_ENVELOPE_TO] = Jsonb(values[_ENVELOPE_TO])
    return tuple(values)
