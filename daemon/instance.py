"""One daemon per SQLite database, and a successor's takeover of what a dead
predecessor held.

SQLite has one writer: two daemons on one file would only take turns at its
lock (and, before this, crash-loop their ingress).  ``acedesk run`` therefore
takes an exclusive ``flock`` on ``<database>.lock`` and writes its pid there;
a second one exits with one line naming the first one's pid.  The kernel
drops the lock when the holder dies, even by SIGKILL.  On PostgreSQL several
instances sharing one database remain the design, and no lock is taken.

A restarted daemon takes over at once what a dead process of this host held
(:func:`release_dead_leases`): mailbox leases and CSMS notice leases whose
owner is ``<this host>:<pid>`` with that pid gone.  (The outbox's claims come
back through its journal, :mod:`daemon.delivery.journal`.)
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from pathlib import Path
from typing import IO

from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session, sessionmaker

from daemon.runner import owner_is_dead
from models.core import Mailbox
from models.csms import Notice
from models.session import transaction

log = logging.getLogger("acedesk.instance")


class AlreadyRunning(Exception):
    """Another daemon holds this SQLite database."""


def lock_path(engine: Engine) -> Path | None:
    """Return the lock file of a SQLite database file, or None (PostgreSQL, in-memory)."""
    if engine.dialect.name != "sqlite":
        return None
    database = engine.url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database).with_name(Path(database).name + ".lock")


def hold_database(engine: Engine) -> IO[str] | None:
    """Take the one-daemon lock of a SQLite database; return the open lock file (keep it open).

    Raises:
        AlreadyRunning: another daemon holds it; the message names its pid.
    """
    path = lock_path(engine)
    if path is None:
        return None
    handle = open(path, "a+", encoding="ascii")  # noqa: SIM115 - held for the daemon's lifetime
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        pid = handle.read().strip() or "unknown"
        handle.close()
        raise AlreadyRunning(f"another acedesk daemon (pid {pid}) is running on {engine.url.database}; "
                             "one daemon per SQLite database") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def release_database(handle: IO[str] | None) -> None:
    if handle is not None:
        with contextlib.suppress(OSError):
            handle.close()


def release_dead_leases(sessions: sessionmaker[Session]) -> int:
    """Free the mailbox and notice leases of dead processes of this host; return how many."""
    freed = 0
    with transaction(sessions) as session:
        for model in (Mailbox, Notice):
            owners = session.scalars(select(model.lease_owner).where(model.lease_owner.is_not(None)).distinct())
            dead = [owner for owner in owners if owner_is_dead(owner)]
            if dead:
                result = session.execute(update(model).where(model.lease_owner.in_(dead))
                                         .values(lease_owner=None, lease_until=None)
                                         .execution_options(synchronize_session=False))
                count = int(result.rowcount)  # type: ignore[attr-defined]  # an UPDATE's CursorResult
                freed += count
                log.info("took over %d %s lease(s) of %s (process gone)", count, model.__tablename__,
                         ", ".join(o for o in dead if o))
    return freed
