"""The CSMS scheduler: publishes what is due, and writes the archive the CLI shares
(the one-click unsubscribe pages are served by :mod:`daemon.web.public`).

The scheduler sweeps every ``[csms] scheduler_interval`` seconds, and at once
when something calls ``ctx.wake("csms")``:

1. every scheduled notice whose time has come is started
   (:func:`csms.service.start_publish`: number and delivery rows in one
   transaction), flagged late when that is more than ``late_after`` after its
   time -- which is also what happens to a notice that fell due while the
   daemon was down: it goes out on start, once, flagged late;
2. every notice in state ``publishing`` without a task here gets one running
   :func:`daemon.notices.fanout.publish` (its senders claim deliveries in
   chunks, so instances and the CLI share a notice and nobody gets it twice;
   a crash leaves the notice ``publishing`` and the next sweep resumes it);
3. when a publish finishes, the static archive is rewritten.

On stop the publish tasks see the same stop event, record what they sent,
and return; the scheduler waits for them (the supervisor's drain).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
from pathlib import Path
from typing import Any

from sqlalchemy import select

from csms import archive, service
from csms.render import to_et
from daemon.notices import fanout
from daemon.config import Config
from daemon.context import AppContext
from daemon.runner import run_loop

from models.base import utcnow
from models.csms import (
    DONE,
    DRAFT,
    PUBLISHING,
    SCHEDULED,
    Notice,
)
from models.session import transaction

log = logging.getLogger("acedesk.csms")

def ensure_default_topics(ctx: AppContext) -> None:
    """Create the configured ``default_topics`` that do not exist yet (idempotent)."""
    with transaction(ctx.sessions) as session:
        service.ensure_topics(session, ctx.config.csms.default_topics)


def archive_dir(config: Config) -> Path:
    return config.path(config.daemon.state_dir) / config.csms.archive_dir


def write_archive(ctx: AppContext) -> tuple[Path, int]:
    """Rewrite the static archive of published notices; return ``(folder, notices)``.

    Each file is written beside its final name and renamed, so a web server
    reading the folder never serves half a page.
    """
    with ctx.sessions() as session:
        notices = list(session.scalars(select(Notice).where(Notice.status.in_((PUBLISHING, DONE)))
                                       .where(Notice.number.is_not(None))))
        views = [service.view(session, n) for n in notices]
    base = ctx.config.csms.base_url.rstrip("/") + "/archive"
    files = archive.build_archive(views, base)
    root = archive_dir(ctx.config)
    for relative, text in files.items():
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, target)
    return root, len(views)


def start_due(ctx: AppContext, now: dt.datetime | None = None) -> list[int]:
    """Start every scheduled notice that is due; return their ids.

    Each notice is started in its own transaction, so one that cannot start
    (cancelled meanwhile, a database error) does not hold back the others.
    """
    cfg = ctx.config.csms
    now = now or utcnow()
    with ctx.sessions() as session:
        due = service.due_notices(session, now)
    started = []
    for notice_id in due:
        try:
            with transaction(ctx.sessions) as session:
                notice = session.get(Notice, notice_id)
                if notice is None:
                    continue
                service.start_publish(session, notice, now, number_start=cfg.number_start,
                                      late_after=cfg.late_after)
                late = notice.late
                number = notice.number
                scheduled = notice.scheduled_at
            if late and scheduled is not None:
                log.warning("CSMS #%s (notice %s) was due %s and goes out %s late", number, notice_id,
                            f"{to_et(scheduled):%Y-%m-%d %H:%M} ET", _duration(now - scheduled))
            started.append(notice_id)
        except service.CsmsError as exc:
            _not_started(ctx, notice_id, now, exc)
    return started


def _not_started(ctx: AppContext, notice_id: int, now: dt.datetime, exc: service.CsmsError) -> None:
    """A due notice nobody would receive goes back to draft, so that it never goes out by surprise
    when someone subscribes months later.  (One held for its translation is not due until it exists.)"""
    with transaction(ctx.sessions) as session:
        notice = session.get(Notice, notice_id)
        if notice is None or notice.status != SCHEDULED:
            return
        notice.status = DRAFT
    log.warning("notice %s not published; back to draft: %s", notice_id, exc)


def _duration(delta: dt.timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours < 48 else f"{hours // 24} days {hours % 24} h"


def publishing_ids(ctx: AppContext) -> list[int]:
    with ctx.sessions() as session:
        return service.publishing_notices(session)


# --- the scheduler ----------------------------------------------------------------------


class Scheduler:
    """Starts due notices and runs one fan-out task per publishing notice."""

    name = "csms-scheduler"

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self.tasks: dict[int, asyncio.Task[None]] = {}

    async def run(self, stop: asyncio.Event) -> None:
        async def once() -> int:
            await self.sweep(stop)
            return 0   # a sweep per interval (or wake-up), whatever it found

        try:
            await run_loop(self.name, once, stop, wake=self.ctx.wakeup("csms"),
                           idle=self.ctx.config.csms.scheduler_interval)
        finally:
            # Drain: the tasks saw ``stop`` too; they record what was sent and return.
            if self.tasks:
                await asyncio.gather(*self.tasks.values(), return_exceptions=True)

    async def sweep(self, stop: asyncio.Event) -> None:
        """One round: start what is due, and make sure every publishing notice has a task."""
        await asyncio.to_thread(start_due, self.ctx)
        for notice_id in await asyncio.to_thread(publishing_ids, self.ctx):
            task = self.tasks.get(notice_id)
            if task is not None and not task.done():
                continue
            self.tasks[notice_id] = asyncio.create_task(self._publish(notice_id, stop),
                                                        name=f"csms-publish-{notice_id}")

    async def _publish(self, notice_id: int, stop: asyncio.Event) -> None:
        try:
            progress = await fanout.publish(self.ctx, notice_id, stop=stop)
            if progress.pending == 0:
                await self._rewrite_archive()
        except asyncio.CancelledError:
            raise
        except Exception:
            # The notice stays 'publishing'; the next sweep tries again.
            log.exception("publishing notice %s failed; retrying at the next sweep", notice_id)
        finally:
            self.tasks.pop(notice_id, None)

    async def _rewrite_archive(self) -> None:
        try:
            root, count = await asyncio.to_thread(write_archive, self.ctx)
            log.info("CSMS archive rewritten: %d notices in %s", count, root)
        except OSError as exc:  # the archive is a convenience; the notice went out
            log.error("could not rewrite the CSMS archive: %s", exc)


def make_components(ctx: AppContext) -> list[Any]:
    """Return this area's long-running components for the supervisor."""
    return [Scheduler(ctx)]
