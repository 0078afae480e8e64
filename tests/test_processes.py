"""The pipeline in worker processes: the work is shared, every message is
handled once, a killed worker is replaced and its batch is done by someone,
and SIGHUP reloads the model in every worker."""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import time
from collections import Counter

from sqlalchemy import func, select

from classifiers.store import SHIPPED_DIR, model_files
from daemon.context import make_context
from daemon.intake.store import NewMessage, insert_messages
from daemon.processes import WorkerProcesses
from models.core import DONE, InboundMessage
from models.migrate import upgrade
from models.outbox import OutboxMessage
from models.responders import ResponseRecord, TicketMessage
from models.session import transaction
from tests.servers import BackgroundComponent

MESSAGES = 300


def mail(n: int) -> bytes:
    subject, body = [("Forgot my ACE password", "I forgot my ACE Portal password and need to reset it."),
                     ("AESDirect error", "We get an AES error when we submit the EEI in AESDirect."),
                     ("Reembolso por ACH", "¿Cómo nos inscribimos para reembolsos por ACH en el Portal ACE?")][n % 3]
    return (f"From: Trade User {n} <user{n}@importer{n % 7}.example>\r\nTo: helpdesk@ace-support.example\r\n"
            f"Subject: {subject}\r\nMessage-ID: <{n}.proc@importer.example>\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
            f"Hello,\r\n\r\n{body}\r\n\r\nRegards,\r\nUser {n}\r\n").encode()


def store(ctx, count: int) -> None:
    with transaction(ctx.sessions) as s:
        insert_messages(s, [NewMessage(desk="helpdesk@ace-support.example", source="cli", raw=mail(n))
                            for n in range(count)])


def done_count(ctx) -> int:
    with ctx.sessions() as s:
        return s.scalar(select(func.count()).select_from(InboundMessage).where(InboundMessage.state == DONE)) or 0


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def handled_by(output: str) -> Counter[str]:
    """Return how many decisions each worker logged (``acedesk.respond[wN]: message ...``)."""
    return Counter(re.findall(r"acedesk\.respond\[(w\d)\]: message \d+", output))


def test_workers_share_the_pipeline_a_killed_worker_is_replaced_and_sighup_reloads_each(
        sqlite_url, tmp_path, config_factory, capfd, caplog):
    # SQLite: the workers split the rows by id; PostgreSQL's SKIP LOCKED is shown by tests/test_scaleout.py.
    caplog.set_level(logging.INFO)  # the workers log at the main process's level
    models = tmp_path / "models"
    models.mkdir()
    shipped = model_files(SHIPPED_DIR)[-1]
    shutil.copy(shipped, models / shipped.name)
    config = config_factory(sqlite_url, pipeline={"processes": 2, "batch_size": 20, "poll_interval": 0.2},
                            responders={"autoreply_max": 1000}, classifier={"model_dir": str(models)})
    ctx = make_context(config)
    upgrade(ctx.engine)
    workers = WorkerProcesses(ctx)
    running = BackgroundComponent(workers).start()
    output = ""

    def logged(text: str, count: int) -> bool:
        nonlocal output
        output += capfd.readouterr().err
        return len(re.findall(text, output)) >= count

    try:
        wait_until(lambda: all(w.ready.is_set() for w in workers.workers), 60, "both workers to report ready")
        assert logged(r"classify\[w0\]: classifier model", 1) and logged(r"classify\[w1\]: classifier model", 1)
        store(ctx, MESSAGES)
        wait_until(lambda: logged(r"respond\[w0\]: message", 1) and logged(r"respond\[w1\]: message", 1), 60,
                   "both workers to take batches")
        victim = workers.workers[0].process.pid
        os.kill(victim, signal.SIGKILL)  # mid-work: it holds a claimed batch
        wait_until(lambda: done_count(ctx) == MESSAGES, 60, "every message to be done")
        wait_until(lambda: workers.workers[0].restarts == 1 and workers.workers[0].process.is_alive(), 30,
                   "the killed worker to be replaced")
        assert workers.workers[0].process.pid != victim
        wait_until(lambda: logged(r"acedesk\.classify\[w0\]: classifier model", 2), 30,
                   "the new worker to load the model")
        newer = shipped.name.replace("-2026", "-2099")  # a newer version sorts last
        shutil.copy(shipped, models / newer)
        for hook in ctx.reload_hooks:  # what the supervisor runs on SIGHUP
            hook()
        wait_until(lambda: logged(r"classifier\[w\d\]: classifier model \S+ loaded \(was", 2), 30,
                   "both workers to reload the model")
    finally:
        running.stop(30)
        ctx.dispose()
    with ctx.sessions() as s:
        decided = s.scalar(select(func.count(func.distinct(ResponseRecord.inbound_message_id))))
        per_message = Counter(s.scalars(select(TicketMessage.inbound_message_id)
                                        .where(TicketMessage.direction == "in")))
        replies = s.scalar(select(func.count()).select_from(OutboxMessage)) or 0
    assert decided == MESSAGES and set(per_message.values()) == {1}, "a message was lost or handled twice"
    assert replies <= MESSAGES
    output += capfd.readouterr().err
    assert set(re.findall(r"classifier\[(w\d)\]: classifier model \S+ loaded \(was", output)) == {"w0", "w1"}
    assert f"pipeline worker 0 (pid {victim}) died (exit SIGKILL)" in caplog.text
    shares = handled_by(output)
    assert shares["w0"] > 0 and shares["w1"] > 0, shares
    assert "Traceback" not in output
