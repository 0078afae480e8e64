"""Scale-out on PostgreSQL: three ``acedesk run`` instances on one database
share the pipeline and the delivery; nothing is handled twice; and after
SIGKILL of one instance (its worker too) in the middle of the work, and its
restart, nothing is lost and a reply arrives twice at most once per
connection of the killed instance."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

from daemon.intake.store import NewMessage, insert_messages
from models.core import DONE, InboundMessage
from models.migrate import upgrade
from models.outbox import SENT, OutboxMessage
from models.responders import ResponseRecord, TicketMessage
from models.session import make_engine, make_sessionmaker, transaction
from tests.servers import free_port, missing_service
from tests.test_exactly_once import _MSGID, message

MESSAGES = 600
INSTANCES = 3
CONNECTIONS = 2
PG_URL = os.environ.get("ACEDESK_TEST_DATABASE_URL", "")


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL schema (scale-out is a PostgreSQL feature: SQLite has one daemon)."""
    if not PG_URL:
        missing_service("PostgreSQL", "set ACEDESK_TEST_DATABASE_URL, e.g. "
                        "postgresql+psycopg://postgres@127.0.0.1:5432/test")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL, future=True)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"}) \
            .render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def write_config(tmp_path: Path, name: str, db_url: str, smtp_port: int) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(f"""
[database]
url = "{db_url}"
[daemon]
state_dir = "{tmp_path / name}"
shutdown_timeout = 5.0
[ingress]
enabled = false
port = {free_port()}
[pipeline]
batch_size = 25
poll_interval = 0.2
processes = 1
[outbound]
relay_host = "127.0.0.1"
relay_port = {smtp_port}
connections = {CONNECTIONS}
retry_min = 0.2
retry_max = 1.0
[csms]
http_host = ""
secret_env = "ACEDESK_TEST_SECRET"
[responders]
autoreply_max = 1000000
secret_env = "ACEDESK_TEST_SECRET"
[imap]
mailboxes = []
""")
    return path


def start(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        # Its own process group: the SIGKILL below takes the instance and its worker at once.
        # One signing secret for every instance (required on PostgreSQL: links are signed alike).
        env = {**os.environ, "ACEDESK_TEST_SECRET": "scale-out-test-secret-0123456789"}
        return subprocess.Popen([sys.executable, "-m", "daemon.cli.main", "--config", str(config), "run"],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env)


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def decisions(log: Path) -> int:
    return len(re.findall(r"acedesk\.respond\[w0\]: message \d+", log.read_text(errors="replace")))


def test_three_instances_share_the_work_and_a_killed_one_loses_nothing(pg_url, tmp_path, smtp_capture):
    engine = make_engine(pg_url)
    upgrade(engine)
    sessions = make_sessionmaker(engine)
    logs = [tmp_path / f"instance{i}.log" for i in range(INSTANCES)]
    daemons = [start(write_config(tmp_path, f"instance{i}", pg_url, smtp_capture.port), logs[i])
               for i in range(INSTANCES)]
    try:
        def started() -> bool:
            for daemon, log in zip(daemons, logs):
                assert daemon.poll() is None, log.read_text(errors="replace")[-2000:]
            return all("classify[w0]: classifier model" in log.read_text(errors="replace") for log in logs)

        wait_until(started, 90, "every instance's worker to load the model")
        with transaction(sessions) as s:
            insert_messages(s, [NewMessage("helpdesk@ace-support.example", "cli", message(n))
                                for n in range(MESSAGES)])
        # Given three instances that all took batches,
        wait_until(lambda: all(decisions(log) for log in logs), 60, "every instance to take batches")
        # when one is killed (SIGKILL, its worker too) in the middle of the work,
        os.killpg(daemons[0].pid, signal.SIGKILL)
        daemons[0].wait(10)
        # and started again, as systemd's Restart= does (it takes its own delivery journal over at once;
        # the others would take its leased replies when the lease expires),
        daemons[0] = start(write_config(tmp_path, "instance0", pg_url, smtp_capture.port), logs[0])

        def finished() -> bool:
            with sessions() as s:
                done = s.scalar(select(func.count()).select_from(InboundMessage)
                                .where(InboundMessage.state == DONE))
                queued = s.scalar(select(func.count()).select_from(OutboxMessage))
                sent = s.scalar(select(func.count()).select_from(OutboxMessage).where(OutboxMessage.status == SENT))
            return done == MESSAGES and queued == sent

        wait_until(finished, 90, "the instances to finish the work")
        wait_until(lambda: logs[0].read_text(errors="replace").count("acedesk running") == 2, 60,
                   "the restarted instance to be up (it answers SIGTERM from then on)")
    finally:
        for daemon in daemons:
            daemon.send_signal(signal.SIGTERM)
        for daemon in daemons:
            assert daemon.wait(20) == 0
    # then every message was handled exactly once,
    with sessions() as s:
        decided = s.scalar(select(func.count(func.distinct(ResponseRecord.inbound_message_id))))
        ticketed = Counter(s.scalars(select(TicketMessage.inbound_message_id).where(TicketMessage.direction == "in")))
        expected = set(s.scalars(select(OutboxMessage.message_id)))
    engine.dispose()
    # (one decision record each: the column is unique, so a second decision could not have committed)
    assert decided == MESSAGES and set(ticketed.values()) == {1}
    # every reply arrived, twice at most once per connection of the killed instance,
    arrived = Counter(_MSGID.search(c.data).group(1) for c in smtp_capture.messages)  # type: ignore[union-attr]
    assert set(arrived) == {m.encode() for m in expected}
    assert sum(n - 1 for n in arrived.values()) <= CONNECTIONS
    # and each instance did a share of the work.
    assert all(decisions(log) > 0 for log in logs)
    for log in logs:
        assert "Traceback" not in log.read_text(errors="replace"), log.read_text(errors="replace")[-3000:]
