"""The composition root and supervisor of ``acedesk run``.

Builds the components (pipeline worker, IMAP watchers, outbox sender, CSMS
runner, ingress last), runs each as a supervised task that is restarted with
capped exponential backoff when it crashes, tells systemd when it is ready,
pings the watchdog, reloads on SIGHUP, and on SIGTERM/SIGINT stops accepting,
drains in-flight work for ``shutdown_timeout`` seconds, cancels what is left
and exits 0.  A second signal forces the exit.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Sequence
from typing import Any

from daemon import duties
from daemon.context import AppContext
from daemon.delivery import outbox
from daemon.imap import watcher as imap
from daemon.instance import hold_database, release_database, release_dead_leases
from daemon.intake import ingress
from daemon.notices import scheduler
from daemon.pipeline import build_stages
from daemon.processes import WorkerProcesses
from daemon.runner import Component, backoff, run_loop, wait_any
from daemon.web import server as web
from daemon.sdnotify import Notifier
from daemon.signals import EarlyStop
from daemon.worker import Stage, run_round
from models.migrate import current_revisions, head_revisions

log = logging.getLogger("acedesk.app")

#: Seconds without a finished pipeline round after which the systemd watchdog is no longer pinged
#: (a round is one batch per stage; an idle round ends after ``[pipeline] poll_interval``).
PIPELINE_STALL = 120.0


class PipelineWorker:
    """Runs the pipeline stages whenever there is work, in a worker thread."""

    name = "pipeline"

    def __init__(self, ctx: AppContext, stages: Sequence[Stage]) -> None:
        self.ctx = ctx
        self.stages = list(stages)
        #: When a round last finished (work done or none found): the watchdog's sign of life.
        self.alive_at = time.monotonic()

    def run_once(self) -> int:
        """A fused batch of new mail, then one batch per stage (:func:`daemon.worker.run_round`)."""
        return run_round(self.ctx.sessions, self.stages, self.ctx.config.pipeline)

    async def run(self, stop: asyncio.Event) -> None:
        async def once() -> int:
            handled = await asyncio.to_thread(self.run_once)
            self.alive_at = time.monotonic()
            return handled

        await run_loop(self.name, once, stop, wake=self.ctx.wakeup("pipeline"),
                       idle=self.ctx.config.pipeline.poll_interval)


def pipeline_component(ctx: AppContext) -> Component:
    """Return the pipeline: worker processes (``[pipeline] processes``), the stages built once here first."""
    # Built here too so that a configuration error (a bad policy rule, an unreadable secret) stops
    # 'acedesk run' at start with its one line, instead of crashing every worker in turn; and so
    # that a generated secret is written once, before several workers would race to write it.
    hooks = len(ctx.reload_hooks)
    build_stages(ctx)
    del ctx.reload_hooks[hooks:]  # what those stages registered: the workers reload their own
    return WorkerProcesses(ctx)


def build_components(ctx: AppContext) -> list[Component]:
    """Return every component in start order (ingress last: accept mail only when all else runs)."""
    components: list[Component] = [pipeline_component(ctx)]
    components += outbox.make_components(ctx)
    components += scheduler.make_components(ctx)
    components += duties.make_components(ctx)
    components += imap.make_components(ctx)
    components += web.make_components(ctx)
    components += ingress.make_components(ctx)
    return components


class Supervisor:
    """Runs components, restarts crashed ones, and shuts everything down in order."""

    def __init__(self, ctx: AppContext, components: Sequence[Component], notifier: Notifier | None = None,
                 early: EarlyStop | None = None) -> None:
        self.ctx = ctx
        self.components = list(components)
        self.notifier = notifier or Notifier()
        self.early = early
        self.stop = asyncio.Event()
        self.force = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []
        self._reloads: set[asyncio.Task[None]] = set()

    async def _supervise(self, component: Component) -> None:
        cfg = self.ctx.config.daemon
        crashes = 0
        while not self.stop.is_set():
            try:
                await component.run(self.stop)
                if self.stop.is_set():
                    return
                log.warning("component %s returned without being asked to stop; restarting", component.name)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("component %s crashed; restarting in %.0f s", component.name,
                              backoff(crashes + 1, cfg.restart_backoff_min, cfg.restart_backoff_max))
            crashes += 1
            await wait_any(self.stop, None, backoff(crashes, cfg.restart_backoff_min, cfg.restart_backoff_max))

    def request_stop(self, signame: str = "request") -> None:
        if self.stop.is_set():
            log.warning("second %s: forcing exit", signame)
            self.force.set()
            return
        log.info("%s received: draining (up to %.0f s)", signame, self.ctx.config.daemon.shutdown_timeout)
        self.notifier.stopping()
        self.stop.set()

    def reload(self) -> None:
        """Start a reload (SIGHUP) without blocking the event loop."""
        # Loading a model takes a noticeable fraction of a second: in a thread,
        # so the ingress and the watchdog pings carry on meanwhile.
        self.notifier.reloading()
        task = asyncio.get_running_loop().create_task(asyncio.to_thread(self._run_reload_hooks))
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    def _run_reload_hooks(self) -> None:
        log.info("SIGHUP: reloading templates and models")
        for hook in self.ctx.reload_hooks:
            try:
                hook()
            except Exception:
                log.exception("reload hook %r failed; keeping the previous state", hook)
        self.notifier.ready("reloaded")

    def healthy(self, now: float | None = None) -> bool:
        """Whether the pipeline makes progress or has nothing to do: a round finished within
        :data:`PIPELINE_STALL` seconds.  A stuck pipeline stops the watchdog pings, and systemd
        restarts the daemon."""
        now = time.monotonic() if now is None else now
        return all(now - c.alive_at < PIPELINE_STALL for c in self.components if isinstance(c, PipelineWorker))

    async def _watchdog(self) -> None:
        interval = self.notifier.watchdog_interval()
        if not interval:
            return
        while not self.stop.is_set():
            if self.healthy():
                self.notifier.watchdog()
            else:
                log.error("the pipeline has not finished a round for %.0f s: no watchdog ping", PIPELINE_STALL)
            try:
                await asyncio.wait_for(self.stop.wait(), timeout=interval)
            except TimeoutError:
                pass

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for signum, name in ((signal.SIGTERM, "SIGTERM"), (signal.SIGINT, "SIGINT")):
            loop.add_signal_handler(signum, self.request_stop, name)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        try:
            if self.early is not None and self.early.signame:
                self.request_stop(self.early.signame)  # it came while we were starting
            for component in self.components:
                self.tasks.append(asyncio.create_task(self._supervise(component), name=component.name))
            watchdog = asyncio.create_task(self._watchdog())
            names = ", ".join(c.name for c in self.components)
            log.info("acedesk running (%s) as %s", names, self.ctx.instance)
            self.notifier.ready(f"running: {names}")
            await self.stop.wait()
            await self._drain()
            watchdog.cancel()
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(signum)
            if self.early is not None:
                self.early.install()  # we are stopping anyway: a late signal is only noted
        log.info("acedesk stopped")
        return 0

    async def _drain(self) -> None:
        timeout = self.ctx.config.daemon.shutdown_timeout
        everything = asyncio.ensure_future(asyncio.gather(*self.tasks, return_exceptions=True))
        force = asyncio.ensure_future(self.force.wait())
        waiters: list[asyncio.Future[Any]] = [everything, force]
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        force.cancel()
        pending = [t for t in self.tasks if not t.done()]
        if pending:
            log.warning("cancelling %d component(s) still running after drain: %s", len(pending),
                        ", ".join(t.get_name() for t in pending))
            for task in pending:
                task.cancel()
        await asyncio.gather(everything, return_exceptions=True)


def check_schema(ctx: AppContext) -> str | None:
    """Return why the database is not ready for this code, or None."""
    current = current_revisions(ctx.engine)
    heads = head_revisions(ctx.engine)
    if current == heads:
        return None
    if not current:
        return "the database has no tables yet: run 'acedesk db upgrade'"
    return f"the database is at {sorted(current)}, this code needs {sorted(heads)}: run 'acedesk db upgrade'"


async def run_daemon(ctx: AppContext, early: EarlyStop | None = None) -> int:
    """Run the daemon until SIGTERM/SIGINT; return the exit status.

    ``early`` holds a stop signal that arrived before the event loop took over.

    Raises:
        AlreadyRunning: another daemon holds this SQLite database.
    """
    lock = hold_database(ctx.engine)
    try:
        await asyncio.to_thread(release_dead_leases, ctx.sessions)
        components = build_components(ctx)
        supervisor = Supervisor(ctx, components, early=early)
        try:
            return await supervisor.run()
        finally:
            supervisor.notifier.close()
    finally:
        release_database(lock)
