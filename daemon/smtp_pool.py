"""A fast asyncio SMTP delivery pool: reused connections, ESMTP pipelining
where the server offers it (RFC 2920), a rate limiter (messages per second
and a sliding hourly cap) that slows down when the relay throttles, and
every outcome classified as ``sent``, ``temporary`` (4xx, connection
errors, timeouts: try again later) or ``permanent`` (5xx: do not).

Usage (any component may reuse it)::

    async with SmtpPool("relay.example", 25, connections=8,
                        limiter=RateLimiter(per_second=200, hourly_cap=0)) as pool:
        result = await pool.send("bounces+x@example", ["jo@example.com"], raw_bytes)
        if result.status == TEMPORARY: ...   # retry later; PERMANENT: give up

``send`` may be awaited by many tasks at once; at most ``connections`` run
concurrently, each on its own connection, and a connection is used for one
transaction at a time.  With PIPELINING, ``MAIL``, ``RCPT`` and ``DATA`` go
in one write and the message content in a second: two round trips per
message instead of four.  ``raw`` is the whole message with CRLF line
endings; dot-stuffing is done here.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import logging
import re
import ssl
import time
from dataclasses import dataclass, field
from typing import Literal

log = logging.getLogger("acedesk.smtp")

SENT = "sent"
TEMPORARY = "temporary"
PERMANENT = "permanent"

_DOT_LINE = re.compile(rb"(?m)^\.")


@dataclass(frozen=True)
class SendResult:
    """The outcome of one message; ``code`` is the decisive SMTP reply code (0: no reply)."""

    status: Literal["sent", "temporary", "permanent"]
    code: int
    message: str
    #: Recipients refused while others were accepted: ``{rcpt: (code, message)}``.
    refused: dict[str, tuple[int, str]] = field(default_factory=dict)

    @property
    def detail(self) -> str:
        return f"{self.code} {self.message}".strip()


def classify(code: int) -> str:
    """``sent`` for 2xx/3xx, ``permanent`` for 5xx, ``temporary`` for 4xx and anything else."""
    if 200 <= code < 400:
        return SENT
    if 500 <= code < 600:
        return PERMANENT
    return TEMPORARY


class SmtpError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code} {message}")
        self.code = code
        self.message = message


class RateLimiter:
    """Messages per second (token bucket) and a sliding hourly cap, adaptive to throttling.

    ``slow_down()`` (called on a 4xx) halves the effective rate; each success
    raises it by 2 % until it is back at the configured rate: the relay's
    throttling slows a publish down, it never drops anyone.
    """

    def __init__(self, per_second: float = 0.0, hourly_cap: int = 0, *, floor: float = 1.0) -> None:
        self.configured = per_second if per_second > 0 else 0.0
        self.rate = self.configured
        self.hourly_cap = hourly_cap
        self.floor = floor
        self._tokens = 1.0
        self._last = time.monotonic()
        self._hour: collections.deque[float] = collections.deque()
        self._recent: collections.deque[float] = collections.deque(maxlen=200)
        self._lock = asyncio.Lock()

    def _observed_rate(self) -> float:
        if len(self._recent) < 2:
            return 10.0
        span = self._recent[-1] - self._recent[0]
        return (len(self._recent) - 1) / span if span > 0 else 1000.0

    def slow_down(self) -> None:
        current = self.rate or self._observed_rate()
        self.rate = max(self.floor, current / 2)

    def speed_up(self) -> None:
        if self.rate and (not self.configured or self.rate < self.configured):
            self.rate *= 1.02
            if self.configured and self.rate >= self.configured:
                self.rate = self.configured
            elif not self.configured and self.rate > 100_000:
                self.rate = 0.0

    async def acquire(self) -> None:
        """Wait until one more message may be sent."""
        if not self.rate and not self.hourly_cap:
            self._recent.append(time.monotonic())
            return
        async with self._lock:
            while True:
                now = time.monotonic()
                wait = 0.0
                if self.rate:
                    self._tokens = min(max(1.0, self.rate / 10), self._tokens + (now - self._last) * self.rate)
                    self._last = now
                    if self._tokens < 1.0:
                        wait = (1.0 - self._tokens) / self.rate
                if self.hourly_cap:
                    while self._hour and self._hour[0] <= now - 3600:
                        self._hour.popleft()
                    if len(self._hour) >= self.hourly_cap:
                        wait = max(wait, self._hour[0] + 3600 - now)
                if wait <= 0:
                    if self.rate:
                        self._tokens -= 1.0
                    if self.hourly_cap:
                        self._hour.append(now)
                    self._recent.append(now)
                    return
                await asyncio.sleep(wait)


class SmtpConnection:
    """One SMTP session; one transaction at a time."""

    def __init__(self, host: str, port: int, *, tls: str = "none", ssl_context: ssl.SSLContext | None = None,
                 username: str = "", password: str = "", timeout: float = 30.0, helo: str = "localhost") -> None:
        self.host, self.port, self.tls = host, port, tls
        self.ssl_context = ssl_context
        self.username, self.password = username, password
        self.timeout = timeout
        self.helo = helo
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.extensions: dict[str, str] = {}
        self.broken = False
        self.sent = 0

    @property
    def pipelining(self) -> bool:
        return "pipelining" in self.extensions

    async def _reply(self) -> tuple[int, str]:
        assert self.reader is not None
        lines = []
        while True:
            line = await self.reader.readline()
            if not line:
                raise ConnectionError("connection closed by server")
            try:
                code = int(line[:3])
            except ValueError:
                raise ConnectionError(f"malformed reply {line[:80]!r}") from None
            lines.append(line[4:].strip().decode("utf-8", "replace"))
            if line[3:4] != b"-":
                return code, " ".join(lines)

    async def _command(self, text: str) -> tuple[int, str]:
        assert self.writer is not None
        self.writer.write(text.encode("utf-8") + b"\r\n")
        return await self._reply()

    async def open(self) -> None:
        async with asyncio.timeout(self.timeout):
            ctx = self.ssl_context or ssl.create_default_context()
            self.reader, self.writer = await asyncio.open_connection(
                self.host, self.port, ssl=ctx if self.tls == "implicit" else None)
            code, msg = await self._reply()
            if code != 220:
                raise SmtpError(code, msg)
            await self._ehlo()
            if self.tls == "starttls":
                if "starttls" not in self.extensions:
                    raise SmtpError(530, "server does not offer STARTTLS, which is required")
                code, msg = await self._command("STARTTLS")
                if code != 220:
                    raise SmtpError(code, msg)
                await self.writer.start_tls(ctx)
                await self._ehlo()
            if self.username:
                secret = base64.b64encode(f"\0{self.username}\0{self.password}".encode()).decode()
                code, msg = await self._command(f"AUTH PLAIN {secret}")
                if code != 235:
                    raise SmtpError(code, msg)

    async def _ehlo(self) -> None:
        assert self.writer is not None and self.reader is not None
        self.writer.write(f"EHLO {self.helo}\r\n".encode())
        self.extensions = {}
        first = True
        while True:
            line = await self.reader.readline()
            if not line:
                raise ConnectionError("connection closed during EHLO")
            code = int(line[:3])
            if code != 250:
                raise SmtpError(code, line[4:].decode(errors="replace").strip())
            if not first:
                keyword, _, params = line[4:].decode(errors="replace").strip().partition(" ")
                self.extensions[keyword.lower()] = params
            first = False
            if line[3:4] != b"-":
                return

    async def send(self, mail_from: str, rcpts: list[str], data: bytes) -> SendResult:
        """Run one mail transaction; raises OSError/ConnectionError/TimeoutError on a broken session."""
        assert self.writer is not None
        if b"\n." in data or data.startswith(b"."):
            data = _DOT_LINE.sub(b"..", data)   # RFC 5321 section 4.5.2 transparency
        if not data.endswith(b"\r\n"):
            data += b"\r\n"
        async with asyncio.timeout(self.timeout):
            commands = [f"MAIL FROM:<{mail_from}>"] + [f"RCPT TO:<{r}>" for r in rcpts] + ["DATA"]
            replies: list[tuple[int, str]] = []
            if self.pipelining:
                self.writer.write(("\r\n".join(commands) + "\r\n").encode("utf-8"))
                for _ in commands:
                    replies.append(await self._reply())
            else:
                for command in commands:
                    reply = await self._command(command)
                    replies.append(reply)
                    if reply[0] >= 400 and command.startswith("MAIL"):
                        break
            mail_reply = replies[0]
            rcpt_replies = replies[1:1 + len(rcpts)]
            refused = {r: rep for r, rep in zip(rcpts, rcpt_replies) if rep[0] >= 400}
            accepted = len(rcpt_replies) - len(refused)
            data_reply = replies[-1] if len(replies) == len(commands) else (0, "")
            if mail_reply[0] >= 400 or not accepted or data_reply[0] != 354:
                if data_reply[0] == 354:
                    # A server that said 354 without a valid recipient gets an empty message ended at once.
                    self.writer.write(b".\r\n")
                    await self._reply()
                await self._rset()
                code, msg = (mail_reply if mail_reply[0] >= 400
                             else next(iter(refused.values())) if refused else data_reply)
                return SendResult(classify(code) if code >= 400 else TEMPORARY, code, msg, refused)
            self.writer.write(data)
            self.writer.write(b".\r\n")
            code, msg = await self._reply()
            self.sent += 1
            if code == 421:
                self.broken = True
            return SendResult(classify(code), code, msg, refused)

    async def _rset(self) -> None:
        code, _ = await self._command("RSET")
        if code == 421 or code >= 500:
            self.broken = True

    async def close(self) -> None:
        if self.writer is None:
            return
        try:
            if not self.broken:
                async with asyncio.timeout(2):
                    await self._command("QUIT")
        except Exception:  # noqa: BLE001 - closing anyway
            pass
        try:
            self.writer.close()
        except Exception:  # noqa: BLE001
            pass
        self.writer = None


class SmtpPool:
    """Up to ``connections`` concurrent, reused SMTP sessions to one relay."""

    def __init__(self, host: str, port: int, *, connections: int = 4, tls: str = "none",
                 ssl_context: ssl.SSLContext | None = None, username: str = "", password: str = "",
                 timeout: float = 30.0, helo: str = "localhost", limiter: RateLimiter | None = None,
                 max_per_connection: int = 0) -> None:
        self.host, self.port = host, port
        self.size = max(1, connections)
        self.options = dict(tls=tls, ssl_context=ssl_context, username=username, password=password,
                            timeout=timeout, helo=helo)
        self.limiter = limiter
        self.max_per_connection = max_per_connection
        self._idle: list[SmtpConnection] = []
        self._slots = asyncio.Semaphore(self.size)
        self.stats = collections.Counter()  # type: ignore[var-annotated]

    async def __aenter__(self) -> "SmtpPool":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def send(self, mail_from: str, rcpts: list[str], data: bytes) -> SendResult:
        """Send one message; never raises for SMTP or network trouble (it is a ``temporary`` result)."""
        if self.limiter is not None:
            await self.limiter.acquire()
        async with self._slots:
            conn = self._idle.pop() if self._idle else None
            try:
                if conn is None:
                    conn = SmtpConnection(self.host, self.port, **self.options)  # type: ignore[arg-type]
                    await conn.open()
                result = await conn.send(mail_from, rcpts, data)
            except SmtpError as exc:
                # Refused at greeting/EHLO/AUTH: the relay, not the message, is the problem.
                result = SendResult(TEMPORARY if exc.code < 500 or exc.code == 530 else PERMANENT,
                                    exc.code, exc.message)
                if conn is not None:
                    conn.broken = True
            except (OSError, ConnectionError, TimeoutError, asyncio.IncompleteReadError, ssl.SSLError) as exc:
                result = SendResult(TEMPORARY, 0, f"connection error: {exc.__class__.__name__}: {exc}")
                if conn is not None:
                    conn.broken = True
            if conn is not None:
                if conn.broken or (self.max_per_connection and conn.sent >= self.max_per_connection):
                    await conn.close()
                else:
                    self._idle.append(conn)
        self.stats[result.status] += 1
        if self.limiter is not None:
            if result.status == TEMPORARY:
                self.limiter.slow_down()
            elif result.status == SENT:
                self.limiter.speed_up()
        return result

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        await asyncio.gather(*(c.close() for c in idle), return_exceptions=True)
