"""The pipeline worker: concurrent workers share rows without overlap, and a
poison message is isolated, retried with backoff, then set aside as failed."""

from __future__ import annotations

import threading
from collections import Counter

from sqlalchemy import select

from daemon.config import PipelineConfig
from daemon.intake.store import NewMessage, insert_messages
from daemon.worker import Stage, drain, run_stage_once
from models.core import DONE, FAILED, NEW, InboundMessage
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
