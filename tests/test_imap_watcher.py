"""The IMAP watcher against a real private Dovecot: batch ingest, IDLE latency,
crashes and restarts, server restarts, UIDVALIDITY changes, polling without
IDLE or MOVE, the one-watcher-per-mailbox lease, and STARTTLS refusal; and the
second connection that moves a backlog while the first fetches (the mover):
its connection dropped, a commit that fails, a server that allows one
connection, a stop in the middle, TLS."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from daemon.imap import mover, protocol, watcher as imap_watcher
from daemon.context import AppContext
from daemon.imap.watcher import ImapWatcher, LeaseLost, TlsRefused, make_components
from models.core import InboundMessage, Mailbox
from models.migrate import upgrade
from models.session import make_engine, make_sessionmaker
from tests.servers import BackgroundComponent, Dovecot, find_dovecot, free_port, missing_service

PROCESSED = "acedesk/processed"


# --- helpers ---------------------------------------------------------------------------


def message(n: int, tag: str = "") -> bytes:
    """Return a realistic help-desk message of about 2 KB, unique per ``n`` and ``tag``."""
    body = (f"Hello ACE help desk,\r\n\r\nMy ACE portal account (UserID TRADER{n:05d}) is locked "
            "after three attempts. Our filer code is ABC and the entry is pending release.\r\n"
            + "Please advise how to reset the password before the cut-off. " * 25
            + f"\r\n\r\nRegards,\r\nImporter {n} {tag}\r\n")
    return (f"From: Importer {n} <importer{n}@trade.example>\r\n"
            "To: helpdesk@ace-support.example\r\n"
            f"Subject: ACE account locked ({n})\r\n"
            "Date: Sun, 22 Nov 2026 08:00:00 +0000\r\n"
            f"Message-ID: <{n}.{tag}@trade.example>\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + body).encode()


def append(dovecot: Dovecot, user: str, messages: list[bytes], folder: str = "INBOX") -> None:
    client = dovecot.client(user)
    try:
        if client.has_capability("MULTIAPPEND"):
            for start in range(0, len(messages), 100):
                client.multiappend(folder, messages[start:start + 100])
        else:
            for raw in messages:
                client.append(folder, raw)
    finally:
        client.logout()


def count(dovecot: Dovecot, user: str, folder: str) -> int:
    client = dovecot.client(user)
    try:
        if not client.folder_exists(folder):
            return 0
        return int(client.folder_status(folder, [b"MESSAGES"])[b"MESSAGES"])
    finally:
        client.logout()


def rows(sessions: sessionmaker[Session]) -> list[InboundMessage]:
    with sessions() as session:
        return list(session.scalars(select(InboundMessage).order_by(InboundMessage.id)))


def row_count(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        return session.scalar(select(func.count()).select_from(InboundMessage)) or 0


def log_lines(server: Dovecot) -> list[str]:
    return (server.root / "log" / "dovecot.log").read_text(errors="replace").splitlines()


def wait_until(condition: Callable[[], bool], timeout: float = 10.0, every: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(every)
    return condition()


def digests(dovecot: Dovecot, user: str, folder: str) -> list[str]:
    """Return the sha256 of every message in ``folder``."""
    client = dovecot.client(user)
    try:
        client.select_folder(folder, readonly=True)
        uids = client.search(["ALL"])
        found = client.fetch(uids, [b"BODY.PEEK[]"]) if uids else {}
        return [hashlib.sha256(data[b"BODY[]"]).hexdigest() for data in found.values()]
    finally:
        client.logout()


def stored_digests(sessions: sessionmaker[Session]) -> set[str]:
    return {r.sha256 for r in rows(sessions)}


def newest_session_pid(dovecot: Dovecot, user: str, sessions: int) -> int:
    """Return the pid of ``user``'s most recent IMAP session, once it has ``sessions`` of them."""
    def pids() -> list[int]:
        listing = dovecot.doveadm("who", "-1", user).splitlines()[1:]
        return [int(line.split()[2]) for line in listing if line.split()[:2] == [user, "imap"]]

    assert wait_until(lambda: len(pids()) == sessions, 60), pids()

    def started(pid: int) -> int:  # /proc/PID/stat field 22: start time, immune to pid reuse order
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])

    return max(pids(), key=started)


def assert_each_once(sessions: sessionmaker[Session], expected: list[bytes]) -> None:
    """Every expected message is stored exactly once, byte for byte, and nothing else."""
    stored = rows(sessions)
    digests = [r.sha256 for r in stored]
    assert len(digests) == len(set(digests)), "a message was stored twice"
    assert sorted(digests) == sorted(hashlib.sha256(raw).hexdigest() for raw in expected)


# --- fixtures --------------------------------------------------------------------------


@pytest.fixture
def sqlite_engine(sqlite_url: str) -> Iterator[Engine]:
    eng = make_engine(sqlite_url)
    upgrade(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def password_file(tmp_path: Path, dovecot: Dovecot) -> Path:
    path = tmp_path / "imap.pw"
    path.write_text(dovecot.password + "\n")
    return path


@pytest.fixture
def make_watcher(config_factory: Any, password_file: Path) -> Iterator[Callable[..., ImapWatcher]]:
    """``make_watcher(server, user, engine, instance=..., **mailbox_settings)`` -> a watcher."""

    def build(server: Dovecot, user: str, engine: Engine, instance: str = "test-a",
              use_idle: bool = True, use_mover: bool = True, **settings: Any) -> ImapWatcher:
        mailbox = {"name": user, "host": "127.0.0.1", "port": server.port, "tls": "none",
                   "username": user, "password_file": str(password_file), "batch_size": 100,
                   "poll_interval": 0.3, "lease_seconds": 5.0, "command_timeout": 10.0, **settings}
        config = config_factory(engine.url.render_as_string(hide_password=False),
                                imap={"mailboxes": [mailbox]})
        ctx = AppContext(config=config, engine=engine, sessions=make_sessionmaker(engine), instance=instance)
        [watcher] = make_components(ctx)
        watcher.use_idle = use_idle
        watcher.use_mover = use_mover
        watcher.backoff_min, watcher.backoff_max = 0.2, 2.0
        return watcher

    yield build


@pytest.fixture
def running() -> Iterator[Callable[[ImapWatcher], BackgroundComponent]]:
    """Start watchers through their ``run(stop)`` in background loops; stop them all at the end."""
    started: list[BackgroundComponent] = []

    def start(watcher: ImapWatcher) -> BackgroundComponent:
        component = BackgroundComponent(watcher).start()
        started.append(component)
        return component

    yield start
    for component in started:
        component.stop(timeout=10)


@contextlib.contextmanager
def private_dovecot(prefix: str, extra_conf: str = "", setup: Callable[[Path], str] | None = None
                    ) -> Iterator[Dovecot]:
    """Start a Dovecot of our own (its own root and port), for settings the shared one must not get."""
    binary = find_dovecot()
    if binary is None:
        missing_service("Dovecot", "install it with 'apt-get install dovecot-imapd'")
    root = Path(tempfile.mkdtemp(prefix=f"acedesk-dovecot-{prefix}-"))
    try:
        if setup is not None:
            extra_conf += setup(root)
        server = Dovecot(root=root, port=free_port(), binary=binary, extra_conf=extra_conf)
        server.start()
        try:
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def bare_dovecot() -> Iterator[Dovecot]:
    """A Dovecot that offers neither IDLE nor MOVE (an older or minimal server)."""
    capabilities = ("IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE SORT THREAD=REFERENCES UNSELECT "
                    "CHILDREN NAMESPACE UIDPLUS LIST-EXTENDED I18NLEVEL=1 ESEARCH LITERAL+")
    with private_dovecot("bare", f"protocol imap {{\n  imap_capability = {capabilities}\n}}\n") as server:
        yield server


@pytest.fixture
def lonely_dovecot() -> Iterator[Dovecot]:
    """A Dovecot for failed logins: its auth penalty for 127.0.0.1 must not slow the other tests."""
    with private_dovecot("penalty") as server:
        yield server


@pytest.fixture(scope="module")
def tls_dovecot() -> Iterator[tuple[Dovecot, int, Path]]:
    """A Dovecot with a self-signed certificate: STARTTLS on ``port``, IMAPS on the second value;
    the third is the certificate (a CA file that trusts it)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        missing_service("openssl (for the TLS tests)", "install it with 'apt-get install openssl'")
    imaps = free_port()

    def certificate(root: Path) -> str:
        cert, key = root / "cert.pem", root / "key.pem"
        subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                        "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
                        "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                       check=True, capture_output=True, timeout=60)
        return (f"ssl = yes\nssl_cert = <{cert}\nssl_key = <{key}\n"
                f"service imap-login {{\n  inet_listener imaps {{\n    port = {imaps}\n  }}\n}}\n")

    with private_dovecot("tls", setup=certificate) as server:
        yield server, imaps, server.root / "cert.pem"


# --- tests -----------------------------------------------------------------------------


def test_ingests_a_batch_once_and_moves_it(dovecot: Dovecot, engine: Engine, sessions: sessionmaker[Session],
                                           make_watcher: Any, running: Any,
                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="acedesk.imap")
    user = dovecot.new_user("batch")
    sent = [message(i, user) for i in range(250)]
    append(dovecot, user, sent)
    watcher = make_watcher(dovecot, user, engine)

    running(watcher)

    assert wait_until(lambda: row_count(sessions) >= 250 and count(dovecot, user, "INBOX") == 0, 20)
    assert_each_once(sessions, sent)
    assert count(dovecot, user, PROCESSED) == 250
    stored = rows(sessions)
    assert sorted(r.uid for r in stored) == list(range(1, 251))
    assert {(r.source, r.desk, r.state) for r in stored} == {("imap", "helpdesk@ace-support.example", "new")}
    with sessions() as session:
        mailbox = session.scalars(select(Mailbox).where(Mailbox.name == user)).one()
    assert mailbox.last_uid == 250 and mailbox.uidvalidity == stored[0].uidvalidity
    assert {r.mailbox_id for r in stored} == {mailbox.id}
    assert (f"imap[{user}]: fetched 250 messages (uid 1-250), stored 250 new, moved to {PROCESSED}"
            in caplog.messages), caplog.messages
    assert watcher.ctx.wakeups["pipeline"].is_set(), "the pipeline was not woken"


def test_idle_wakes_up_fast_and_stops_promptly(dovecot: Dovecot, sqlite_engine: Engine, make_watcher: Any,
                                               running: Any) -> None:
    user = dovecot.new_user("idle")
    watcher = make_watcher(dovecot, user, sqlite_engine, poll_interval=3600.0)
    component = running(watcher)
    assert wait_until(lambda: watcher.status == "idle", 60)

    # The poll interval is an hour, so only IDLE can bring this message in within the wait.
    sent = message(1, user)
    started = time.monotonic()
    append(dovecot, user, [sent])
    assert wait_until(lambda: row_count(watcher.ctx.sessions) == 1, 60, every=0.005)
    print(f"IDLE wake-up latency: {(time.monotonic() - started) * 1000:.0f} ms")
    assert_each_once(watcher.ctx.sessions, [sent])

    # IDLE renews only every idle_timeout (10 minutes): a watcher that did not watch
    # its halt flag inside IDLE would hold the stop far longer than this bound.
    started = time.monotonic()
    component.stop(timeout=60)
    assert time.monotonic() - started < 30.0, "run() did not return promptly from IDLE"
    assert component.error is None
    with watcher.ctx.sessions() as session:
        assert session.scalars(select(Mailbox.lease_owner)).one() is None, "lease not released on stop"


@pytest.mark.parametrize("use_mover", [False, True], ids=["one-connection", "mover"])
def test_crash_between_commit_and_move_loses_nothing_and_stores_nothing_twice(
        dovecot: Dovecot, engine: Engine, sessions: sessionmaker[Session], make_watcher: Any,
        monkeypatch: pytest.MonkeyPatch, use_mover: bool) -> None:
    user = dovecot.new_user("crash")
    sent = [message(i, user) for i in range(400)]
    append(dovecot, user, sent)

    def crash(*args: Any) -> None:
        raise OSError("killed right after the commit")

    # Given a watcher that dies at its first move, on the fetch connection or the mover's,
    # after committing at least one batch of 100,
    with monkeypatch.context() as patch:
        patch.setattr(imap_watcher, "move_messages", crash)
        patch.setattr(mover, "move_messages", crash)
        patch.setattr(imap_watcher, "MOVE_BATCH", 100)
        patch.setattr(imap_watcher, "MAX_IN_FLIGHT", 1)
        with pytest.raises(OSError, match="killed right after the commit"):
            make_watcher(dovecot, user, engine, use_mover=use_mover).fetch_new()
    first = row_count(sessions)
    assert 100 <= first <= 400
    assert count(dovecot, user, "INBOX") == 400

    # when a fresh watcher starts,
    stored = make_watcher(dovecot, user, engine, use_mover=use_mover).fetch_new()

    # then every message is stored exactly once, and all of them are moved.
    assert stored == 400 - first
    assert_each_once(sessions, sent)
    assert count(dovecot, user, "INBOX") == 0
    assert count(dovecot, user, PROCESSED) == 400


@pytest.mark.parametrize("move_batch", [2000, 40], ids=["one-connection", "mover"])
def test_stop_mid_batch_then_restart(dovecot: Dovecot, sqlite_engine: Engine, make_watcher: Any,
                                     running: Any, monkeypatch: pytest.MonkeyPatch, move_batch: int) -> None:
    user = dovecot.new_user("restart")
    sent = [message(i, user) for i in range(300)]
    append(dovecot, user, sent)
    # Groups of 40 make the 300 a backlog for the mover (a second connection).
    monkeypatch.setattr(imap_watcher, "MOVE_BATCH", move_batch)
    first = make_watcher(dovecot, user, sqlite_engine, batch_size=20)
    sessions = first.ctx.sessions
    # A slow database (50 ms a commit), so that the stop surely lands in the middle.
    commit = imap_watcher.commit_batch

    def slow_commit(*args: Any) -> int:
        time.sleep(0.05)
        return commit(*args)

    monkeypatch.setattr(imap_watcher, "commit_batch", slow_commit)
    component = running(first)
    assert wait_until(lambda: row_count(sessions) > 60, 60, every=0.005)
    started = time.monotonic()
    component.stop(timeout=5)
    assert time.monotonic() - started < 2.0, "the stop waited for the backlog"
    assert component.error is None
    assert row_count(sessions) < 300, "the watcher finished before it was stopped; nothing was tested"
    assert count(dovecot, user, "INBOX") > 0
    assert set(digests(dovecot, user, PROCESSED)) <= stored_digests(sessions), "moved before stored"

    monkeypatch.setattr(imap_watcher, "commit_batch", commit)
    running(make_watcher(dovecot, user, sqlite_engine, batch_size=20))
    assert wait_until(lambda: count(dovecot, user, "INBOX") == 0 and row_count(sessions) == 300, 20)
    assert_each_once(sessions, sent)
    assert count(dovecot, user, PROCESSED) == 300


def test_server_restart_during_idle(dovecot: Dovecot, sqlite_engine: Engine, make_watcher: Any,
                                    running: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="acedesk.imap")
    user = dovecot.new_user("bounce")
    watcher = make_watcher(dovecot, user, sqlite_engine)
    running(watcher)
    before = message(1, user)
    append(dovecot, user, [before])
    # Generous: on a loaded machine the first session's sync and IDLE can take a while.
    assert wait_until(lambda: row_count(watcher.ctx.sessions) == 1 and watcher.status == "idle", 30)

    dovecot.crash_restart()

    after = message(2, user)
    append(dovecot, user, [after])
    assert wait_until(lambda: row_count(watcher.ctx.sessions) == 2, 15)
    assert_each_once(watcher.ctx.sessions, [before, after])
    assert wait_until(lambda: count(dovecot, user, "INBOX") == 0, 60)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"imap[{user}]: idling failed" in w and "reconnecting" in w for w in warnings), warnings


def test_uidvalidity_change_refetches_without_duplicates(
        dovecot: Dovecot, engine: Engine, sessions: sessionmaker[Session], make_watcher: Any,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    user = dovecot.new_user("uidv")
    first = [message(i, user) for i in range(3)]
    append(dovecot, user, first)
    # Stored, but left in INBOX (as if the watcher died before moving them).
    with monkeypatch.context() as patch:
        died = lambda *a: (_ for _ in ()).throw(OSError("died"))  # noqa: E731
        patch.setattr(imap_watcher, "move_messages", died)
        patch.setattr(mover, "move_messages", died)
        with pytest.raises(OSError):
            make_watcher(dovecot, user, engine).fetch_new()
    assert row_count(sessions) == 3

    # The server's UIDs change meaning (mailbox restored or recreated); two new messages arrive.
    dovecot.set_uidvalidity(user, "INBOX", 4242)
    later = [message(i, user) for i in range(3, 5)]
    append(dovecot, user, later)

    caplog.set_level(logging.WARNING, logger="acedesk.imap")
    assert make_watcher(dovecot, user, engine).fetch_new() == 2

    assert_each_once(sessions, first + later)
    assert count(dovecot, user, "INBOX") == 0
    assert count(dovecot, user, PROCESSED) == 5
    assert any("UIDVALIDITY of INBOX changed" in m and "4242" in m for m in caplog.messages), caplog.messages
    with sessions() as session:
        mailbox = session.scalars(select(Mailbox).where(Mailbox.name == user)).one()
    assert (mailbox.uidvalidity, mailbox.last_uid) == (4242, 5)


def test_polls_and_copies_when_server_lacks_idle_and_move(bare_dovecot: Dovecot, sqlite_engine: Engine,
                                                         make_watcher: Any, running: Any) -> None:
    user = bare_dovecot.new_user("bare")
    watcher = make_watcher(bare_dovecot, user, sqlite_engine)
    running(watcher)
    assert wait_until(lambda: watcher.status == "polling", 60)

    sent = [message(i, user) for i in range(5)]
    append(bare_dovecot, user, sent)

    assert wait_until(lambda: row_count(watcher.ctx.sessions) == 5, 60)
    assert wait_until(lambda: count(bare_dovecot, user, "INBOX") == 0, 60)
    assert_each_once(watcher.ctx.sessions, sent)
    assert count(bare_dovecot, user, PROCESSED) == 5


def test_polls_when_idle_is_disabled(dovecot: Dovecot, sqlite_engine: Engine, make_watcher: Any,
                                     running: Any) -> None:
    user = dovecot.new_user("noidle")
    watcher = make_watcher(dovecot, user, sqlite_engine, use_idle=False)
    running(watcher)
    assert wait_until(lambda: watcher.status == "polling", 60)
    sent = message(1, user)
    append(dovecot, user, [sent])
    assert wait_until(lambda: row_count(watcher.ctx.sessions) == 1, 60)
    assert_each_once(watcher.ctx.sessions, [sent])


def test_one_watcher_per_mailbox(dovecot: Dovecot, sqlite_engine: Engine, make_watcher: Any,
                                 running: Any) -> None:
    user = dovecot.new_user("lease")
    a = make_watcher(dovecot, user, sqlite_engine, instance="host-a:1")
    b = make_watcher(dovecot, user, sqlite_engine, instance="host-b:2")
    run_a = running(a)
    assert wait_until(lambda: a.status == "idle", 60)
    running(b)
    assert wait_until(lambda: b.status == "waiting for lease", 60)
    with pytest.raises(LeaseLost):
        make_watcher(dovecot, user, sqlite_engine, instance="host-c:3").fetch_new()

    sent = [message(i, user) for i in range(10)]
    append(dovecot, user, sent)
    assert wait_until(lambda: row_count(a.ctx.sessions) == 10, 60)
    assert b.status == "waiting for lease"

    # When the holder stops, the other instance takes over.
    run_a.stop(timeout=5)
    assert wait_until(lambda: b.status == "idle", 60)
    with a.ctx.sessions() as session:
        assert session.scalars(select(Mailbox.lease_owner)).one() == "host-b:2"
    more = message(10, user)
    append(dovecot, user, [more])
    assert wait_until(lambda: row_count(a.ctx.sessions) == 11, 60)
    assert_each_once(a.ctx.sessions, sent + [more])


def test_starttls_refused_by_plaintext_server_never_logs_in(dovecot: Dovecot, sqlite_engine: Engine,
                                                           make_watcher: Any) -> None:
    user = dovecot.new_user("tls")
    append(dovecot, user, [message(1, user)])
    seen = len(log_lines(dovecot))
    watcher = make_watcher(dovecot, user, sqlite_engine, tls="starttls")

    with pytest.raises(TlsRefused, match="does not offer STARTTLS; refusing to log in over plaintext"):
        watcher.fetch_new()

    # Dovecot records the connection as closed without any login attempt.
    assert wait_until(lambda: any("no auth attempts" in line for line in log_lines(dovecot)[seen:]), 60)
    assert not any(f"user=<{user}>" in line for line in log_lines(dovecot)[seen:])
    assert row_count(watcher.ctx.sessions) == 0
    assert count(dovecot, user, "INBOX") == 1


def test_bad_password_is_an_error_and_does_not_busy_loop(lonely_dovecot: Dovecot, sqlite_engine: Engine,
                                                        make_watcher: Any, running: Any, tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="acedesk.imap")
    dovecot = lonely_dovecot
    user = dovecot.new_user("badpw")
    wrong = tmp_path / "wrong.pw"
    wrong.write_text("not-the-password\n")
    watcher = make_watcher(dovecot, user, sqlite_engine, password_file=str(wrong))
    watcher.backoff_max = 60.0  # a back-off far longer than the stop's bound below
    component = running(watcher)

    # One readable ERROR line, then the long back-off (not a quick retry loop).
    assert wait_until(lambda: watcher.status == "backing off", 60)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1, errors
    assert f"imap[{user}]: connecting to 127.0.0.1:{dovecot.port} as {user}" in errors[0], errors
    assert "LoginError: [AUTHENTICATIONFAILED]" in errors[0], errors
    delay = float(re.search(r"retrying in ([\d.]+) s", errors[0]).group(1))  # type: ignore[union-attr]
    assert delay >= 0.75 * watcher.backoff_max - 0.5
    started = time.monotonic()
    component.stop(timeout=60)
    assert time.monotonic() - started < 10.0, "the stop waited for the back-off"


def test_starttls_checks_the_certificate_and_never_falls_back(tls_dovecot: tuple[Dovecot, int, Path],
                                                             sqlite_engine: Engine, make_watcher: Any) -> None:
    server, _, _ = tls_dovecot
    user = server.new_user("untrusted")
    append(server, user, [message(1, user)])
    seen = len(log_lines(server))
    watcher = make_watcher(server, user, sqlite_engine, tls="starttls")

    with pytest.raises(TlsRefused, match="certificate verify failed.*refusing to log in over plaintext"):
        watcher.fetch_new()

    # Dovecot saw the handshake rejected and no login attempt, in TLS or in plaintext.
    assert wait_until(lambda: any("unknown ca" in line and "no auth attempts" in line
                                  for line in log_lines(server)[seen:]), 5), log_lines(server)[seen:]
    assert not any(f"user=<{user}>" in line for line in log_lines(server)[seen:])
    assert row_count(watcher.ctx.sessions) == 0


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
def test_tls_with_a_trusted_certificate(tls_dovecot: tuple[Dovecot, int, Path], sqlite_engine: Engine,
                                        make_watcher: Any, running: Any, monkeypatch: pytest.MonkeyPatch,
                                        mode: str) -> None:
    server, imaps_port, cert = tls_dovecot
    user = server.new_user(mode)
    # A backlog of more than one move group: the mover opens a second connection.
    monkeypatch.setattr(imap_watcher, "MOVE_BATCH", 100)
    backlog = [message(i, user) for i in range(150)]
    append(server, user, backlog)
    port = imaps_port if mode == "implicit" else server.port
    watcher = make_watcher(server, user, sqlite_engine, tls=mode, port=port, ca_file=str(cert))
    running(watcher)
    assert wait_until(lambda: watcher.status == "idle", 60)

    sent = message(1000, user)
    append(server, user, [sent])

    assert wait_until(lambda: row_count(watcher.ctx.sessions) == 151, 60)
    assert_each_once(watcher.ctx.sessions, backlog + [sent])
    # Both of the watcher's connections (fetch and mover) logged in over TLS; the only
    # plaintext logins are the test's own two appends.
    logins = [line for line in log_lines(server) if f"Login: user=<{user}>" in line]
    over_tls = [line for line in logins if ", TLS," in line]
    assert len(over_tls) >= 2 and len(logins) - len(over_tls) == 2, logins


def test_hung_server_times_out_and_is_retried(dovecot: Dovecot, sqlite_engine: Engine, make_watcher: Any,
                                             running: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="acedesk.imap")
    # A server that accepts the TCP connection and never says a word.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        user = dovecot.new_user("hung")
        watcher = make_watcher(dovecot, user, sqlite_engine, port=port, command_timeout=0.5)
        watcher.backoff_max = 60.0  # reconnect waits grow far past the stop's bound below
        component = running(watcher)

        def warned() -> list[str]:
            return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]

        assert wait_until(lambda: len(warned()) >= 2, 60), warned()
        assert all(f"imap[{user}]: connecting to 127.0.0.1:{port}" in w and "timed out" in w
                   and "reconnecting in" in w for w in warned()), warned()
        started = time.monotonic()
        component.stop(timeout=60)
        assert time.monotonic() - started < 10.0, "the stop waited for the reconnect"


# --- the mover: a second connection moves a backlog while the first one fetches -------


def slow_commits(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """Make every batch commit take ``seconds`` longer (a busy database), so a session lasts."""
    commit = imap_watcher.commit_batch

    def slow_commit(*args: Any) -> int:
        time.sleep(seconds)
        return commit(*args)

    monkeypatch.setattr(imap_watcher, "commit_batch", slow_commit)


def test_mover_connection_killed_mid_session_loses_nothing(
        dovecot: Dovecot, sqlite_engine: Engine, make_watcher: Any, running: Any,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="acedesk.imap")
    user = dovecot.new_user("mover-killed")
    sent = [message(i, user) for i in range(1000)]
    append(dovecot, user, sent)
    # Groups of 200 make the 1,000 a backlog for the mover; slow commits keep the session going.
    monkeypatch.setattr(imap_watcher, "MOVE_BATCH", 200)
    slow_commits(monkeypatch, 0.03)
    watcher = make_watcher(dovecot, user, sqlite_engine)
    sessions = watcher.ctx.sessions
    running(watcher)

    # Once the mover has work, the server's process for that second connection dies.
    assert wait_until(lambda: row_count(sessions) >= 300, 60, every=0.005)
    os.kill(newest_session_pid(dovecot, user, sessions=2), signal.SIGKILL)

    # The session reconnects by itself; every message ends up stored once and moved once.
    assert wait_until(lambda: count(dovecot, user, "INBOX") == 0 and row_count(sessions) == 1000, 20)
    assert_each_once(sessions, sent)
    assert sorted(digests(dovecot, user, PROCESSED)) == sorted(stored_digests(sessions))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"imap[{user}]: moving uid" in w and "on the mover connection failed" in w
               and "reconnecting" in w for w in warnings), warnings


def poison_uids(engine: Engine, low: int, high: int) -> Callable[[], None]:
    """Make the database refuse to store UIDs ``low``..``high`` (a trigger); return how to undo it."""
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.execute(text(f"CREATE TRIGGER poison BEFORE INSERT ON inbound_messages "
                              f"WHEN NEW.uid BETWEEN {low} AND {high} "
                              "BEGIN SELECT RAISE(ABORT, 'disk full'); END"))
        else:
            conn.execute(text(f"CREATE FUNCTION poison() RETURNS trigger AS $$ BEGIN "
                              f"IF NEW.uid BETWEEN {low} AND {high} THEN RAISE EXCEPTION 'disk full'; "
                              "END IF; RETURN NEW; END $$ LANGUAGE plpgsql"))
            conn.execute(text("CREATE TRIGGER poison BEFORE INSERT ON inbound_messages "
                              "FOR EACH ROW EXECUTE FUNCTION poison()"))

    def undo() -> None:
        with engine.begin() as conn:
            conn.execute(text("DROP TRIGGER poison" if engine.dialect.name == "sqlite"
                              else "DROP TRIGGER poison ON inbound_messages"))

    return undo


def test_a_batch_that_fails_to_commit_stays_in_the_folder(
        dovecot: Dovecot, engine: Engine, sessions: sessionmaker[Session], make_watcher: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    user = dovecot.new_user("poison")
    sent = [message(i, user) for i in range(600)]
    append(dovecot, user, sent)
    monkeypatch.setattr(imap_watcher, "MOVE_BATCH", 100)
    # Given a database that fails the commit of the batch of UIDs 201-300 (and only that one),
    undo = poison_uids(engine, 201, 300)

    # a sync stops at that batch: nothing after it is stored either (the checkpoint
    # must not pass messages never stored), and nothing unstored is moved.
    with pytest.raises(SQLAlchemyError, match="disk full"):
        make_watcher(dovecot, user, engine).fetch_new()
    # (Batches fetched while the database is busy share a transaction, so the one that
    # fails may have taken some before 201 with it.)
    first = sorted(r.uid for r in rows(sessions))
    assert first == list(range(1, len(first) + 1)) and 100 <= len(first) <= 200, first
    assert set(digests(dovecot, user, PROCESSED)) <= stored_digests(sessions), "moved before stored"
    assert count(dovecot, user, "INBOX") + count(dovecot, user, PROCESSED) == 600

    # Once the database is fixed, the next run stores the rest and moves everything.
    undo()
    assert make_watcher(dovecot, user, engine).fetch_new() == 600 - len(first)
    assert_each_once(sessions, sent)
    assert count(dovecot, user, "INBOX") == 0
    assert count(dovecot, user, PROCESSED) == 600


def test_server_allowing_one_connection_moves_on_the_fetch_connection(
        sqlite_engine: Engine, make_watcher: Any, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="acedesk.imap")
    monkeypatch.setattr(imap_watcher, "MOVE_BATCH", 100)
    # (No 2 s delay on refused logins: this test is about the fallback, not the delay.)
    limit = "auth_failure_delay = 0\nprotocol imap {\n  mail_max_userip_connections = 1\n}\n"
    with private_dovecot("oneconn", limit) as server:
        user = server.new_user("oneconn")
        sent = [message(i, user) for i in range(250)]
        append(server, user, sent)

        assert make_watcher(server, user, sqlite_engine).fetch_new() == 250

        assert_each_once(make_sessionmaker(sqlite_engine), sent)
        assert count(server, user, "INBOX") == 0
        assert count(server, user, PROCESSED) == 250
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"imap[{user}]: cannot open a second connection to move messages" in w
               and "Maximum number of connections" in w for w in warnings), warnings


def test_mover_copies_and_expunges_when_server_lacks_move(bare_dovecot: Dovecot, sqlite_engine: Engine,
                                                         make_watcher: Any,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    user = bare_dovecot.new_user("bare-mover")
    sent = [message(i, user) for i in range(150)]
    append(bare_dovecot, user, sent)  # one APPEND each: no MULTIAPPEND either
    monkeypatch.setattr(imap_watcher, "MOVE_BATCH", 50)
    watcher = make_watcher(bare_dovecot, user, sqlite_engine, batch_size=25)

    assert watcher.fetch_new() == 150

    # COPY + \Deleted + UID EXPUNGE on the second connection: each message once, nowhere twice.
    assert_each_once(watcher.ctx.sessions, sent)
    assert count(bare_dovecot, user, "INBOX") == 0
    assert sorted(digests(bare_dovecot, user, PROCESSED)) == sorted(stored_digests(watcher.ctx.sessions))


def test_fetch_keeps_every_body_when_the_server_mixes_in_flag_updates(dovecot: Dovecot) -> None:
    user = dovecot.new_user("flags")
    sent = [message(i, user) for i in range(3)]
    append(dovecot, user, sent)
    watcher_side = dovecot.client(user)
    try:
        watcher_side.select_folder("INBOX")
        # Another mail client flags a message: Dovecot tells the watcher's session in the
        # middle of its next FETCH (an unsolicited "* 2 FETCH (FLAGS ...)").
        other = dovecot.client(user)
        other.select_folder("INBOX")
        other.add_flags([2], [b"\\Flagged"])
        other.logout()

        assert protocol.fetch_raw(watcher_side, [1, 2, 3]) == {1: sent[0], 2: sent[1], 3: sent[2]}
        assert protocol.fetch_raw(watcher_side, [3]) == {3: sent[2]}
    finally:
        watcher_side.logout()
