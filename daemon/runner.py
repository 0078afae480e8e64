"""What every long-running loop of the daemon shares: the :class:`Component`
protocol the supervisor runs, one capped exponential backoff, one idle wait,
one ``run_once``-until-quiet loop, and the rule that says a lease's owner is
dead (same host, process gone) so that its successor takes over at once.

Each loop (pipeline, delivery, IMAP, scheduler) is ``run_once`` -- do one
batch, return how much it did -- driven by :func:`run_loop`: again at once
while there is work, else wait for a wake-up, the stop event or the poll
interval; an exception is logged and retried after a growing pause.  Tests
drive ``run_once`` to quiescence instead of sleeping and counting.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
from collections.abc import Awaitable, Callable
from typing import Protocol, runtime_checkable

log = logging.getLogger("acedesk.runner")


@runtime_checkable
class Component(Protocol):
    """A supervised part of ``acedesk run``: runs until ``stop`` is set, then returns promptly."""

    name: str

    async def run(self, stop: asyncio.Event) -> None: ...


def backoff(attempts: int, first: float, cap: float) -> float:
    """Return the wait in seconds after ``attempts`` failures: ``first`` doubled each time, at most ``cap``."""
    return float(min(cap, first * 2 ** min(max(0, attempts - 1), 40)))


def jittered(delay: float) -> float:
    """Return ``delay`` shortened by up to a quarter, so that many retries do not fire together."""
    return delay * random.uniform(0.75, 1.0)


async def wait_any(stop: asyncio.Event, wake: asyncio.Event | None, timeout: float) -> None:
    """Return when ``stop`` or ``wake`` is set, or after ``timeout`` seconds: a loop's idle wait."""
    waiters = [asyncio.ensure_future(stop.wait())]
    if wake is not None:
        waiters.append(asyncio.ensure_future(wake.wait()))
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waiters:
            task.cancel()


async def run_loop(name: str, once: Callable[[], Awaitable[int]], stop: asyncio.Event, *,
                   wake: asyncio.Event | None = None, idle: float = 1.0,
                   error_first: float = 1.0, error_cap: float = 60.0) -> None:
    """Call ``once`` until ``stop``: again at once after work, after ``idle`` (or a wake-up) when none.

    An exception from ``once`` is logged and retried after a capped, doubling pause.
    """
    failures = 0
    while not stop.is_set():
        if wake is not None:
            wake.clear()
        try:
            handled = await once()
        except asyncio.CancelledError:
            raise
        except Exception:
            failures += 1
            delay = backoff(failures, error_first, error_cap)
            log.exception("%s: failed; trying again in %.1f s", name, delay)
            await wait_any(stop, None, delay)
            continue
        failures = 0
        if handled:
            continue
        await wait_any(stop, wake, idle)


# --- leases held by processes ---------------------------------------------------------


def _split_owner(owner: str) -> tuple[str, int] | None:
    host, _, rest = owner.partition(":")
    pid = rest.split("/", 1)[0]
    return (host, int(pid)) if host and pid.isdigit() else None


def owner_is_dead(owner: str | None) -> bool:
    """Return whether the lease owner ``host:pid[/...]`` is a process of this host that no longer runs.

    Only a same-host owner can be judged; any other is left to its lease's expiry.
    """
    parsed = _split_owner(owner or "")
    if parsed is None or parsed[0] != socket.gethostname() or parsed[1] == os.getpid():
        return False
    try:
        os.kill(parsed[1], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
