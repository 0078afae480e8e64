"""``acedesk run`` as an operator runs it: a real process, real signals,
systemd notifications, mail in through SMTP, a clean exit on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import queue
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from sqlalchemy import select

from daemon.app import Supervisor
from daemon.config import config_from_dict
from daemon.context import AppContext
from models.core import InboundMessage
from models.migrate import upgrade
from models.session import make_engine, make_sessionmaker
from tests.servers import free_port, wait_for_port

REPO = Path(__file__).parents[1]


def write_config(tmp_path: Path, port: int) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(f"""
[database]
url = "sqlite:///{tmp_path}/acedesk.db"
[daemon]
state_dir = "{tmp_path}/var"
shutdown_timeout = 5.0
[ingress]
port = {port}
[pipeline]
poll_interval = 0.2
[outbound]
spool_dir = "{tmp_path}/spool"
""")
    return path


def acedesk(*args: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "daemon.cli.main", *args], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=120, **kw)


def test_run_refuses_an_unmigrated_database_with_the_fix(tmp_path):
    cfg = write_config(tmp_path, free_port())
    result = acedesk("--config", str(cfg), "run")
    assert result.returncode == 2
    assert "acedesk db upgrade" in result.stderr and "Traceback" not in result.stderr


def test_sigterm_while_the_daemon_starts_is_a_clean_stop(tmp_path):
    """systemd may stop a service that is still starting: that is a drain and exit 0, not death by signal."""
    cfg = write_config(tmp_path, free_port())
    assert acedesk("--config", str(cfg), "db", "upgrade").returncode == 0
    proc = subprocess.Popen([sys.executable, "-m", "daemon.cli.main", "--config", str(cfg), "run"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # The database lock is taken early in start-up, before the model and the workers are loaded.
        lock = tmp_path / "acedesk.db.lock"
        deadline = time.monotonic() + 30
        while not lock.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    output = proc.communicate()[0]
    assert "SIGTERM received: draining" in output and "acedesk stopped" in output, output[-2000:]


def test_daemon_ingests_smtp_mail_notifies_systemd_and_exits_0_on_sigterm(tmp_path):
    port = free_port()
    cfg = write_config(tmp_path, port)
    assert acedesk("--config", str(cfg), "db", "upgrade").returncode == 0
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify_path = str(tmp_path / "notify.sock")
    notify.bind(notify_path)
    env = {**os.environ, "NOTIFY_SOCKET": notify_path, "ACEDESK_CONFIG": str(cfg),
           "WATCHDOG_USEC": "400000"}  # systemd's WatchdogSec=0.4: pings every 0.2 s
    proc = subprocess.Popen([sys.executable, "-m", "daemon.cli.main", "run"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # Read the socket as systemd does, all the time: the daemon drops what a full queue cannot take.
    received: queue.Queue[bytes] = queue.Queue()
    reader = threading.Thread(target=_read_datagrams, args=(notify, received), daemon=True)
    reader.start()
    try:
        assert b"READY=1" in received.get(timeout=20)
        assert b"WATCHDOG=1" in received.get(timeout=20)
        wait_for_port(port)
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
            smtp.sendmail("jo@broker.example", ["helpdesk@ace-support.example"],
                          b"From: jo@broker.example\r\nSubject: hello\r\nMessage-ID: <d1@broker.example>\r\n\r\n"
                          b"My entry summary was rejected.\r\n")
        engine = make_engine(f"sqlite:///{tmp_path}/acedesk.db")
        sessions = make_sessionmaker(engine)
        # The worker processes load the model first: on a loaded machine that takes a while.
        deadline = time.monotonic() + 90
        state = None
        while time.monotonic() < deadline:
            with sessions() as s:
                row = s.scalars(select(InboundMessage)).first()
            state = row.state if row else None
            if state not in (None, "new"):
                break
            time.sleep(0.1)
        engine.dispose()
        assert state not in (None, "new"), "the pipeline did not pick the message up"
        proc.send_signal(signal.SIGHUP)  # reload: must not stop the daemon
        # systemd's reload protocol: RELOADING=1, then READY=1 once templates and models are reloaded.
        assert _next_with(received, b"RELOADING=1")
        assert _next_with(received, b"READY=1")
        assert proc.poll() is None
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        assert time.monotonic() - started < 8
        rest = b""
        while b"STOPPING=1" not in rest:
            rest += received.get(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
        output = proc.communicate()[0]
        notify.close()
    assert "Traceback" not in output, output
    assert "SIGHUP: reloading" in output, output


def _next_with(received: "queue.Queue[bytes]", field: bytes, timeout: float = 20) -> bytes:
    """Return the next notification carrying ``field`` (watchdog pings in between are skipped)."""
    deadline = time.monotonic() + timeout
    while True:
        datagram = received.get(timeout=max(0.1, deadline - time.monotonic()))
        if field in datagram.split(b"\n"):
            return datagram


def _read_datagrams(sock: socket.socket, into: queue.Queue) -> None:
    while True:
        try:
            into.put(sock.recv(4096))
        except OSError:  # closed at the end of the test
            return


class Crashy:
    name = "crashy"

    def __init__(self) -> None:
        self.runs = 0

    async def run(self, stop: asyncio.Event) -> None:
        self.runs += 1
        raise RuntimeError("boom")


class Steady:
    name = "steady"

    def __init__(self) -> None:
        self.ticks = 0

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.ticks += 1
            await asyncio.sleep(0.01)


def test_a_crashing_component_is_restarted_with_backoff_and_others_go_on(tmp_path):
    cfg = config_from_dict({"daemon": {"restart_backoff_min": 0.05, "restart_backoff_max": 0.2,
                                       "shutdown_timeout": 2.0}}, base_dir=str(tmp_path))
    engine = make_engine(f"sqlite:///{tmp_path}/x.db")
    upgrade(engine)
    ctx = AppContext(config=cfg, engine=engine, sessions=make_sessionmaker(engine), instance="t")
    crashy, steady = Crashy(), Steady()

    async def scenario() -> int:
        sup = Supervisor(ctx, [crashy, steady])
        asyncio.get_running_loop().call_later(1.0, sup.request_stop, "test")
        return await sup.run()

    assert asyncio.run(scenario()) == 0
    engine.dispose()
    assert 3 <= crashy.runs <= 12  # restarted, but backing off (not a busy loop)
    assert steady.ticks > 20
