"""SQLite writers in one process take turns (first come, first served), so a
busy pipeline cannot starve the outbox or the IMAP watcher of the write lock;
readers never queue behind writers."""

from __future__ import annotations

import threading
import time

from sqlalchemy import text

from models.session import WriterGate, make_engine, make_sessionmaker, transaction


def test_a_writer_that_comes_back_at_once_waits_behind_those_already_waiting(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'gate.db'}")
    sessions = make_sessionmaker(engine)
    with transaction(sessions) as s:
        s.execute(text("CREATE TABLE log (who TEXT)"))
    order: list[str] = []
    first_in = threading.Event()
    release = threading.Event()

    def greedy() -> None:
        with transaction(sessions) as s:
            s.execute(text("INSERT INTO log VALUES ('greedy-1')"))
            first_in.set()
            release.wait(5)
        order.append("greedy-1")
        with transaction(sessions) as s:  # straight back in, as the pipeline does batch after batch
            s.execute(text("INSERT INTO log VALUES ('greedy-2')"))
        order.append("greedy-2")

    def patient() -> None:
        with transaction(sessions) as s:
            s.execute(text("INSERT INTO log VALUES ('patient')"))
        order.append("patient")

    a = threading.Thread(target=greedy)
    a.start()
    assert first_in.wait(5)
    b = threading.Thread(target=patient)
    b.start()
    time.sleep(0.3)  # the patient writer is queued at the gate now
    release.set()
    a.join(10)
    b.join(10)
    with sessions() as s:
        rows = [r for (r,) in s.execute(text("SELECT who FROM log ORDER BY rowid"))]
    engine.dispose()
    assert rows == ["greedy-1", "patient", "greedy-2"]


def test_readers_do_not_wait_for_a_writer(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'read.db'}")
    sessions = make_sessionmaker(engine)
    with transaction(sessions) as s:
        s.execute(text("CREATE TABLE t (x INTEGER)"))
        s.execute(text("INSERT INTO t VALUES (1)"))
    with transaction(sessions) as writer:
        writer.execute(text("INSERT INTO t VALUES (2)"))  # holds the write lock
        started = time.monotonic()
        with sessions() as reader:  # a WAL snapshot: the committed row only, at once
            assert reader.execute(text("SELECT count(*) FROM t")).scalar() == 1
        assert time.monotonic() - started < 1.0
    engine.dispose()


def test_the_gate_is_reentrant_and_a_writer_that_gives_up_is_skipped():
    gate = WriterGate()
    assert gate.enter(1.0) and gate.enter(1.0)  # the same thread, nested
    gave_up: list[bool] = []
    waiter = threading.Thread(target=lambda: gave_up.append(gate.enter(0.1)))
    waiter.start()
    waiter.join(5)
    assert gave_up == [False]  # it goes on to SQLite's own lock instead of hanging
    gate.exit()
    gate.exit()
    admitted: list[bool] = []
    later = threading.Thread(target=lambda: admitted.append(gate.enter(1.0)))
    later.start()
    later.join(5)
    assert admitted == [True]  # the abandoned turn was skipped, not waited for
