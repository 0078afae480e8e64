"""The CSMS fan-out: sending one published notice to every subscriber it was
planned for, once, fast, and resumably.  :func:`publish` is the one entry
point; the CLI (``acedesk csms publish``) and the daemon's scheduler call it.

The notice is already ``publishing``: :func:`csms.service.start_publish`
allocated its number and wrote one delivery row per subscriber in one
transaction.  ``publish`` then

1. takes the notice's lease (another instance holding it: return at once);
2. sweeps the due deliveries in id order, ``chunk_size`` rows at a time (memory
   stays flat in the number of subscribers), personalises each message by
   splicing bytes (:class:`csms.message.MessageTemplate`) and sends it through
   the one way out (:mod:`daemon.delivery.sender`: reused, pipelined SMTP
   connections under ``[csms]`` connections and rates, or the spool folder
   ``csms/<number>/<subscriber>.eml`` when no relay is configured);
3. commits the results every ``mark_interval`` seconds in one short
   transaction that also renews the lease;
4. when a sweep finds nothing more due, sleeps until the next retry of a
   temporary failure is due (capped exponential back-off per recipient) and
   sweeps again, until no delivery is pending: then the notice is ``done``.

Exactly once, and its one window.  A delivery is marked ``sent`` only after
the relay's 250 for it; a kill before that leaves it pending and it is sent
on resume.  A kill after the 250 and before the commit of its mark resends
it: that window is the messages in flight (at most ``connections``) plus those
accepted since the last commit began -- ``mark_interval`` plus the commit's own
time, so rate x (50 ms + a few ms; under load on SQLite up to ~150 ms): a few
hundred messages at full speed, one or two at a throttled rate.  Each copy
has the same Message-ID, so a recipient's mail system may even fold a resend
away.  A new sweep starts only after every result of the previous one is
committed, so nothing still in flight is picked up twice by the same
publisher; and a publisher sends only while its lease is fresh by its own
clock (the lease is renewed at each commit), so a publisher that was paused
past its lease stops before another one takes over.  (A relay that times out
after the final dot is a ``temporary`` result and is retried: SMTP's own
duplicate window, see :mod:`daemon.delivery.smtp_pool`.)
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from csms import service
from csms.message import DOT_SAFE, MessageTemplate, Sender, TemplateSet
from csms.render import NoticeView
from csms.service import CsmsError, DueDelivery, Outcome
from csms.tokens import Signer
from daemon.config import Config
from daemon.notices import keys
from daemon.context import AppContext
from daemon.delivery.sender import Sender as MailSender, make_sender, retry_delay
from daemon.delivery.smtp_pool import PERMANENT, SENT, TEMPORARY, SendResult
from models.base import utcnow
from models.csms import DONE, PENDING, PUBLISHING, Notice
from models.session import transaction

log = logging.getLogger("acedesk.csms.fanout")

#: Seconds of history behind :attr:`Progress.rate`.
RATE_WINDOW = 5.0


@dataclass
class Progress:
    """What a progress bar or a log line needs."""

    notice_id: int
    number: int
    total: int
    sent: int
    failed: int
    pending: int
    #: Messages per second over the last few seconds.
    rate: float


# --- configuration -------------------------------------------------------------


def load_signer(config: Config) -> Signer:
    """The signer of unsubscribe tokens and VERP addresses (:mod:`daemon.notices.keys`); the
    one-click unsubscribe endpoint verifies with the same ring."""
    return keys.load_signer(config)


def sender_of(config: Config) -> Sender:
    """Who notices come from, where replies and bounces go, and the unsubscribe base URL."""
    desk = config.desk
    return Sender(domain=desk.domain, from_address=desk.csms_from_address,
                  request_address=desk.csms_request_address, bounce_address=desk.bounce_address,
                  base_url=config.csms.base_url)


def retry_at(config: Config, delivery: DueDelivery, now: dt.datetime) -> dt.datetime | None:
    """When to try a temporarily failed delivery again; None once ``give_up_hours`` have passed."""
    cfg = config.csms
    first = delivery.first_attempt_at or now
    if now - first >= dt.timedelta(hours=cfg.give_up_hours):
        return None
    return now + dt.timedelta(seconds=retry_delay(delivery.attempts + 1, cfg.retry_min, cfg.retry_max))


# --- the fan-out -------------------------------------------------------------------


@dataclass(frozen=True)
class _Start:
    held: bool
    number: int
    total: int
    counts: dict[str, int]
    view: list[NoticeView] | None


class _Fanout:
    """One run of :func:`publish`: its lease, its counters and its pending results."""

    def __init__(self, ctx: AppContext, notice_id: int, progress: Callable[[Progress], None] | None,
                 stop: asyncio.Event) -> None:
        self.config = ctx.config
        self.cfg = ctx.config.csms
        self.sessions: sessionmaker[Session] = ctx.sessions
        self.notice_id = notice_id
        self.on_progress = progress
        self.stop = stop
        # Per run, not per process: two runs in one process must not share a lease.
        self.owner = f"{ctx.instance}/{secrets.token_hex(4)}"
        self.number = 0
        self.total = 0
        self.sent = 0
        self.failed = 0
        self.results: list[Outcome] = []
        self.commit_lock = asyncio.Lock()
        self.lease_fresh_until = 0.0   # monotonic
        self.lease_renewed = asyncio.Event()
        self.lease_lost = False
        self.last_renewal = 0.0
        self.samples: collections.deque[tuple[float, int]] = collections.deque()
        self.notice: Notice | None = None
        self.done = False

    # -- database (each in a worker thread, each one short transaction) --

    def _start(self) -> _Start:
        """Take the lease; read the counts so far and, when ours, what rendering needs."""
        now = utcnow()
        with transaction(self.sessions) as s:
            notice = s.get(Notice, self.notice_id)
            if notice is None:
                raise CsmsError(f"no notice {self.notice_id}")
            if notice.status not in (PUBLISHING, DONE):
                raise CsmsError(f"notice {notice.id} is {notice.status}: start publishing it first (start_publish)")
            held = service.take_lease(s, notice.id, self.owner, now, self.cfg.lease_seconds)
            counts = service.counts(s, notice.id)
            view = None
            if held:
                s.refresh(notice)
                # Every published language version: each subscriber's is chosen when their turn comes.
                view = [service.view(s, v) for v in service.versions(s, notice)]
                s.expunge(notice)
                self.notice = notice
            return _Start(held, notice.number or 0, notice.total, counts, view)

    def _template(self, views: list[NoticeView]) -> TemplateSet:
        """The notice's language versions rendered once (and DKIM-prepared), ready to be personalised."""
        signer, key, seed = load_signer(self.config), keys.dkim_key(self.config), secrets.token_hex(6)
        ttl = self.cfg.unsubscribe_token_days * 86400.0
        return TemplateSet({v.language: MessageTemplate(v, sender_of(self.config), signer, ttl, boundary_seed=seed,
                                                        dkim=key) for v in reversed(views)},
                           default=views[0].language)

    def _fetch(self, after_id: int) -> list[DueDelivery]:
        assert self.notice is not None
        # A read (no transaction()): on SQLite a WAL snapshot that neither waits
        # for nor holds the write lock the result commits need.  A delivery seen
        # pending here and sent meanwhile cannot be: only this lease holder sends.
        with self.sessions() as s:
            return service.fetch_due(s, self.notice, after_id, self.cfg.chunk_size, utcnow())

    def _commit(self, outcomes: list[Outcome]) -> bool:
        """Record ``outcomes`` and renew the lease, in one transaction; return whether the lease is ours."""
        now = utcnow()
        with transaction(self.sessions) as s:
            # Once done, the lease went with the publishing state: nothing left to renew.
            held = self.done or service.take_lease(s, self.notice_id, self.owner, now, self.cfg.lease_seconds)
            service.record_outcomes(s, outcomes, now, notice_number=self.number)
        return held

    def _next_retry(self) -> tuple[dt.datetime | None, bool]:
        """When the next pending delivery is due, and whether the notice is done (nothing pending)."""
        now = utcnow()
        with transaction(self.sessions) as s:
            if service.finish_if_done(s, self.notice_id, now):
                return None, True
            return service.next_retry_at(s, self.notice_id), False

    def _finish(self) -> dict[str, int]:
        with transaction(self.sessions) as s:
            service.release_lease(s, self.notice_id, self.owner)
            return service.counts(s, self.notice_id)

    # -- results and lease --

    async def commit(self) -> None:
        """Commit every result gathered so far (and renew the lease); serialised, so it is also a flush."""
        async with self.commit_lock:
            outcomes, self.results = self.results, []
            started = time.monotonic()
            try:
                held = await asyncio.to_thread(self._commit, outcomes)
            except Exception:
                # Not lost: kept for the next commit.  Meanwhile the lease may run out, which stops sending.
                self.results[:0] = outcomes
                log.exception("CSMS #%s: could not record %d results; will try again", self.number, len(outcomes))
                return
            self.last_renewal = started
            if held:
                self.lease_fresh_until = self.fresh_until(started)
                self.lease_renewed.set()
            elif not self.lease_lost:
                self.lease_lost = True
                self.lease_renewed.set()
                log.warning("CSMS #%s: lease lost to another instance; stopping", self.number)
            self.report()

    def fresh_until(self, renewed_at: float) -> float:
        """Until when (monotonic) a lease renewed at ``renewed_at`` may be sent under.

        By our own clock, from before the renewal was asked for, less a margin: a publisher
        stalled past its lease stops sending before another instance can take over.
        """
        return renewed_at + self.cfg.lease_seconds - min(5.0, self.cfg.lease_seconds * 0.2)

    async def recorder(self) -> None:
        """Commit results every ``mark_interval``; renew the lease while idle, too."""
        renew_every = max(0.05, self.cfg.lease_seconds / 3)
        while True:
            await asyncio.sleep(self.cfg.mark_interval)
            if self.results or time.monotonic() - self.last_renewal >= renew_every:
                # Shielded: cancelling the recorder must not abandon a commit half-way.
                await asyncio.shield(self.commit())

    @property
    def halted(self) -> bool:
        """Stop asked for, or the lease lost: send nothing more."""
        return self.stop.is_set() or self.lease_lost

    async def lease_ok(self) -> bool:
        """Wait until the lease is fresh by our clock; False if it is lost or the run is stopping."""
        while time.monotonic() >= self.lease_fresh_until:
            if self.halted:
                return False
            self.lease_renewed.clear()
            stopped = asyncio.ensure_future(self.stop.wait())
            renewed = asyncio.ensure_future(self.lease_renewed.wait())
            try:
                await asyncio.wait([stopped, renewed], return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopped.cancel()
                renewed.cancel()
        return not self.halted

    def outcome(self, delivery: DueDelivery, result: SendResult, language: str | None = None) -> Outcome:
        if result.status == SENT:
            self.sent += 1
            return Outcome(delivery.id, delivery.subscriber_id, "sent", language=language)
        if result.status == PERMANENT:
            self.failed += 1
            return Outcome(delivery.id, delivery.subscriber_id, "permanent", result.detail, language=language)
        when = retry_at(self.config, delivery, utcnow())
        if when is None:
            self.failed += 1
            log.warning("CSMS #%s to %s: gave up after %g h: %s", self.number, delivery.email,
                        self.cfg.give_up_hours, result.detail)
        return Outcome(delivery.id, delivery.subscriber_id, "temporary", result.detail, when, language)

    def progress(self, rate: float | None = None) -> Progress:
        done = self.sent + self.failed
        if rate is None:
            now = time.monotonic()
            self.samples.append((now, done))
            while len(self.samples) > 2 and self.samples[0][0] < now - RATE_WINDOW:
                self.samples.popleft()
            span = now - self.samples[0][0]
            rate = (done - self.samples[0][1]) / span if span > 0 else 0.0
        return Progress(self.notice_id, self.number, self.total, self.sent, self.failed,
                        max(0, self.total - done), round(rate, 1))

    def report(self, progress: Progress | None = None) -> None:
        if self.on_progress is None:
            return
        try:
            self.on_progress(progress or self.progress())
        except Exception:  # noqa: BLE001 - a broken progress bar must not stop the recorder
            log.exception("CSMS #%s: progress callback failed", self.number)

    # -- sending --

    async def worker(self, queue: asyncio.Queue[DueDelivery | None], sender: MailSender,
                     template: TemplateSet) -> None:
        while (delivery := await queue.get()) is not None:
            if not await self.lease_ok():
                continue   # stopping: what is queued stays pending for the next run
            if not delivery.still_wanted:
                self.failed += 1
                self.results.append(Outcome(delivery.id, delivery.subscriber_id, "skipped",
                                            "not sent: unsubscribed or disabled before delivery"))
                continue
            try:
                mail_from, data = template.build(delivery.email, delivery.subscriber_id, delivery.topics,
                                                 delivery.language)
            except ValueError as exc:
                self.failed += 1
                self.results.append(Outcome(delivery.id, delivery.subscriber_id, "permanent", f"554 {exc}"))
                continue
            try:
                result = await sender.send(mail_from, [delivery.email], data,
                                           f"csms/{self.number}/{delivery.subscriber_id}.eml", dot_safe=DOT_SAFE)
            except Exception as exc:  # noqa: BLE001 - a bug here must not stall the sweep; retried later
                log.exception("CSMS #%s to %s: unexpected error", self.number, delivery.email)
                result = SendResult(TEMPORARY, 0, f"{type(exc).__name__}: {exc}")
            self.results.append(self.outcome(delivery, result, template.language_for(delivery.language)))

    async def sweep(self, sender: MailSender, template: TemplateSet) -> None:
        """Send every delivery due now, in id order, and commit every result."""
        queue: asyncio.Queue[DueDelivery | None] = asyncio.Queue(maxsize=2 * self.cfg.chunk_size)
        workers = [asyncio.create_task(self.worker(queue, sender, template))
                   for _ in range(max(1, self.cfg.connections))]
        try:
            after = 0
            while not self.halted:
                rows = await asyncio.to_thread(self._fetch, after)
                if not rows:
                    break
                after = rows[-1].id
                for row in rows:
                    await queue.put(row)
                    if self.halted:
                        break
            for _ in workers:
                await queue.put(None)
            await asyncio.gather(*workers)
        finally:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            # The barrier: a new sweep must not pick up a delivery whose result is not committed.
            await self.commit()

    async def wait_for_retry(self, due: dt.datetime | None) -> None:
        """Sleep until ``due`` (the lease is renewed meanwhile), or until stopped or the lease is lost."""
        delay = max(0.0, (due - utcnow()).total_seconds()) if due else self.cfg.mark_interval
        if delay >= 1.0:
            log.info("CSMS #%s: %d pending; next retry in %.1f s", self.number,
                     self.total - self.sent - self.failed, delay)
        until = time.monotonic() + delay
        # In slices, so that a lost lease ends the wait too.
        while not self.halted and (left := until - time.monotonic()) > 0:
            try:
                async with asyncio.timeout(min(left, 1.0)):
                    await self.stop.wait()
            except TimeoutError:
                pass

    async def run(self) -> Progress:
        asked = time.monotonic()
        start = await asyncio.to_thread(self._start)
        self.number, self.total = start.number, start.total
        self.sent, self.failed = start.counts.get("sent", 0), start.counts.get("failed", 0)
        if not start.held or start.view is None:
            log.info("CSMS #%s: not publishing here (done, not publishing, or leased by another instance)",
                     self.number)
            return self.progress(rate=0.0)
        self.lease_fresh_until = self.fresh_until(asked)
        self.last_renewal = asked
        try:
            template = await asyncio.to_thread(self._template, start.view)
            sender = make_sender(self.config, connections=self.cfg.connections,
                                 rate_per_second=self.cfg.rate_per_second, hourly_cap=self.cfg.hourly_cap)
        except BaseException:
            await asyncio.to_thread(self._finish)
            raise
        recorder = asyncio.create_task(self.recorder())
        started = time.monotonic()
        try:
            while not self.halted:
                await self.sweep(sender, template)
                if self.halted:
                    break
                due, self.done = await asyncio.to_thread(self._next_retry)
                if self.done:
                    break
                await self.wait_for_retry(due)
        finally:
            recorder.cancel()
            await asyncio.gather(recorder, return_exceptions=True)
            await asyncio.shield(self.commit())
            await sender.close()
            counts = await asyncio.to_thread(self._finish)
        self.sent, self.failed = counts.get("sent", 0), counts.get("failed", 0)
        elapsed = time.monotonic() - started
        final = self.progress(rate=(self.sent + self.failed - start.counts.get("sent", 0)
                                    - start.counts.get("failed", 0)) / elapsed if elapsed > 0 else 0.0)
        final.pending = counts.get(PENDING, 0)
        log.info("CSMS #%s %s: %d sent, %d failed, %d pending", self.number,
                 "done" if self.done else "paused", final.sent, final.failed, final.pending)
        self.report(final)
        return final


async def publish(ctx: AppContext, notice_id: int, *, progress: Callable[[Progress], None] | None = None,
                  stop: asyncio.Event | None = None) -> Progress:
    """Fan notice ``notice_id`` (already ``publishing``) out to its subscribers; return the final counts.

    Returns when every delivery is sent or failed permanently (the notice is
    then ``done``), or, with deliveries still pending, when ``stop`` is set,
    the lease is lost, or another instance holds it already; a later call
    resumes.  ``progress`` is called after each commit of results.
    """
    return await _Fanout(ctx, notice_id, progress, stop or asyncio.Event()).run()

