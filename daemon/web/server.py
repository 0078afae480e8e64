"""The web app as a component of the daemon: uvicorn serving the Starlette app
inside ``acedesk run``'s event loop (and alone in ``acedesk web``).

The socket is bound here, not by uvicorn: a busy port is logged with what to
change and retried, never a process exit; and uvicorn's own signal handling
is left out, because the supervisor owns SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator
from typing import Any

import uvicorn
from sqlalchemy.exc import SQLAlchemyError

from csms.tokens import Signer
from daemon.context import AppContext
from daemon.web.app import build_app

log = logging.getLogger("acedesk.web")
RETRY_BIND = 30.0


#: Seconds between refreshes of SQLite's planner statistics.
STATISTICS_EVERY = 6 * 3600.0


def analyze(ctx: AppContext) -> None:
    """``ANALYZE`` on a sample (``analysis_limit``): milliseconds, even with millions of rows."""
    with ctx.engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA analysis_limit=1000")
        conn.exec_driver_sql("ANALYZE")
        conn.commit()


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The supervisor handles SIGTERM/SIGINT and tells us through ``should_exit``.
        yield


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, reuse_port=False, backlog=128)
    sock.set_inheritable(True)
    return sock


class WebServer:
    """Serves the console, the subscribers' pages and /metrics on ``[web] listen``."""

    name = "web"

    def __init__(self, ctx: AppContext, signer: Signer) -> None:
        self.ctx = ctx
        self.app = build_app(ctx, signer)

    async def run(self, stop: asyncio.Event) -> None:
        host, port = self.ctx.config.web.host_port()
        # The preferences page lists every topic: the configured ones exist first.
        from daemon.notices.scheduler import ensure_default_topics
        try:
            await asyncio.to_thread(ensure_default_topics, self.ctx)
        except SQLAlchemyError as exc:
            # Serve anyway: /readyz is how an operator learns the database is down.
            log.warning("web: cannot check the CSMS topics: %s", str(exc).splitlines()[0][:200])
        while True:
            try:
                sock = bind(host, port)
                break
            except OSError as exc:
                log.error("web console cannot listen on %s:%d: %s (set [web] listen); retrying in %.0f s",
                          host, port, exc.strerror or exc, RETRY_BIND)
                try:
                    await asyncio.wait_for(stop.wait(), RETRY_BIND)
                    return
                except TimeoutError:
                    continue
        config = uvicorn.Config(self.app, lifespan="off", log_config=None, access_log=False,
                                server_header=False, timeout_keep_alive=5, timeout_graceful_shutdown=3,
                                limit_concurrency=200, h11_max_incomplete_event_size=16 * 1024)
        server = _Server(config)
        # uvicorn's start/stop lines repeat ours; its errors still show.
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
        logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
        public = self.ctx.config.csms.base_url
        log.info("web console on http://%s:%d (public links: %s)", host, port, public)
        watcher = asyncio.create_task(self._stop_when(stop, server))
        statistics = asyncio.create_task(self._keep_statistics(stop))
        try:
            await server.serve(sockets=[sock])
        finally:
            watcher.cancel()
            statistics.cancel()
            sock.close()

    async def _keep_statistics(self, stop: asyncio.Event) -> None:
        """On SQLite, refresh the planner's statistics at start and every few hours.

        Without them SQLite cannot tell that most triage items are open (or not) and picks
        plans that count 100,000 rows for one page; PostgreSQL's autovacuum does this itself.
        """
        if self.ctx.engine.dialect.name != "sqlite":
            return
        while not stop.is_set():
            try:
                await asyncio.to_thread(analyze, self.ctx)
            except SQLAlchemyError as exc:
                log.warning("web: could not refresh SQLite statistics: %s", str(exc).splitlines()[0][:200])
            try:
                await asyncio.wait_for(stop.wait(), STATISTICS_EVERY)
            except TimeoutError:
                pass

    @staticmethod
    async def _stop_when(stop: asyncio.Event, server: Any) -> None:
        await stop.wait()
        server.should_exit = True


def make_components(ctx: AppContext) -> list[Any]:
    """The web server, when ``[web] enabled``."""
    if not ctx.config.web.enabled:
        return []
    from daemon.notices.keys import KeyRing
    # The ring follows a rotation of the secret file (acedesk secrets rotate) without a restart.
    return [WebServer(ctx, KeyRing(ctx.config))]  # type: ignore[arg-type]
