"""The pipeline worker: concurrent workers share rows without overlap, and a
poison message is isolated, retried with backoff, then set aside as failed."""

from __future__ import annotations

import threading
from collections import Counter

from sqlalchemy import event, select

from daemon.config import PipelineConfig
from daemon.intake.store import NewMessage, insert_messages
from daemon.worker import Stage, drain, run_stage_once
from models.core import CLASSIFIED, DONE, FAILED, NEW, PARSED, InboundMessage
from models.session import transaction


def seed(sessions, count: int, poison: set[int] = frozenset()) -> None:
    items = [NewMessage("helpdesk@ace-support.example", "cli",
                        f"From: u{i}@example.com\r\nSubject: {'POISON' if i in poison else 'ok'} {i}\r\n\r\nx\r\n"
                        .encode()) for i in range(count)]
    with transaction(sessions) as s:
        insert_messages(s, items)


def test_concurrent_workers_process_each_message_exactly_once(sessions):
    seed(sessions, 300)
    seen: Counter[int] = Counter()
    lock = threading.Lock()

    def process(session, rows):
        with lock:
            seen.update(row.id for row in rows)
        for row in rows:
            row.state = DONE

    stage = Stage("count", NEW, process, needs_parsed=False, batch_size=7)
    cfg = PipelineConfig()

    def worker() -> None:
        while run_stage_once(sessions, stage, cfg):
            pass

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(seen) == 300 and set(seen.values()) == {1}
    with sessions() as s:
        assert set(s.scalars(select(InboundMessage.state))) == {DONE}


def test_poison_message_is_isolated_retried_and_failed(sessions):
    seed(sessions, 20, poison={5})

    def process(session, rows):
        for row in rows:
            if b"POISON" in row.raw:
                raise ValueError("cannot handle this one")
            row.state = DONE

    stage = Stage("picky", NEW, process, needs_raw=True, needs_parsed=False)
    cfg = PipelineConfig(max_attempts=3)
    drain(sessions, [stage], cfg)
    with sessions() as s:
        rows = {r.id: r for r in s.scalars(select(InboundMessage))}
    states = Counter(r.state for r in rows.values())
    assert states == {DONE: 19, NEW: 1}  # the others went on; the poison one waits for its retry
    poison = next(r for r in rows.values() if r.state == NEW)
    assert poison.attempts == 1 and "cannot handle this one" in poison.error and poison.next_attempt_at

    # Make its retries due at once, and run until it is given up on.
    for _ in range(3):
        with transaction(sessions) as s:
            s.get(InboundMessage, poison.id).next_attempt_at = None
        drain(sessions, [stage], cfg)
    with sessions() as s:
        final = s.get(InboundMessage, poison.id)
    assert final.state == FAILED and final.attempts == 3


def chained_stages(log: list[str]) -> list[Stage]:
    """Three stages with compute/apply splits, as daemon.pipeline builds them: new -> parsed ->
    classified -> done.  The second reads what the first set on the row; the third refuses POISON."""
    def first_compute(session, rows):
        return {row.id: row.raw.decode().split("Subject: ")[1].split("\r\n")[0] for row in rows}

    def first_apply(session, rows, subjects):
        for row in rows:
            row.label, row.state = subjects[row.id], PARSED

    def second_compute(session, rows):
        return {row.id: row.label.upper() for row in rows}  # the first stage's result, read off the row

    def second_apply(session, rows, shouted):
        for row in rows:
            row.model_version, row.state = shouted[row.id], CLASSIFIED

    def third_compute(session, rows):
        return {row.id: row.model_version for row in rows}

    def third_apply(session, rows, seen):
        log.append(f"apply {len(rows)}")
        for row in rows:
            if "POISON" in seen[row.id]:
                raise ValueError("cannot handle this one")
            row.state = DONE

    def process(compute, apply):
        return lambda session, rows: apply(session, rows, compute(session, rows))

    return [Stage("first", NEW, process(first_compute, first_apply), needs_raw=True, needs_parsed=False,
                  compute=first_compute, apply=first_apply, produces=(PARSED,)),
            Stage("second", PARSED, process(second_compute, second_apply), needs_parsed=False,
                  compute=second_compute, apply=second_apply, produces=(CLASSIFIED,)),
            Stage("third", CLASSIFIED, process(third_compute, third_apply), needs_parsed=False,
                  compute=third_compute, apply=third_apply, produces=(DONE,))]


def test_new_mail_goes_through_every_stage_in_one_commit(sessions):
    seed(sessions, 30)
    commits: list[int] = []  # commits of transactions that wrote something
    engine = sessions.kw["bind"]

    def wrote(conn, cursor, statement, *args) -> None:
        if statement.lstrip().upper().startswith(("UPDATE", "INSERT")):
            conn.info["wrote"] = True

    def count(conn) -> None:
        if conn.info.pop("wrote", False):
            commits.append(1)

    event.listen(engine, "before_cursor_execute", wrote)
    event.listen(engine, "commit", count)
    try:
        assert drain(sessions, chained_stages([]), PipelineConfig()) == 90  # 30 rows, 3 stages each
    finally:
        event.remove(engine, "before_cursor_execute", wrote)
        event.remove(engine, "commit", count)
    with sessions() as s:
        rows = list(s.scalars(select(InboundMessage)))
    assert {r.state for r in rows} == {DONE}
    assert all(r.label.startswith("ok ") and r.model_version == r.label.upper() for r in rows)
    assert len(commits) == 1  # one batch, one transaction: not one per stage


def test_a_fused_batch_that_raises_is_rolled_back_and_the_stages_isolate_the_poison(sessions):
    seed(sessions, 20, poison={5})
    log: list[str] = []
    drain(sessions, chained_stages(log), PipelineConfig(max_attempts=3))
    with sessions() as s:
        rows = list(s.scalars(select(InboundMessage)))
    assert Counter(r.state for r in rows) == {DONE: 19, CLASSIFIED: 1}
    poison = next(r for r in rows if r.state == CLASSIFIED)
    assert poison.model_version == "POISON 5" and poison.attempts == 1 and "cannot handle" in poison.error
    assert log[0] == "apply 20"  # the fused batch tried them all, then the third stage alone
