"""Real servers for the tests: a private Dovecot IMAP server and a capturing
aiosmtpd SMTP server, each on a free loopback port.

Under ``CI=true`` a missing Dovecot is a failure, never a skip.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout} s")


def missing_service(what: str, how: str) -> None:
    """Fail under CI, skip elsewhere, always saying what to install."""
    message = f"{what} is not available: {how}"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


# --- Dovecot ---------------------------------------------------------------------

DOVECOT_CONF = """\
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/log/dovecot.log
info_log_path = {root}/log/dovecot.log
instance_name = acedesk-test-{port}
listen = 127.0.0.1
protocols = imap
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
mail_location = maildir:{root}/mail/%u
first_valid_uid = {uid}
last_valid_uid = 0
mail_uid = {uid}
mail_gid = {gid}
default_login_user = {login_user}
default_internal_user = {login_user}
default_internal_group = {login_group}
passdb {{
  driver = static
  args = password={password}
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={root}/home/%u
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
  chroot =
}}
service anvil {{
  chroot =
}}
protocol imap {{
  mail_max_userip_connections = 200
  imap_idle_notify_interval = 1 secs
}}
# IDLE learns of new mail through inotify; when the mail user's inotify instances run out
# (fs.inotify.max_user_instances, 128, shared by every Dovecot on the machine as "mail"),
# Dovecot falls back to looking every mailbox_idle_check_interval: 30 s by default, longer
# than the tests wait.  One second keeps IDLE prompt on a busy machine.
mailbox_idle_check_interval = 1 secs
namespace inbox {{
  inbox = yes
  separator = /
}}
"""


def find_dovecot() -> str | None:
    return shutil.which("dovecot") or next(
        (p for p in ("/usr/sbin/dovecot", "/usr/local/sbin/dovecot") if os.path.exists(p)), None)


def _pid_in(pidfile: Path) -> int | None:
    """The process id written in ``pidfile``, or None while it is missing or still empty."""
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None


@dataclass
class Dovecot:
    """A private Dovecot: any user name logs in with ``password``; each test uses its own user."""

    root: Path
    port: int
    password: str = "secret"
    binary: str = "dovecot"
    proc_pid: int | None = None
    _counter: int = 0
    #: Extra settings appended to the config (e.g. ``imap_capability = ...`` to hide IDLE or MOVE).
    extra_conf: str = ""

    @property
    def conf(self) -> Path:
        return self.root / "dovecot.conf"

    def write_config(self) -> None:
        for sub in ("run", "state", "log", "mail", "home"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            import pwd
            mail = pwd.getpwnam("mail")
            uid, gid = mail.pw_uid, mail.pw_gid
            login_user, login_group = "dovenull", "dovecot"
            try:
                pwd.getpwnam("dovenull")
            except KeyError:
                login_user, login_group = "mail", "mail"
            for sub in ("mail", "home"):
                os.chown(self.root / sub, uid, gid)
        else:
            import grp
            import pwd
            uid, gid = os.geteuid(), os.getegid()
            login_user = pwd.getpwuid(uid).pw_name
            login_group = grp.getgrgid(gid).gr_name
        self.root.chmod(0o755)
        self.conf.write_text(DOVECOT_CONF.format(
            root=self.root, port=self.port, uid=uid, gid=gid, password=self.password,
            login_user=login_user, login_group=login_group) + self.extra_conf)

    def start(self) -> None:
        self.write_config()
        # Dovecot forks into the background: its output goes to a file, not a
        # pipe, or we would wait for the daemon to close the pipe forever.
        errors = self.root / "log" / "start.err"
        with open(errors, "wb") as err:
            result = subprocess.run([self.binary, "-c", str(self.conf)], stdin=subprocess.DEVNULL,
                                    stdout=err, stderr=err, timeout=30)
        if result.returncode != 0:
            raise RuntimeError(f"dovecot failed to start: {errors.read_text().strip()} {self.log_tail()}")
        deadline = time.monotonic() + 10
        pidfile = self.root / "run" / "master.pid"
        # Dovecot creates master.pid before it writes its number in it: wait for the number.
        while time.monotonic() < deadline and _pid_in(pidfile) is None:
            time.sleep(0.05)
        wait_for_port(self.port)
        pid = _pid_in(pidfile)
        if pid is None:
            raise RuntimeError(f"dovecot wrote no pid to {pidfile} {self.log_tail()}")
        self.proc_pid = pid

    def stop(self) -> None:
        if self.proc_pid is None:
            return
        try:
            os.kill(self.proc_pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(self.proc_pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        # The port must be free before a restart binds it again.
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    time.sleep(0.05)
            except OSError:
                break
        self.proc_pid = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def crash_restart(self) -> None:
        """Restart like a server reboot: the master and every session process die, connections drop.

        (A plain SIGTERM to the master leaves running ``imap`` sessions alive.)
        """
        sessions = self.session_pids()
        self.stop()
        for pid in sessions:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.start()

    def session_pids(self) -> list[int]:
        """Return the pids of this instance's processes (titled ``dovecot-<instance>/...``)."""
        title = f"dovecot-acedesk-test-{self.port}/".encode()
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if (entry / "cmdline").read_bytes().startswith(title):
                    pids.append(int(entry.name))
            except OSError:
                continue
        return pids

    def log_tail(self, lines: int = 20) -> str:
        path = self.root / "log" / "dovecot.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def new_user(self, prefix: str = "user") -> str:
        """Return a fresh user name: a mailbox no other test touches."""
        self._counter += 1
        return f"{prefix}{self._counter}-{os.getpid()}"

    def doveadm(self, *args: str) -> str:
        """Run ``doveadm`` against this instance's config and return its output."""
        doveadm = shutil.which("doveadm") or "/usr/bin/doveadm"
        result = subprocess.run([doveadm, "-c", str(self.conf), *args], capture_output=True, text=True,
                                timeout=30)
        if result.returncode != 0:
            raise RuntimeError(f"doveadm {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    def set_uidvalidity(self, user: str, folder: str, value: int) -> None:
        """Change ``folder``'s UIDVALIDITY, as a restored or recreated mailbox would."""
        self.doveadm("mailbox", "update", "-u", user, "--uid-validity", str(value), folder)

    def maildir(self, user: str) -> Path:
        return self.root / "mail" / user

    def client(self, user: str) -> Any:
        """Return a logged-in IMAPClient for ``user`` (the test's own tool to append and look)."""
        from imapclient import IMAPClient

        client = IMAPClient("127.0.0.1", port=self.port, ssl=False, timeout=10)
        client.login(user, self.password)
        return client


# --- capturing SMTP server ---------------------------------------------------------


@dataclass
class Captured:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes

    @property
    def message(self) -> EmailMessage:
        return message_from_bytes(self.data, policy=policy.default)  # type: ignore[return-value]


@dataclass
class CaptureHandler:
    """Keeps every message; can be told to answer MAIL/RCPT/DATA with an error."""

    messages: list[Captured] = field(default_factory=list)
    #: Queued error replies for the next DATA commands (e.g. "451 4.3.0 try later").
    data_errors: list[str] = field(default_factory=list)
    #: Recipients always refused with this reply (e.g. {"bad@x": "550 5.1.1 no such user"}).
    rcpt_errors: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    arrived: threading.Condition = field(default_factory=threading.Condition)

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          options: list[str]) -> str:
        error = self.rcpt_errors.get(address.lower())
        if error:
            return error
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        with self.lock:
            if self.data_errors:
                return self.data_errors.pop(0)
        with self.arrived:
            self.messages.append(Captured(envelope.mail_from, list(envelope.rcpt_tos),
                                          envelope.original_content or b""))
            self.arrived.notify_all()
        return "250 OK"

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Captured]:
        """Wait until at least ``count`` messages arrived; return them all."""
        with self.arrived:
            self.arrived.wait_for(lambda: len(self.messages) >= count, timeout=timeout)
            return list(self.messages)


class SmtpCapture:
    """A real aiosmtpd server on a loopback port that captures what it is sent."""

    def __init__(self) -> None:
        self.handler = CaptureHandler()
        self.port = free_port()
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.port)

    @property
    def messages(self) -> list[Captured]:
        return self.handler.messages

    def start(self) -> None:
        self.controller.start()

    def stop(self) -> None:
        try:
            self.controller.stop()
        except (AssertionError, RuntimeError):
            pass


def run_coro(coro: Any) -> Any:
    """Run ``coro`` on a fresh loop (tests of async components without pytest plugins)."""
    return asyncio.run(coro)


class BackgroundComponent:
    """Runs a daemon component's ``run(stop)`` on its own event loop in a thread."""

    def __init__(self, component: Any) -> None:
        self.component = component
        self.loop = asyncio.new_event_loop()
        self.stop_event: asyncio.Event | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, daemon=True)
        self._ready = threading.Event()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def runner() -> None:
            self.stop_event = asyncio.Event()
            self._ready.set()
            await self.component.run(self.stop_event)

        try:
            self.loop.run_until_complete(runner())
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            self.error = exc
        finally:
            self.loop.close()

    def start(self) -> "BackgroundComponent":
        self.thread.start()
        self._ready.wait(5)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self.stop_event is not None and not self.loop.is_closed():
            try:
                self.loop.call_soon_threadsafe(self.stop_event.set)
            except RuntimeError:
                pass
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise TimeoutError(f"{self.component!r} did not stop within {timeout} s")


class Together:
    """Several components on one event loop, as the supervisor runs them."""

    name = "together"

    def __init__(self, *components: Any) -> None:
        self.components = components

    async def run(self, stop: asyncio.Event) -> None:
        await asyncio.gather(*(c.run(stop) for c in self.components))
