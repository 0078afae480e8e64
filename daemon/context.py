"""The composition root's state, handed to every component: the validated
config, the database, this instance's name, wake-up signals between
components, and reload hooks run on SIGHUP."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from daemon.config import Config
from models.session import make_engine, make_sessionmaker


@dataclass
class AppContext:
    config: Config
    engine: Engine
    sessions: sessionmaker[Session]
    instance: str
    #: Named wake-ups: ``pipeline`` (new inbound rows), ``outbox`` (new outgoing mail), ``csms``.
    wakeups: dict[str, asyncio.Event] = field(default_factory=dict)
    #: Called on SIGHUP (templates, classifier model); each must not raise.
    reload_hooks: list[Callable[[], object]] = field(default_factory=list)
    #: In a worker process (no event loop): passes a wake-up to the main process (see daemon.processes).
    remote_wake: Callable[[str], None] | None = None

    def wakeup(self, name: str) -> asyncio.Event:
        """Return the event that wakes component ``name`` (created on first use)."""
        event = self.wakeups.get(name)
        if event is None:
            event = self.wakeups[name] = asyncio.Event()
        return event

    def wake(self, name: str) -> None:
        """Wake component ``name`` now; safe to call from the event loop only."""
        self.wakeup(name).set()

    def waker(self, name: str) -> Callable[..., None]:
        """Return a callable that wakes component ``name`` from any thread.

        It captures the running event loop, if any (stages run in worker
        threads; ``acedesk process`` has no loop, and then it does nothing).
        Extra arguments are ignored, so it can be an SQLAlchemy event listener.
        """
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        remote = self.remote_wake
        if loop is None and remote is not None:
            return lambda *_: remote(name)

        def wake(*_: object) -> None:
            if loop is None or loop.is_closed():
                return
            try:
                loop.call_soon_threadsafe(self.wake, name)
            except RuntimeError:  # the loop closed meanwhile: nobody left to wake
                pass

        return wake

    def dispose(self) -> None:
        self.engine.dispose()


def instance_name(config: Config) -> str:
    return config.daemon.instance_name or f"{socket.gethostname()}:{os.getpid()}"


def make_context(config: Config, *, create: bool = True) -> AppContext:
    """Return a context with an engine for the configured database.

    Raises:
        DatabaseMissing: ``create`` is false and the SQLite file does not exist.
    """
    engine = make_engine(
        config.database.url, echo=config.database.echo, pool_size=config.database.pool_size,
        base_dir=config.base_dir, create=create,
    )
    return AppContext(config=config, engine=engine, sessions=make_sessionmaker(engine),
                      instance=instance_name(config))
