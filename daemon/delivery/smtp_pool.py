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
in one write and the content with its final dot in a second: two round trips
per message instead of four.  ``raw`` is the whole message with CRLF line
endings; dot-stuffing is done here.

A task with a series of messages (the CSMS fan-out) holds one session with
``async with pool.channel() as ch`` and names each next message's envelope
when it sends one (``ch.send(..., then=(return_path, rcpts))``): that
envelope goes in the same write as the final dot (RFC 2920: content first in
a group, DATA last), so each message costs one write and one round trip.
The next message's content is still written only after this one's 250 was
read and ``accepted`` called.

Every step (connect, greeting, EHLO, STARTTLS, AUTH, each transaction, QUIT)
runs under ``timeout`` (a transaction is checked by a watchdog every quarter of
it, so it may run up to 1.25 x ``timeout``): a relay that stops answering or
drops the connection gives a ``temporary`` result, never a hang.  A relay that cannot be reached
is not hammered: new connections wait out a doubling back-off (up to 30 s)
after a failed connect.

A ``temporary`` result after the final dot was written (a timeout or a drop
while waiting for the 250) may hide a message the relay did accept: retrying
it may deliver it twice (RFC 1047).  That is the inherent window of SMTP.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import logging
import re
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Literal

from daemon.runner import backoff
from daemon.tls import tls_context

log = logging.getLogger("acedesk.smtp")

SENT: Final = "sent"
TEMPORARY: Final = "temporary"
PERMANENT: Final = "permanent"

_DOT_LINE = re.compile(rb"(?m)^\.")
_NEWLINE_DOT = re.compile(rb"\n\.")
#: Longest wait before reconnecting to a relay that refused or dropped us.
RECONNECT_MAX = 30.0


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


def classify(code: int) -> Literal["sent", "temporary", "permanent"]:
    """``sent`` for 2xx/3xx, ``permanent`` for 5xx, ``temporary`` for 4xx and anything else."""
    if 200 <= code < 400:
        return SENT
    if 500 <= code < 600:
        return PERMANENT
    return TEMPORARY


def dot_stuffed(data: bytes) -> bytes:
    """Return ``data`` ready for DATA: lines starting with '.' doubled (RFC 5321 4.5.2), ending in CRLF."""
    # A regex search is ~3x faster than ``b"\n." in data`` here (CRLF makes the substring search stumble).
    if data.startswith(b".") or _NEWLINE_DOT.search(data):
        data = _DOT_LINE.sub(b"..", data)
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data


def _envelope(mail_from: str, rcpts: list[str]) -> list[str]:
    """The commands of one transaction up to DATA."""
    return [f"MAIL FROM:<{mail_from}>", *(f"RCPT TO:<{r}>" for r in rcpts), "DATA"]


class SmtpError(Exception):
    """The relay refused the session itself (greeting, EHLO, STARTTLS, AUTH)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code} {message}")
        self.code = code
        self.message = message


class RateLimiter:
    """Messages per second (token bucket) and a sliding hourly cap, adaptive to throttling.

    ``slow_down()`` (called on a 4xx) halves the effective rate, at most once
    a second so that a burst of refusals for the messages already in flight
    counts as one signal; each success raises it by 2 % until it is back at
    the configured rate (or, unlimited, until it no longer binds).  The
    relay's throttling slows a publish down; it never drops anyone.

    The hourly cap counts sends in one-second buckets: memory is bounded by
    3,600 buckets, whatever the cap.
    """

    def __init__(self, per_second: float = 0.0, hourly_cap: int = 0, *, floor: float = 1.0) -> None:
        self.configured = per_second if per_second > 0 else 0.0
        self.rate = self.configured
        self.hourly_cap = max(0, hourly_cap)
        self.floor = floor
        self._tokens = 1.0
        self._last = time.monotonic()
        self._last_slowdown = 0.0
        self._hour: collections.deque[list[int]] = collections.deque()  # [second, sends in it]
        self._in_hour = 0
        self._recent: collections.deque[float] = collections.deque(maxlen=200)
        self._lock = asyncio.Lock()

    def observed_rate(self) -> float:
        """Messages per second over the last (up to) 200 sends."""
        if len(self._recent) < 2:
            return 10.0
        span = self._recent[-1] - self._recent[0]
        return (len(self._recent) - 1) / span if span > 0 else 1000.0

    def slow_down(self) -> None:
        now = time.monotonic()
        if now - self._last_slowdown < 1.0:
            return
        self._last_slowdown = now
        current = self.rate or self.observed_rate()
        self.rate = max(self.floor, current / 2)
        log.info("relay throttling: sending at %.1f msgs/s", self.rate)

    def speed_up(self) -> None:
        if self.rate and (not self.configured or self.rate < self.configured):
            self.rate *= 1.02
            if self.configured and self.rate >= self.configured:
                self.rate = self.configured
            elif not self.configured and self.rate > 4 * self.observed_rate():
                self.rate = 0.0   # no longer the limit: back to unlimited

    def _hour_wait(self, now: float) -> float:
        while self._hour and self._hour[0][0] <= now - 3600:
            self._in_hour -= self._hour.popleft()[1]
        if self._in_hour < self.hourly_cap:
            return 0.0
        return self._hour[0][0] + 3600 - now

    def _count(self, now: float) -> None:
        self._recent.append(now)
        if self.hourly_cap:
            second = int(now)
            if self._hour and self._hour[-1][0] == second:
                self._hour[-1][1] += 1
            else:
                self._hour.append([second, 1])
            self._in_hour += 1

    def _take(self) -> float:
        """Take one message's turn if it is free now and return 0; else how long to wait."""
        now = time.monotonic()
        wait = 0.0
        if self.rate:
            burst = max(1.0, self.rate / 20)
            self._tokens = min(burst, self._tokens + (now - self._last) * self.rate)
            if self._tokens < 1.0:
                wait = (1.0 - self._tokens) / self.rate
        self._last = now
        if self.hourly_cap:
            wait = max(wait, self._hour_wait(now))
        if wait <= 0:
            if self.rate:
                self._tokens -= 1.0
            self._count(now)
        return wait

    async def acquire(self) -> None:
        """Wait until one more message may be sent."""
        if not self.rate and not self.hourly_cap:
            self._recent.append(time.monotonic())
            return
        # One waiter at a time keeps the order fair and the bucket arithmetic simple.
        async with self._lock:
            while (wait := self._take()) > 0:
                await asyncio.sleep(wait)

    def try_acquire(self) -> bool:
        """Take one message's turn if that needs no wait (and nobody waits already); else False."""
        if not self.rate and not self.hourly_cap:
            self._recent.append(time.monotonic())
            return True
        return not self._lock.locked() and self._take() <= 0


class SmtpConnection:
    """One SMTP session; one transaction at a time."""

    def __init__(self, host: str, port: int, *, tls: str = "none", ssl_context: ssl.SSLContext | None = None,
                 username: str = "", password: str = "", timeout: float = 30.0, helo: str = "localhost",
                 pipelining: bool = True) -> None:
        self.host, self.port, self.tls = host, port, tls
        self.ssl_context = ssl_context
        self.username, self.password = username, password
        self.timeout = timeout
        self.helo = helo
        self.allow_pipelining = pipelining
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.extensions: dict[str, str] = {}
        self.broken = False
        self.sent = 0
        #: ``envelope`` until the content is written, then ``data``: what a failure may have cost.
        self.stage = "envelope"
        #: The next message's envelope, written with the last message's end, replies not read yet.
        self.announced: tuple[str, tuple[str, ...]] | None = None
        #: When (monotonic) the transaction under way times out; 0 while idle (see :meth:`_watch`).
        self.deadline = 0.0
        self.timed_out = False
        self._watchdog: asyncio.Task[None] | None = None

    @property
    def pipelining(self) -> bool:
        return self.allow_pipelining and "pipelining" in self.extensions

    async def _reply_lines(self) -> tuple[int, list[str]]:
        """Read one (possibly multi-line) reply: its code and the text of each line."""
        assert self.reader is not None
        lines = []
        while True:
            line = await self.reader.readline()
            if not line.endswith(b"\n"):
                raise self._closed()
            code, text, last = reply_line(line)
            lines.append(text)
            if last:
                return code, lines

    async def _reply(self) -> tuple[int, str]:
        code, lines = await self._reply_lines()
        return code, " ".join(lines)

    async def _replies(self, count: int) -> list[tuple[int, str]]:
        """Read ``count`` replies (what :meth:`_reply` reads, in one call: a pipelined group's
        replies are mostly in the buffer already)."""
        assert self.reader is not None
        readuntil = self.reader.readuntil
        replies: list[tuple[int, str]] = []
        lines: list[str] = []
        while len(replies) < count:
            try:
                line = await readuntil(b"\n")
            except asyncio.IncompleteReadError:
                raise self._closed() from None
            except asyncio.LimitOverrunError:
                raise ConnectionError("reply line too long") from None
            code, text, last = reply_line(line)
            lines.append(text)
            if last:
                replies.append((code, " ".join(lines)))
                lines = []
        return replies

    def _closed(self) -> Exception:
        """What a read that found the session closed raises: a timeout if :meth:`_watch` closed it."""
        return TimeoutError() if self.timed_out else ConnectionError("connection closed by the server")

    async def _watch(self) -> None:
        """Abort the session once a transaction has run past its deadline.

        A timer per transaction (``asyncio.timeout``) cost more CPU than the rest of the client
        at thousands of messages a second; this looks every quarter of ``timeout`` instead, so
        a silent relay is given up after ``timeout`` to 1.25 x ``timeout``.
        """
        period = max(0.05, self.timeout / 4)
        while True:
            await asyncio.sleep(period)
            if self.deadline and time.monotonic() > self.deadline:
                self.timed_out = self.broken = True
                if self.writer is not None:
                    self.writer.transport.abort()   # the pending read ends: raises TimeoutError
                return

    async def _command(self, text: str) -> tuple[int, str]:
        assert self.writer is not None
        self.writer.write(text.encode("utf-8") + b"\r\n")
        return await self._reply()

    async def open(self) -> None:
        """Connect, greet, EHLO, STARTTLS and AUTH as configured; raises on any refusal."""
        try:
            async with asyncio.timeout(self.timeout):
                await self._open()
        except BaseException:
            self.broken = True
            await self.close()
            raise
        self._watchdog = asyncio.create_task(self._watch())

    async def _open(self) -> None:
        # A TLS context costs ~20 ms to build: only made when this connection will use TLS.
        ctx = self.ssl_context or (tls_context() if self.tls != "none" else None)
        self.reader, self.writer = await asyncio.open_connection(
            self.host, self.port, ssl=ctx if self.tls == "implicit" else None)
        code, msg = await self._reply()
        if code != 220:
            raise SmtpError(code, msg)
        await self._ehlo()
        if self.tls == "starttls":
            if "starttls" not in self.extensions:
                # Required when configured: never falls back to plaintext.
                raise SmtpError(530, "the relay does not offer STARTTLS, which the configuration requires")
            code, msg = await self._command("STARTTLS")
            if code != 220:
                raise SmtpError(code, msg)
            await self.writer.start_tls(ctx or tls_context(), server_hostname=self.host)
            await self._ehlo()
        if self.username:
            secret = base64.b64encode(f"\0{self.username}\0{self.password}".encode()).decode()
            code, msg = await self._command(f"AUTH PLAIN {secret}")
            if code != 235:
                raise SmtpError(code, msg)

    async def _ehlo(self) -> None:
        assert self.writer is not None
        self.writer.write(f"EHLO {self.helo}\r\n".encode())
        code, lines = await self._reply_lines()
        if code != 250:
            raise SmtpError(code, " ".join(lines))
        # The first line greets; each further line is one extension keyword and its parameters.
        self.extensions = {}
        for line in lines[1:]:
            keyword, _, params = line.partition(" ")
            self.extensions[keyword.lower()] = params

    async def send(self, mail_from: str, rcpts: list[str], data: bytes, dot_safe: bool = False,
                   then: tuple[str, list[str]] | None = None) -> SendResult:
        """Run one mail transaction; raises OSError/ConnectionError/TimeoutError on a broken session.

        ``dot_safe``: the caller guarantees no line of ``data`` starts with a dot and it ends in
        CRLF (a CSMS notice is built so, once), so it goes out without another scan or copy.
        ``then``: the envelope (return path, recipients) of the message that will follow on this
        session; with PIPELINING it goes in the same write as this message's final dot (RFC 2920
        allows message content first in a group and DATA last), so the next transaction costs no
        round trip of its own.  Only its envelope: its content is written by the next ``send``,
        after this message's reply was read (and recorded by the caller).
        """
        assert self.writer is not None
        if not dot_safe:
            data = dot_stuffed(data)
        count = len(rcpts) + 2   # MAIL, each RCPT, DATA
        self.stage = "envelope"
        self.deadline = time.monotonic() + self.timeout
        try:
            if self.announced is not None:
                if self.announced != (mail_from, tuple(rcpts)):
                    raise ValueError("the envelope written ahead is not this message's")
                # Written with the last message's end: only its replies are due.
                self.announced = None
                replies = await self._replies(count)
            elif self.pipelining:
                self.writer.write(("\r\n".join(_envelope(mail_from, rcpts)) + "\r\n").encode("utf-8"))
                replies = await self._replies(count)
            else:
                replies = await self._lockstep(_envelope(mail_from, rcpts))
            mail_reply, data_reply = replies[0], replies[-1] if len(replies) == count else (0, "")
            rcpt_replies = replies[1:1 + len(rcpts)]
            refused = {r: rep for r, rep in zip(rcpts, rcpt_replies) if rep[0] >= 400}
            if data_reply[0] != 354:
                await self._rset()
                code, msg = (mail_reply if mail_reply[0] >= 400
                             else next(iter(refused.values())) if refused else data_reply)
                return SendResult(classify(code) if code >= 400 else TEMPORARY, code, msg, refused)
            if mail_reply[0] >= 400 or len(refused) == len(rcpts):
                # A server that said 354 without a valid recipient gets an empty message, ended at once.
                self.writer.write(b".\r\n")
                await self._reply()
                code, msg = mail_reply if mail_reply[0] >= 400 else next(iter(refused.values()))
                return SendResult(classify(code), code, msg, refused)
            self.stage = "data"
            # One write, one send(2): the copy costs a microsecond, a second syscall more.
            if then is not None and self.pipelining:
                self.writer.write(b"".join((data, b".\r\n", ("\r\n".join(_envelope(*then)) + "\r\n").encode("utf-8"))))
                self.announced = (then[0], tuple(then[1]))
            else:
                self.writer.write(data + b".\r\n")
            (code, msg), = await self._replies(1)
        finally:
            self.deadline = 0.0
        self.sent += 1
        if code == 421:
            self.broken = True
        return SendResult(classify(code), code, msg, refused)

    async def _lockstep(self, commands: list[str]) -> list[tuple[int, str]]:
        """Without PIPELINING: one command, one reply; stop early when going on is pointless."""
        replies = [await self._command(commands[0])]
        if replies[0][0] >= 400:
            return replies
        for command in commands[1:-1]:
            replies.append(await self._command(command))
        if all(code >= 400 for code, _ in replies[1:]):
            return replies
        replies.append(await self._command(commands[-1]))
        return replies

    async def _rset(self) -> None:
        code, _ = await self._command("RSET")
        if code == 421 or code >= 500:
            self.broken = True

    async def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        writer, self.writer = self.writer, None
        if writer is None:
            return
        try:
            # With an envelope written ahead the session may be in DATA: a QUIT would be content.
            if not self.broken and self.announced is None and not writer.is_closing():
                async with asyncio.timeout(min(2.0, self.timeout)):
                    writer.write(b"QUIT\r\n")
                    await self._reply()
        except Exception:  # noqa: BLE001 - closing anyway
            pass
        writer.close()
        try:
            async with asyncio.timeout(min(2.0, self.timeout)):
                await writer.wait_closed()
        except Exception:  # noqa: BLE001 - the peer may already be gone
            pass


class SmtpPool:
    """Up to ``connections`` concurrent, reused SMTP sessions to one relay."""

    def __init__(self, host: str, port: int, *, connections: int = 4, tls: str = "none",
                 ssl_context: ssl.SSLContext | None = None, username: str = "", password: str = "",
                 timeout: float = 30.0, helo: str = "localhost", limiter: RateLimiter | None = None,
                 max_per_connection: int = 0, pipelining: bool = True) -> None:
        self.host, self.port = host, port
        self.size = max(1, connections)
        self.options = dict(tls=tls, ssl_context=ssl_context, username=username, password=password,
                            timeout=timeout, helo=helo, pipelining=pipelining)
        self.limiter = limiter
        self.max_per_connection = max_per_connection
        self._idle: list[SmtpConnection] = []
        self._slots = asyncio.Semaphore(self.size)
        self._reconnect_delay = 0.0
        self._failed_connects = 0
        self._not_before = 0.0
        self._closed = False
        #: Outcomes by status, and ``connections``: sessions opened (reuse keeps it at the pool size).
        self.stats: collections.Counter[str] = collections.Counter()

    async def __aenter__(self) -> SmtpPool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _connection(self) -> SmtpConnection:
        """An idle session, or a new one once the reconnect back-off allows."""
        if self._idle:
            return self._idle.pop()
        wait = self._not_before - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        conn = SmtpConnection(self.host, self.port, **self.options)  # type: ignore[arg-type]
        try:
            await conn.open()
        except (SmtpError, OSError, ConnectionError, TimeoutError, ssl.SSLError):
            self._failed_connects += 1
            self._reconnect_delay = backoff(self._failed_connects, 0.5, RECONNECT_MAX)
            self._not_before = time.monotonic() + self._reconnect_delay
            raise
        self._reconnect_delay = 0.0
        self._failed_connects = 0
        self.stats["connections"] += 1
        return conn

    async def send(self, mail_from: str, rcpts: list[str], data: bytes,
                   accepted: Callable[[], None] | None = None, dot_safe: bool = False) -> SendResult:
        """Send one message; never raises for SMTP or network trouble (it is a ``temporary`` result).

        ``accepted`` is called right after the relay's 250, before the
        connection takes another message: a caller recording acceptances
        there leaves at most one unrecorded accepted message per connection.
        ``dot_safe``: see :meth:`SmtpConnection.send`.
        """
        if self.limiter is not None:
            await self.limiter.acquire()
        async with self._slots:
            result, conn = await self._deliver(None, mail_from, rcpts, data, dot_safe, None)
            if result.status == SENT and accepted is not None:
                accepted()
            if conn is not None:
                await self._put_back(conn)
        self._count(result)
        return result

    async def _deliver(self, conn: SmtpConnection | None, mail_from: str, rcpts: list[str], data: bytes,
                       dot_safe: bool, then: tuple[str, list[str]] | None
                       ) -> tuple[SendResult, SmtpConnection | None]:
        """One message over ``conn`` (or an idle or new session); the result and the session used
        (None if none could be opened); the caller records an acceptance, then puts it back."""
        try:
            reused = conn is not None and conn.sent > 0 or conn is None and bool(self._idle)
            if conn is None:
                conn = await self._connection()
            try:
                result = await conn.send(mail_from, rcpts, data, dot_safe, then)
            except (OSError, ConnectionError, TimeoutError) as exc:
                if not reused or conn.stage != "envelope" or isinstance(exc, TimeoutError):
                    raise
                # A reused session the relay closed while it sat idle: nothing of this message
                # was accepted yet, so one more try on a fresh session cannot duplicate it.
                conn.broken = True
                await conn.close()
                conn = None
                conn = await self._connection()
                result = await conn.send(mail_from, rcpts, data, dot_safe, then)
        except SmtpError as exc:
            # Refused at greeting/EHLO/STARTTLS/AUTH: the relay, not the message, is the problem,
            # so even a 5xx there is no reason to give up on the recipient.
            result = SendResult(TEMPORARY, exc.code, exc.message)
        except (OSError, ConnectionError, TimeoutError, ssl.SSLError) as exc:
            result = SendResult(TEMPORARY, 0, f"connection error: {exc.__class__.__name__}: {exc}".rstrip(": "))
            if conn is not None:
                conn.broken = True
        except BaseException:
            if conn is not None:   # cancelled mid-transaction: the session's state is unknown
                conn.broken = True
                await asyncio.shield(conn.close())
            raise
        return result, conn

    async def _put_back(self, conn: SmtpConnection) -> None:
        """An idle session goes back to the pool, or is closed once it has carried enough."""
        if (conn.broken or self._closed or conn.announced is not None
                or (self.max_per_connection and conn.sent >= self.max_per_connection)):
            await conn.close()
        else:
            self._idle.append(conn)

    def _count(self, result: SendResult) -> None:
        self.stats[result.status] += 1
        if self.limiter is not None:
            if result.status == TEMPORARY:
                self.limiter.slow_down()
            elif result.status == SENT:
                self.limiter.speed_up()

    def channel(self) -> Channel:
        """A session of this pool held for a series of messages (``async with pool.channel() as ch``)."""
        return Channel(self)

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        await asyncio.gather(*(c.close() for c in idle), return_exceptions=True)


class Channel:
    """One of a pool's sessions held by one task for a series of messages, each next message's
    envelope written with the last one's end (``then``): one round trip a message, not two.

    It takes one of the pool's ``connections`` slots while open.  Everything else is as
    :meth:`SmtpPool.send`: the rate limiter, the reconnect back-off, the one retry of a session
    closed while idle, ``accepted`` called right after the 250 and before the session takes
    another message (the next message's content is only written by the next :meth:`send`).
    """

    def __init__(self, pool: SmtpPool) -> None:
        self.pool = pool
        self.conn: SmtpConnection | None = None
        #: The limiter's turn was taken for the envelope written ahead.
        self._paid_ahead = False

    async def __aenter__(self) -> Channel:
        await self.pool._slots.acquire()
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            if self.conn is not None:
                conn, self.conn = self.conn, None
                await asyncio.shield(self.pool._put_back(conn))
        finally:
            self.pool._slots.release()

    async def send(self, mail_from: str, rcpts: list[str], data: bytes, accepted: Callable[[], None] | None = None,
                   dot_safe: bool = False, then: tuple[str, list[str]] | None = None) -> SendResult:
        """Send one message; ``then`` is the envelope of the message this channel sends next, if
        known (a ``send`` of another one instead costs this session: it is closed, not reused)."""
        pool, conn = self.pool, self.conn
        if conn is not None and conn.broken:   # closed by a failure the caller saw raised
            conn = None
        ahead = conn is not None and conn.announced == (mail_from, tuple(rcpts))
        if conn is not None and conn.announced is not None and not ahead:
            # The session may be in DATA for the envelope written ahead: only closing ends that.
            conn.broken = True
            await conn.close()
            self.conn = conn = None
        if pool.limiter is not None and not (ahead and self._paid_ahead):
            await pool.limiter.acquire()
        # The envelope goes ahead only if its turn is free now: no session held open by a wait.
        self._paid_ahead = then is not None and (pool.limiter is None or pool.limiter.try_acquire())
        result, conn = await pool._deliver(conn, mail_from, rcpts, data, dot_safe, then if self._paid_ahead else None)
        if result.status == SENT and accepted is not None:
            accepted()
        if conn is not None and (conn.broken or pool._closed
                                 or (pool.max_per_connection and conn.sent >= pool.max_per_connection)):
            await conn.close()
            conn = None
        self.conn = conn
        pool._count(result)
        return result


def reply_line(line: bytes) -> tuple[int, str, bool]:
    """Return one SMTP reply line's code, its text, and whether it ends the reply (no ``-``)."""
    try:
        code = int(line[:3])
    except ValueError:
        raise ConnectionError(f"malformed reply {line[:80]!r}") from None
    return code, line[4:].strip().decode("utf-8", "replace"), line[3:4] != b"-"
