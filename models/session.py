"""Engines and transactions.

``make_engine`` gives an engine tuned for its backend (SQLite: WAL, a busy
timeout, foreign keys, and ``BEGIN IMMEDIATE`` for writers so that two
writers queue instead of failing on a lock upgrade; PostgreSQL: a pre-pinged
pool).  ``transaction`` is the one way code writes: commit on success, roll
back on any exception.  A session used without it only reads: on SQLite it
begins a deferred transaction, a WAL snapshot that neither waits for nor
holds the write lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker


#: Execution option that marks a connection as a writer (see :func:`transaction`).
WRITER = "acedesk_writer"


class DatabaseMissing(Exception):
    """The SQLite database file does not exist, and this command does not create one."""


def make_engine(url: str, *, echo: bool = False, pool_size: int = 5, base_dir: str | None = None,
                create: bool = True) -> Engine:
    """Return an engine for ``url``; a relative SQLite path is taken from ``base_dir``.

    With ``create=False`` a missing SQLite file (or its folder) is not created:
    :class:`DatabaseMissing` is raised instead.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed, echo=echo, base_dir=base_dir, create=create)
    return create_engine(
        parsed, echo=echo, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True,
        future=True,
    )


def _sqlite_engine(parsed: Any, *, echo: bool, base_dir: str | None, create: bool) -> Engine:
    database = parsed.database
    if database and database != ":memory:" and not database.startswith("file:"):
        path = Path(database)
        if not path.is_absolute() and base_dir:
            path = Path(base_dir) / path
        if not create and not path.exists():
            raise DatabaseMissing(f"no database at {path}: create it with 'acedesk db upgrade'")
        path.parent.mkdir(parents=True, exist_ok=True)
        parsed = parsed.set(database=str(path))
    engine = create_engine(
        parsed, echo=echo, future=True,
        connect_args={"check_same_thread": False, "timeout": 30},
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy, not pysqlite, decide when transactions begin.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # A writer takes the lock up front: a deferred transaction that reads
        # and then writes fails at once ("database is locked") when another
        # writer committed in between, instead of waiting.  Readers must not
        # take it: the fan-out's and the CLI's reads would queue behind every
        # pipeline batch and hold up the writers behind them.
        write = conn.get_execution_options().get(WRITER, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """Return the session factory used everywhere for ``engine``."""
    return sessionmaker(engine, expire_on_commit=False, future=True)


@contextlib.contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """Yield a session inside one transaction: commit on success, roll back on error."""
    engine = factory.kw["bind"]
    gate = _sqlite_gate(engine)
    admitted = gate.enter(GATE_TIMEOUT) if gate is not None else False
    # The processes' turn (worker processes share the database): once per outermost transaction.
    locked = gate.lock_processes(GATE_TIMEOUT) if gate is not None and admitted else False
    try:
        with factory(bind=_writer(engine)) as session:
            with session.begin():
                yield session
    finally:
        if locked:
            assert gate is not None
            gate.unlock_processes()
        if admitted:
            assert gate is not None
            gate.exit()


#: Seconds a writer waits for its turn at the gate before it goes on to
#: SQLite's own lock (and its busy timeout) anyway: the gate never hangs anyone.
GATE_TIMEOUT = 30.0

_GATES: weakref.WeakKeyDictionary[Engine, WriterGate] = weakref.WeakKeyDictionary()
_GATES_LOCK = threading.Lock()


def _sqlite_gate(engine: Engine) -> WriterGate | None:
    if engine.dialect.name != "sqlite":
        return None  # PostgreSQL writers do not share one lock
    with _GATES_LOCK:
        gate = _GATES.get(engine)
        if gate is None:
            database = engine.url.database or ""
            shared = database not in ("", ":memory:") and not database.startswith("file:")
            gate = _GATES[engine] = WriterGate(Path(database + ".writers") if shared else None)
        return gate


class WriterGate:
    """First come, first served admission of one process's SQLite writers.

    SQLite has one write lock, and its busy handler polls for it with growing
    sleeps: a thread that commits and begins again at once (the pipeline,
    batch after batch) takes it back before a waiting thread (the outbox
    marking replies sent, the IMAP watcher storing new mail) wakes up, so
    the waiter starves.  Queueing writers here in arrival order before they
    ask SQLite makes them take turns.  Re-entrant for the thread inside it.

    Across processes (the pipeline's worker processes and the main process)
    the admitted writer then takes an ``flock`` on ``<database>.writers``,
    polled every millisecond or two: the busy handler's sleeps (up to 100 ms
    each) left the lock idle while three processes waited for it, and the
    pipeline ran at less than half its speed.
    """

    def __init__(self, lock_path: Path | None = None) -> None:
        self._lock_path = lock_path
        self._lock_fd: int | None = None
        self._cond = threading.Condition()
        self._next_ticket = 0
        self._serving = 0
        self._abandoned: set[int] = set()
        self._owner: int | None = None
        self._depth = 0

    def enter(self, timeout: float) -> bool:
        """Wait for our turn; return whether we are admitted (False: gave up after ``timeout``)."""
        me = threading.get_ident()
        with self._cond:
            if self._owner == me:
                self._depth += 1
                return True
            ticket = self._next_ticket
            self._next_ticket += 1
            if not self._cond.wait_for(lambda: self._serving == ticket, timeout):
                self._abandoned.add(ticket)  # skipped when its turn comes
                return False
            self._owner, self._depth = me, 1
            return True

    def lock_processes(self, timeout: float) -> bool:
        """Take the processes' write turn for the outermost transaction; False when not taken
        (re-entered, no file to lock, or given up after ``timeout``: SQLite's own lock still rules)."""
        if self._lock_path is None or self._depth != 1:
            return False
        if self._lock_fd is None:
            try:
                self._lock_fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError:
                self._lock_path = None  # a read-only folder: SQLite's lock alone, as before
                return False
        deadline = time.monotonic() + timeout
        pause = 0.0002
        while True:
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(pause)
                pause = min(0.002, pause * 2)

    def unlock_processes(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def exit(self) -> None:
        """Leave, and let the next writer in."""
        with self._cond:
            self._depth -= 1
            if self._depth:
                return
            self._owner = None
            self._serving += 1
            while self._serving in self._abandoned:
                self._abandoned.discard(self._serving)
                self._serving += 1
            self._cond.notify_all()


def _writer(engine: Engine) -> Engine:
    """``engine`` with its connections marked as writers (a light view on the same pool)."""
    # A bind, not an option set on a connection procured up front: the
    # connection (and on SQLite the write lock) is still taken at the first
    # statement, as before.
    return engine.execution_options(**{WRITER: True})
