"""Exactly one reply, measured on a real daemon: ``acedesk run`` is killed with
SIGKILL at random moments while it works through 1,200 messages, and started
again each time.  Nothing is lost, every reply arrives, and a reply arrives
twice at most once per connection per kill.  And a second ``acedesk run`` on
the same SQLite database refuses to start, in one line naming the first."""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from daemon.intake.store import NewMessage, insert_messages
from models.core import DONE, InboundMessage
from models.migrate import upgrade
from models.outbox import SENT, OutboxMessage
from models.responders import ResponseRecord
from models.session import make_engine, make_sessionmaker, transaction
from responders.users import parse_users_csv, upsert_users
from tests.servers import SmtpCapture, free_port

MESSAGES = 1200
KILLS = 6
CONNECTIONS = 4
USERS = 300
TRUSTED = "mx.ace-support.example"
_MSGID = re.compile(rb"^Message-ID:\s*(<[^>]+>)", re.MULTILINE | re.IGNORECASE)


def users_csv() -> str:
    lines = ["user_id,email,name,role,identifier,account_owner_email,language"]
    lines += [f"U{i:04d},user{i}@importer{i % 20}.example,Trade User {i},importer,,owner{i % 20}@importer{i % 20}"
              f".example,en" for i in range(USERS)]
    return "\n".join(lines) + "\n"


def message(n: int) -> bytes:
    u = n % USERS
    domain = f"importer{u % 20}.example"
    subject, body = [("Forgot my ACE password", "I forgot my ACE Portal password and need to reset it."),
                     ("Locked out of ACE", "My ACE portal account is locked after too many attempts."),
                     ("ACE is down", "ACE is very slow and our transactions are not processing.")][n % 3]
    return (f"Authentication-Results: {TRUSTED}; dkim=pass header.d={domain}; dmarc=pass header.from={domain}\r\n"
            f"From: Trade User {u} <user{u}@{domain}>\r\nTo: helpdesk@ace-support.example\r\n"
            f"Subject: {subject}\r\nDate: Sun, 22 Nov 2026 08:00:00 +0000\r\nMessage-ID: <{n}.kill@{domain}>\r\n"
            f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHello,\r\n\r\n{body}\r\n"
            f"\r\nRegards,\r\nTrade User {u}\r\n").encode()


def write_config(tmp_path: Path, smtp_port: int) -> Path:
    path = tmp_path / "acedesk.toml"
    path.write_text(f"""
[database]
url = "sqlite:///{tmp_path / 'desk.db'}"
[daemon]
state_dir = "{tmp_path / 'var'}"
shutdown_timeout = 5.0
[ingress]
enabled = false
port = {free_port()}
[pipeline]
batch_size = 100
poll_interval = 0.1
[outbound]
relay_host = "127.0.0.1"
relay_port = {smtp_port}
connections = {CONNECTIONS}
retry_min = 0.2
retry_max = 1.0
[responders]
autoreply_max = 1000000
# 1,200 reports at once would open an outage incident (an on-call alert with no
# decision record of its own); this test counts replies, not incidents.
[incidents]
enabled = false
[imap]
mailboxes = []
""")
    return path


def start(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "daemon.cli.main", "--config", str(config), "run"],
                                stdout=out, stderr=subprocess.STDOUT)


def wait_running(daemon: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> None:
    """Return once ``daemon`` has logged that it runs (its instance name ends with its pid)."""
    mark = re.compile(rf"acedesk running \(.*\) as {re.escape(socket.gethostname())}:{daemon.pid}\b")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and daemon.poll() is None:
        if mark.search(log.read_text(errors="replace")):
            return
        time.sleep(0.05)
    raise AssertionError(f"the daemon did not start: {log.read_text(errors='replace')[-2000:]}")


@pytest.fixture
def prepared(tmp_path: Path, smtp_capture: SmtpCapture):
    config = write_config(tmp_path, smtp_capture.port)
    engine = make_engine(f"sqlite:///{tmp_path / 'desk.db'}")
    upgrade(engine)
    sessions = make_sessionmaker(engine)
    rows, errors = parse_users_csv(users_csv())
    assert not errors
    with transaction(sessions) as s:
        upsert_users(s, [r for _, r in rows])
        insert_messages(s, [NewMessage("helpdesk@ace-support.example", "cli", message(n)) for n in range(MESSAGES)])
    yield config, sessions
    engine.dispose()


def progress(sessions) -> tuple[int, int, int]:
    """(messages done, replies committed, replies marked sent)."""
    with sessions() as s:
        done = s.scalar(select(func.count()).select_from(InboundMessage).where(InboundMessage.state == DONE))
        queued = s.scalar(select(func.count()).select_from(OutboxMessage))
        sent = s.scalar(select(func.count()).select_from(OutboxMessage).where(OutboxMessage.status == SENT))
    return done or 0, queued or 0, sent or 0


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_nothing_and_resends_at_most_one_per_connection(
        prepared, smtp_capture: SmtpCapture, tmp_path: Path) -> None:
    config, sessions = prepared
    log = tmp_path / "daemon.log"
    rng = random.Random(os.environ.get("ACEDESK_KILL_SEED", str(time.time_ns())))
    kills = 0
    # Given a daemon killed with SIGKILL at random moments while it works, and started again each time,
    while kills < KILLS:
        before = len(smtp_capture.messages)
        daemon = start(config, log)
        # The kill points: random moments once it is delivering again (start-up is not the test).
        deadline = time.monotonic() + 20
        while len(smtp_capture.messages) == before and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.5))
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(10)
        kills += 1
        if progress(sessions)[2] >= MESSAGES:
            break   # finished before every kill was spent: the bound below still holds
    daemon = start(config, log)
    try:
        # The last one is stopped with SIGTERM only once it runs: a signal in the interpreter's own
        # start-up (before any of our code) is death by signal in any Python program.
        wait_running(daemon, log)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            done, queued, sent = progress(sessions)
            if done == MESSAGES and sent == queued:
                break
            time.sleep(0.2)
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(20) == 0, log.read_text(errors="replace")[-3000:]

    # Then every message was processed and every reply it earned was committed and marked sent,
    done, queued, sent = progress(sessions)
    assert done == MESSAGES, log.read_text(errors="replace")[-3000:]
    with sessions() as s:
        answered = s.scalar(select(func.count()).select_from(ResponseRecord)
                            .where(ResponseRecord.action != "drop"))
        expected = set(s.scalars(select(OutboxMessage.message_id)))
    assert queued == answered == sent > MESSAGES // 2
    # and arrived at the relay: none missing, duplicates at most one per connection per kill.
    arrived: dict[bytes, int] = {}
    for captured in smtp_capture.messages:
        found = _MSGID.search(captured.data)
        assert found, captured.data[:300]
        arrived[found.group(1)] = arrived.get(found.group(1), 0) + 1
    assert {m.encode() for m in expected} == set(arrived)
    duplicates = sum(n - 1 for n in arrived.values())
    print(f"{len(arrived)} replies, {kills} kills, {duplicates} duplicates")
    assert duplicates <= CONNECTIONS * kills, (duplicates, kills)


def test_a_second_daemon_on_one_sqlite_database_exits_in_one_line(prepared, tmp_path: Path) -> None:
    config, _ = prepared
    first = start(config, tmp_path / "first.log")
    try:
        lock = tmp_path / "desk.db.lock"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (lock.exists() and lock.read_text().strip()):
            time.sleep(0.05)
        second = subprocess.run([sys.executable, "-m", "daemon.cli.main", "--config", str(config), "run"],
                                capture_output=True, text=True, timeout=60)
        assert second.returncode != 0
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1, second.stderr
        assert f"pid {first.pid}" in lines[0] and "desk.db" in lines[0]
        assert first.poll() is None   # the first one runs on
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(20)


def test_a_restarted_daemon_takes_over_dead_processes_leases_at_once(prepared) -> None:
    import datetime as dt
    import socket

    from daemon.instance import release_dead_leases
    from models.core import Mailbox

    _, sessions = prepared
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    alive = f"{socket.gethostname()}:{os.getpid()}"
    until = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)
    # Given a mailbox leased for another hour by a process of this host that is gone, and one held by a live one,
    with transaction(sessions) as s:
        s.add(Mailbox(name="dead", last_uid=0, lease_owner=f"{socket.gethostname()}:{gone.pid}", lease_until=until))
        s.add(Mailbox(name="live", last_uid=0, lease_owner=alive, lease_until=until))
        s.add(Mailbox(name="elsewhere", last_uid=0, lease_owner="otherhost:1", lease_until=until))
    # when a daemon starts, the dead one's lease is free at once; the others are left to their owners.
    assert release_dead_leases(sessions) == 1
    with sessions() as s:
        owners = dict(s.execute(select(Mailbox.name, Mailbox.lease_owner)).all())
    assert owners == {"dead": None, "live": alive, "elsewhere": "otherhost:1"}
