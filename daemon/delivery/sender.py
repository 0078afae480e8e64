"""The one way out: every message the daemon sends -- replies, CSMS control
mail and notices -- leaves through a :class:`RelaySender` (the pipelining SMTP
pool of :mod:`daemon.delivery.smtp_pool`, under one rate limiter) or, with no
``[outbound] relay_host``, a :class:`SpoolSender` that writes it to the spool
folder so nothing is lost.

Both answer with a :class:`~daemon.delivery.smtp_pool.SendResult` classified
the one way: ``sent``; ``temporary`` for 4xx replies, refused or dropped
connections and timeouts (retried after :func:`retry_delay`, capped
exponential, until ``give_up_hours``); ``permanent`` for 5xx.

Spool files are the message as it would go out (its text parts are
quoted-printable or 8bit, so they read as text), preceded by two
``X-Acedesk-Envelope-*`` lines; each is written under a temporary name,
fsynced and renamed, so a reader never sees half a file and a rewrite after
a crash replaces the same file.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Protocol

from daemon.config import Config, read_secret
from daemon.delivery.smtp_pool import SENT, TEMPORARY, Channel, RateLimiter, SendResult, SmtpPool
from daemon.runner import backoff
from daemon.tls import tls_context


class Sender(Protocol):
    """Where a message goes: ``spool_name`` names its file when the spool is the way out."""

    async def send(self, mail_from: str, rcpts: Sequence[str], raw: bytes, spool_name: str,
                   accepted: Callable[[], None] | None = None, dot_safe: bool = False) -> SendResult: ...

    def series(self) -> Series:
        """One way out held for a series of messages by one task (``async with``): each message
        may name the envelope of the next (``then``), which the relay then gets ahead of time."""
        ...

    async def close(self) -> None: ...


class Series(Protocol):
    """What :meth:`Sender.series` gives: :meth:`Sender.send`, and ``then``, the next envelope."""

    async def __aenter__(self) -> Series: ...

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None: ...

    def send(self, mail_from: str, rcpts: list[str], raw: bytes, spool_name: str,
             accepted: Callable[[], None] | None = None, dot_safe: bool = False,
             then: tuple[str, list[str]] | None = None) -> Awaitable[SendResult]: ...


def retry_delay(attempts: int, first: float, cap: float) -> float:
    """Seconds before the next try of a message that failed temporarily ``attempts`` times."""
    return backoff(attempts, first, cap)


class RelaySender:
    """The ``[outbound]`` relay over reused, pipelined connections, under a rate limiter."""

    def __init__(self, config: Config, *, connections: int, rate_per_second: float, hourly_cap: int) -> None:
        out = config.outbound
        password = read_secret("outbound", out.password_env, out.password_file, config) if out.username else ""
        self.limiter = RateLimiter(rate_per_second, hourly_cap)
        self.pool = SmtpPool(
            out.relay_host, out.relay_port, connections=connections, tls=out.tls,
            ssl_context=tls_context(out.verify_certificates) if out.tls != "none" else None,
            username=out.username, password=password, timeout=out.timeout, helo=config.desk.domain,
            limiter=self.limiter)

    async def send(self, mail_from: str, rcpts: Sequence[str], raw: bytes, spool_name: str,
                   accepted: Callable[[], None] | None = None, dot_safe: bool = False) -> SendResult:
        return await self.pool.send(mail_from, list(rcpts), raw, accepted, dot_safe)

    def series(self) -> Series:
        return _RelaySeries(self.pool.channel())

    async def close(self) -> None:
        await self.pool.close()


class _RelaySeries:
    """A :class:`~daemon.delivery.smtp_pool.Channel` of the relay pool (the spool name unused)."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel

    async def __aenter__(self) -> _RelaySeries:
        await self.channel.__aenter__()
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.channel.__aexit__(kind, exc, tb)

    def send(self, mail_from: str, rcpts: list[str], raw: bytes, spool_name: str,
             accepted: Callable[[], None] | None = None, dot_safe: bool = False,
             then: tuple[str, list[str]] | None = None) -> Awaitable[SendResult]:
        # Not a coroutine of its own: one call less a message.
        return self.channel.send(mail_from, rcpts, raw, accepted, dot_safe, then)


def write_spool(path: Path, mail_from: str, rcpts: Sequence[str], raw: bytes) -> None:
    """Write one message to ``path`` atomically (temporary name, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    envelope = f"X-Acedesk-Envelope-From: {mail_from}\r\nX-Acedesk-Envelope-To: {', '.join(rcpts)}\r\n"
    with open(tmp, "wb") as fh:
        fh.write(envelope.encode() + raw)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class SpoolSender:
    """No relay: each message becomes ``<spool_dir>/<spool_name>``."""

    def __init__(self, config: Config) -> None:
        self.folder = config.path(config.outbound.spool_dir)

    async def send(self, mail_from: str, rcpts: Sequence[str], raw: bytes, spool_name: str,
                   accepted: Callable[[], None] | None = None, dot_safe: bool = False) -> SendResult:
        path = self.folder / spool_name
        try:
            await asyncio.to_thread(write_spool, path, mail_from, rcpts, raw)
        except OSError as exc:
            return SendResult(TEMPORARY, 0, f"spool {path}: {exc}")
        if accepted is not None:
            accepted()
        return SendResult(SENT, 250, "spooled")

    def series(self) -> Series:
        return _SpoolSeries(self)

    async def close(self) -> None:
        return None


class _SpoolSeries:
    """The spool needs no session: each message is written as :meth:`SpoolSender.send` does."""

    def __init__(self, spool: SpoolSender) -> None:
        self.spool = spool

    async def __aenter__(self) -> _SpoolSeries:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        return None

    def send(self, mail_from: str, rcpts: list[str], raw: bytes, spool_name: str,
             accepted: Callable[[], None] | None = None, dot_safe: bool = False,
             then: tuple[str, list[str]] | None = None) -> Awaitable[SendResult]:
        return self.spool.send(mail_from, rcpts, raw, spool_name, accepted, dot_safe)


def make_sender(config: Config, *, connections: int, rate_per_second: float, hourly_cap: int) -> Sender:
    """Return the way out for this configuration: the relay, or the spool when there is none."""
    if not config.outbound.relay_host:
        return SpoolSender(config)
    return RelaySender(config, connections=connections, rate_per_second=rate_per_second, hourly_cap=hourly_cap)
