"""Worker processes for the pipeline's CPU stages, and their supervision.

``acedesk run`` keeps the I/O (IMAP, the ingress, delivery, the scheduler,
HTTP) on its event loop and runs the stages (parse, classify, respond) in
``[pipeline] processes`` worker processes (default: one per core), so that
parsing and the model use every core instead of one.  Each worker builds its
own engine and stages -- the model is loaded once per process -- and claims
batches by state (:mod:`daemon.worker`).

The main process:

* wakes the workers when new mail is stored, and is woken by them when a
  batch put replies in the outbox (a pipe per worker);
* forwards SIGHUP, so every worker reloads the templates and the model;
* restarts a worker that dies (capped backoff when it keeps dying).  Its
  claims need no taking back: a claim is its transaction, which the database
  rolls back when the process's connection closes, so the rows are claimable
  the moment it is gone;
* on SIGTERM asks the workers to finish their batch and stop, and kills what
  is still running after ``shutdown_timeout`` (the workers ignore SIGTERM and
  Ctrl-C themselves: systemd and the terminal send them to every process).

A worker exits by itself when its parent is gone, so an orphan never keeps
claiming work after the daemon was killed.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any

from daemon.config import Config
from daemon.context import AppContext, make_context
from daemon.logs import setup_logging
from daemon.metrics import STAGE_MESSAGES, STAGE_SECONDS
from daemon.runner import backoff, wait_any
from daemon.worker import Share
from daemon.worker import run_round as worker_round

log = logging.getLogger("acedesk.processes")

#: Spawned, not forked: the main process has threads (the event loop's pool, the IMAP mover).
_MP = multiprocessing.get_context("spawn")


@dataclass
class _Worker:
    """One worker process and the main process's ends of its signals."""

    index: int
    process: Any = None
    wake: Any = None  # multiprocessing.Event: there may be new work
    inbox: Any = None  # Connection: wake-up names sent by the worker
    started: float = 0.0
    restarts: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)
    #: Set when the worker has loaded the model and built its stages (it reports :class:`Ready`).
    ready: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(frozen=True)
class Ready:
    """What a worker reports once it can take work: how long it took and the CPU it spent."""

    index: int
    seconds: float
    cpu_seconds: float


class WorkerProcesses:
    """The supervisor component that runs the pipeline in worker processes."""

    name = "pipeline"

    def __init__(self, ctx: AppContext, count: int | None = None) -> None:
        self.ctx = ctx
        self.count = count or ctx.config.pipeline.worker_processes()
        self.workers = [_Worker(index=i) for i in range(self.count)]
        self.stopping = _MP.Event()
        #: CPU seconds the workers spent starting (imports, the model): not the pipeline's per-message cost.
        self.startup_cpu_seconds = 0.0
        ctx.reload_hooks.append(self.reload)

    async def wait_ready(self) -> None:
        """Return once every worker has started and loaded its stages."""
        await asyncio.gather(*(worker.ready.wait() for worker in self.workers))

    # --- the main process's side --------------------------------------------------------------

    def pids(self) -> list[int]:
        """Return the pids of the running workers."""
        return [w.process.pid for w in self.workers if w.process is not None and w.process.is_alive()]

    def reload(self) -> None:
        """Pass SIGHUP on to every worker (each reloads its own templates and model)."""
        for worker in self.workers:
            if worker.process is not None and worker.process.is_alive():
                os.kill(worker.process.pid, signal.SIGHUP)
                worker.wake.set()

    def _start(self, worker: _Worker) -> None:
        receive, send = _MP.Pipe(duplex=False)
        worker.wake = _MP.Event()
        level = logging.getLevelName(logging.getLogger().level)
        worker.process = _MP.Process(
            target=worker_main, name=f"acedesk-worker-{worker.index}",
            args=(self.ctx.config, worker.index, self.count, worker.wake, self.stopping, send, os.getpid(), level),
            daemon=True)
        worker.process.start()
        send.close()  # the worker holds the only writing end: EOF here when it dies
        worker.inbox = receive
        worker.started = time.monotonic()
        worker.wake.set()
        asyncio.get_running_loop().add_reader(receive.fileno(), self._read, worker)
        log.info("pipeline worker %d started (pid %d)", worker.index, worker.process.pid)

    def _read(self, worker: _Worker) -> None:
        try:
            name = worker.inbox.recv()
        except (EOFError, OSError):
            asyncio.get_running_loop().remove_reader(worker.inbox.fileno())
            worker.done.set()
            return
        if isinstance(name, Ready):
            worker.ready.set()
            self.startup_cpu_seconds += name.cpu_seconds
            log.info("pipeline worker %d ready in %.1f s (model loaded, stages built)", name.index, name.seconds)
            return
        if isinstance(name, tuple):  # a batch's figures, for this process's /metrics
            _stage, count, seconds = name
            STAGE_MESSAGES.labels(_stage).inc(count)
            STAGE_SECONDS.labels(_stage).observe(seconds)
            return
        self.ctx.wake(name)

    async def _forward_wakeups(self, stop: asyncio.Event) -> None:
        wake = self.ctx.wakeup("pipeline")
        while not stop.is_set():
            await wait_any(stop, wake, 3600.0)
            wake.clear()
            for worker in self.workers:
                if worker.wake is not None:
                    worker.wake.set()

    async def _supervise(self, worker: _Worker, stop: asyncio.Event) -> None:
        cfg = self.ctx.config.daemon
        crashes = 0
        while not stop.is_set():
            worker.done = asyncio.Event()
            worker.ready.clear()
            self._start(worker)
            while not (stop.is_set() or worker.done.is_set()):
                await wait_any(stop, worker.done, 3600.0)
            if stop.is_set():
                return
            await asyncio.to_thread(worker.process.join, 5.0)
            worker.restarts += 1
            # One that ran for a while is restarted at once; one that keeps dying, with growing pauses.
            crashes = 0 if time.monotonic() - worker.started > cfg.restart_backoff_max else crashes + 1
            delay = backoff(crashes, cfg.restart_backoff_min, cfg.restart_backoff_max) if crashes else 0.0
            log.error("pipeline worker %d (pid %d) died (exit %s); its claims are back in the queue, "
                      "restarting in %.1f s", worker.index, worker.process.pid, _exit(worker.process.exitcode),
                      delay)
            self.ctx.wake("pipeline")  # the other workers pick up its rows now
            await wait_any(stop, None, delay)

    async def run(self, stop: asyncio.Event) -> None:
        forward = asyncio.ensure_future(self._forward_wakeups(stop))
        tasks = [asyncio.ensure_future(self._supervise(w, stop)) for w in self.workers]
        try:
            await stop.wait()
        finally:
            await self._stop_all()
            forward.cancel()
            for task in tasks:
                task.cancel()
            await asyncio.gather(forward, *tasks, return_exceptions=True)

    async def _stop_all(self) -> None:
        self.stopping.set()
        running = [w for w in self.workers if w.process is not None and w.process.is_alive()]
        for worker in running:
            worker.wake.set()
        timeout = self.ctx.config.daemon.shutdown_timeout
        deadline = time.monotonic() + timeout
        for worker in running:
            await asyncio.to_thread(worker.process.join, max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                log.warning("pipeline worker %d did not stop within %.0f s; killing it", worker.index, timeout)
                worker.process.kill()
                await asyncio.to_thread(worker.process.join, 5.0)
        loop = asyncio.get_running_loop()
        for worker in self.workers:
            if worker.inbox is not None:
                loop.remove_reader(worker.inbox.fileno())
                worker.inbox.close()


def _exit(code: int | None) -> str:
    if code is not None and code < 0:
        return signal.Signals(-code).name
    return str(code)


# --- the worker process's side ------------------------------------------------------------------


def worker_main(config: Config, index: int, count: int, wake: Any, stopping: Any,
                outbox: multiprocessing.connection.Connection, parent: int, level: str) -> None:
    """Run the pipeline stages until the main process says stop (or is gone)."""
    import daemon.worker as worker_module
    from daemon.pipeline import build_stages  # the stages import the domain; only workers need them

    # Ctrl-C reaches the whole process group, and systemd's stop the whole cgroup: the main
    # process decides when a worker stops (``stopping``), after its batch.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    reload_requested: list[bool] = []
    signal.signal(signal.SIGHUP, lambda *_: reload_requested.append(True))
    setup_logging(config.logging, level)
    _name_worker_in_logs(index)
    began = time.monotonic()
    ctx = make_context(config)
    ctx.instance = f"{ctx.instance}/w{index}"
    ctx.remote_wake = lambda name: _send(outbox, name)
    stages = build_stages(ctx)
    _send(outbox, Ready(index, time.monotonic() - began, time.process_time()))  # type: ignore[arg-type]
    # The main process serves /metrics: a worker's figures go there, not to its own registry.
    forward = _Forwarded(outbox)
    worker_module.STAGE_MESSAGES, worker_module.STAGE_SECONDS = forward, forward  # type: ignore[assignment]
    # PostgreSQL's SKIP LOCKED keeps workers apart; SQLite's one write lock needs shares (daemon.worker).
    share = Share(index, count) if ctx.engine.dialect.name == "sqlite" else None
    cfg = config.pipeline
    failures = 0
    try:
        while not stopping.is_set() and os.getppid() == parent:
            if reload_requested:
                reload_requested.clear()
                for hook in ctx.reload_hooks:
                    try:
                        hook()
                    except Exception:
                        log.exception("reload hook %r failed; keeping the previous state", hook)
            wake.clear()
            try:
                handled = run_round(ctx, stages, share, stopping)
            except Exception:  # the database gone, say: as run_loop does, log and try again later
                failures += 1
                delay = backoff(failures, 1.0, 60.0)
                log.exception("pipeline worker %d: failed; trying again in %.1f s", index, delay)
                wake.wait(delay)
                continue
            failures = 0
            if not handled:
                wake.wait(cfg.poll_interval)
    finally:
        ctx.dispose()


def run_round(ctx: AppContext, stages: list[Any], share: Share | None, stopping: Any) -> int:
    """A fused batch of new mail, then one batch per stage (:func:`daemon.worker.run_round`)."""
    return worker_round(ctx.sessions, stages, ctx.config.pipeline, share, stopping.is_set)


def _name_worker_in_logs(index: int) -> None:
    """Suffix every logger name with ``[w<index>]``: which worker did what, in one shared log."""
    def rename(record: logging.LogRecord) -> bool:
        record.name = f"{record.name}[w{index}]"
        return True

    for handler in logging.getLogger().handlers:
        handler.addFilter(rename)


class _Forwarded:
    """Stands in for the stage instruments in a worker: ``labels(stage).inc(n)`` then
    ``labels(stage).observe(seconds)`` send one ``(stage, n, seconds)`` to the main process."""

    def __init__(self, outbox: multiprocessing.connection.Connection) -> None:
        self.outbox = outbox
        self.counts: dict[str, int] = {}
        self.stage = ""

    def labels(self, stage: str) -> "_Forwarded":
        self.stage = stage
        return self

    def inc(self, count: int) -> None:
        self.counts[self.stage] = count

    def observe(self, seconds: float) -> None:
        _send(self.outbox, (self.stage, self.counts.pop(self.stage, 0), seconds))  # type: ignore[arg-type]


def _send(outbox: multiprocessing.connection.Connection, name: str) -> None:
    try:
        outbox.send(name)
    except OSError:  # the main process is gone; the loop above notices and exits
        pass
