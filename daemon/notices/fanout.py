"""The CSMS fan-out: sending one published notice to every subscriber it was
planned for, once, fast, resumably, and on every core.  :func:`publish` is
the one entry point; the CLI (``acedesk csms publish``) and the daemon's
scheduler call it.

The notice is already ``publishing``: :func:`csms.service.start_publish`
allocated its number and wrote one delivery row per subscriber in one
transaction.  ``publish`` then

1. takes back at once what dead sender processes of this host held
   (:func:`take_over`: their journals say what the relay accepted);
2. runs up to ``[csms] fanout_processes`` senders (default: one per core;
   one in this process, the others spawned, fewer when the notice is small),
   which share ``connections``, ``rate_per_second`` and ``hourly_cap``;
3. each sender claims ``chunk_size`` due deliveries at a time with a lease
   (:func:`csms.service.claim_due`: ``BEGIN IMMEDIATE`` on SQLite, ``FOR
   UPDATE SKIP LOCKED`` on PostgreSQL, so that the senders of several
   instances share a notice too), renders the notice once per language (and
   prepares its DKIM signing: signatures are spread over the processes),
   personalises each copy by splicing bytes (:mod:`csms.message`) and sends it
   through the one way out (:mod:`daemon.delivery.sender`; one session per
   connection held for the whole sweep, each next copy's envelope written with
   the last one's final dot when it is queued already), and commits the
   results every ``mark_interval`` seconds in one short transaction that
   also renews its claims' lease once a third of it has passed;
4. when nothing is claimable, waits for the next retry of a temporary failure
   (capped exponential back-off per recipient) or for other instances'
   claims, until no delivery is pending: then the notice is ``done``.

Exactly once.  A delivery is marked ``sent`` only after the relay's 250 for
it; a kill before that leaves it pending and it is sent again.  Right after
the 250, before that connection takes another message (the next envelope may
be there already, never the next content), the sender appends the
delivery to its journal (:mod:`daemon.notices.journal`), which a SIGKILL
cannot undo; whoever takes over a dead sender's claims first records what its
journal says was accepted.  A kill can therefore resend at most the message in
flight on each connection.  (When the dead process's host is another one, its
claims come back when their lease runs out, and its journal is out of reach:
then the window is also what it sent since its last commit, ``mark_interval``
of sending.)  A sender sends only while its claims' lease is fresh by its own
clock (the lease is renewed at each commit), so a sender paused past its lease
stops before another one can take its deliveries.  Each copy has the same
Message-ID, so a recipient's mail system may even fold a resend away.  (A
relay that times out after the final dot is a ``temporary`` result and is
retried: SMTP's own duplicate window, see :mod:`daemon.delivery.smtp_pool`.)
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import logging
import math
import multiprocessing
import os
import secrets
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from csms import service
from csms.message import DOT_SAFE, MessageTemplate, Sender, TemplateSet
from csms.render import NoticeView
from csms.service import CsmsError, DueDelivery, Outcome
from csms.tokens import Signer
from daemon.config import Config
from daemon.context import AppContext, make_context
from daemon.delivery.sender import Sender as MailSender, make_sender, retry_delay
from daemon.delivery.smtp_pool import PERMANENT, SENT, TEMPORARY, SendResult
from daemon.logs import setup_logging
from daemon.notices import journal, keys
from models.base import utcnow
from models.csms import DONE, FAILED, PENDING, PUBLISHING, Notice
from models.csms import SENT as DELIVERY_SENT
from models.session import transaction

log = logging.getLogger("acedesk.csms.fanout")

#: Seconds of history behind :attr:`Progress.rate`.
RATE_WINDOW = 5.0
#: Spawned, not forked: the daemon's main process has threads.
_MP = multiprocessing.get_context("spawn")


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


def sender_processes(config: Config) -> int:
    """How many senders one notice gets at most: ``[csms] fanout_processes``, 0 = one per core."""
    return config.csms.fanout_processes if config.csms.fanout_processes > 0 else (os.cpu_count() or 1)


def journal_folder(config: Config) -> Path:
    return journal.folder_of(config.path(config.daemon.state_dir))


def take_over(config: Config, sessions: sessionmaker[Session], notice_id: int) -> int:
    """Take back at once what dead sender processes of this host held; return the claims freed.

    First what their journals say the relay accepted is recorded ``sent``
    (never sent again), then their other claims on the notice are freed.
    """
    with sessions() as s:
        dead_owners = [o for o in service.claim_owners(s, notice_id) if journal.gone(o)]
    # Read after the owners were judged dead: every dead owner's journal is complete by now.
    journals = journal.dead(journal_folder(config))
    now = utcnow()
    with transaction(sessions) as s:
        for accepted in journals:
            service.record_outcomes(s, [Outcome(i, 0, "sent", language=language)
                                        for language, ids in accepted.by_language.items() for i in ids], now)
        freed = service.release_claims(s, notice_id, dead_owners)
    for accepted in journals:
        journal.remove(accepted)
        if accepted.count:
            log.info("took over the journal of %s (process gone): %d accepted deliveries recorded",
                     accepted.owner, accepted.count)
    if freed:
        log.info("notice %s: took back %d deliveries claimed by %s (process gone)", notice_id, freed,
                 ", ".join(dead_owners))
    return freed


# --- one sender ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Copy:
    """One delivery's copy, built and ready for the relay."""

    delivery: DueDelivery
    language: str
    mail_from: str
    rcpts: list[str]
    data: bytes


class _Sender:
    """One sender (in the publishing process or a spawned one): claims chunks, sends, records."""

    def __init__(self, config: Config, sessions: sessionmaker[Session], notice_id: int, *, share: int,
                 halted: Callable[[], bool], name: str, on_commit: Callable[[int, int], None] | None = None) -> None:
        self.config = config
        self.cfg = config.csms
        self.sessions = sessions
        self.notice_id = notice_id
        self.share = max(1, share)
        self.should_halt = halted
        self.owner = f"{journal.process_name()}/{name}"
        self.journal = journal.Journal(journal_folder(config), name)
        self.on_commit = on_commit
        self.notice: Notice | None = None
        self.number = 0
        self.sent = 0
        self.failed = 0
        self.results: list[Outcome] = []
        self.commit_lock = asyncio.Lock()
        #: Claimed and not committed yet: the rows whose lease matters.
        self.held: set[int] = set()
        #: Until when (monotonic) the lease of every held row is fresh by our clock.
        self.lease_fresh_until = 0.0
        self.lease_renewed = asyncio.Event()
        self.last_renewal = 0.0
        self.renew_every = max(0.05, self.cfg.lease_seconds / 3)

    @property
    def halted(self) -> bool:
        return self.should_halt()

    # -- database (each in a worker thread, each one short transaction) --

    def _load(self) -> list[NoticeView] | None:
        """Every published language version of the notice (each subscriber's is chosen at their turn)."""
        with self.sessions() as s:
            notice = s.get(Notice, self.notice_id)
            if notice is None or notice.status != PUBLISHING:
                return None
            views = [service.view(s, v) for v in service.versions(s, notice)]
            s.expunge(notice)
        self.notice, self.number = notice, notice.number or 0
        return views

    def _template(self, views: list[NoticeView]) -> TemplateSet:
        """The notice's language versions rendered once (and DKIM-prepared), ready to be personalised."""
        signer, key = load_signer(self.config), keys.dkim_key(self.config)
        # The boundary is the same in every process: one notice, one shape.
        seed = f"{self.notice_id:x}"
        ttl = self.cfg.unsubscribe_token_days * 86400.0
        return TemplateSet({v.language: MessageTemplate(v, sender_of(self.config), signer, ttl, boundary_seed=seed,
                                                        dkim=key) for v in reversed(views)},
                           default=views[0].language)

    def _claim(self) -> list[DueDelivery]:
        assert self.notice is not None
        with transaction(self.sessions) as s:
            return service.claim_due(s, self.notice, self.owner, utcnow(), self.cfg.lease_seconds,
                                     self.cfg.chunk_size)

    def _commit(self, outcomes: list[Outcome], renew: tuple[int, int] | None) -> None:
        """Record ``outcomes`` and renew the lease of what is still claimed between ``renew`` (first
        and last id), in one transaction."""
        now = utcnow()
        with transaction(self.sessions) as s:
            service.record_outcomes(s, outcomes, now, notice_number=self.number)
            if renew is not None:
                service.renew_claims(s, self.notice_id, self.owner, now, self.cfg.lease_seconds, renew)

    def _release(self) -> None:
        with transaction(self.sessions) as s:
            service.release_claims(s, self.notice_id, [self.owner])

    # -- results and lease --

    async def commit(self) -> bool:
        """Commit every result gathered so far (and renew the lease when a third of it has passed);
        serialised with claims, so it is also a flush."""
        async with self.commit_lock:
            outcomes, self.results = self.results, []
            # Acceptances from now on go to a new file; the old one goes once these are committed.
            generation = self.journal.rotate()
            started = time.monotonic()
            # Renewing every commit rewrote every held row 20 times a second; a third of the lease
            # is as safe.  Only the held range: the whole notice's pending rows were read each time.
            renew = ((min(self.held), max(self.held)) if self.held and started - self.last_renewal >= self.renew_every
                     else None)
            try:
                await asyncio.to_thread(self._commit, outcomes, renew)
            except Exception:
                # Not lost: kept for the next commit (and in the journal).  Meanwhile the lease may
                # run out, which stops sending.
                self.results[:0] = outcomes
                log.exception("CSMS #%s: could not record %d results; will try again", self.number, len(outcomes))
                return False
            self.journal.committed(generation)
            self.held.difference_update([o.delivery_id for o in outcomes])
            if renew is not None:
                self.renewed(started)
            if self.on_commit is not None:
                self.on_commit(self.sent, self.failed)
            return True

    def renewed(self, at: float) -> None:
        """Every held row's lease was renewed (or claimed) at ``at`` (monotonic) or later."""
        self.last_renewal = at
        self.lease_fresh_until = max(self.lease_fresh_until, self.fresh_until(at))
        self.lease_renewed.set()

    def fresh_until(self, renewed_at: float) -> float:
        """Until when (monotonic) a lease renewed at ``renewed_at`` may be sent under.

        By our own clock, from before the renewal was asked for, less a margin: a sender
        stalled past its lease stops sending before another one can take its deliveries over.
        """
        return renewed_at + self.cfg.lease_seconds - min(5.0, self.cfg.lease_seconds * 0.2)

    async def recorder(self) -> None:
        """Commit results every ``mark_interval``; renew the lease while idle, too."""
        while True:
            await asyncio.sleep(self.cfg.mark_interval)
            if self.results or time.monotonic() - self.last_renewal >= self.renew_every:
                # Shielded: cancelling the recorder must not abandon a commit half-way.
                await asyncio.shield(self.commit())

    async def lease_ok(self) -> bool:
        """Wait until the lease is fresh by our clock; False if the run is stopping."""
        while time.monotonic() >= self.lease_fresh_until:
            if self.halted:
                return False
            self.lease_renewed.clear()
            try:
                async with asyncio.timeout(0.2):   # also notices a stop asked meanwhile
                    await self.lease_renewed.wait()
            except TimeoutError:
                pass
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

    # -- sending --

    def prepare(self, delivery: DueDelivery, template: TemplateSet) -> _Copy | None:
        """The copy for ``delivery``; None when it is settled without sending (left, or a bad address)."""
        if not delivery.still_wanted:
            self.failed += 1
            self.results.append(Outcome(delivery.id, delivery.subscriber_id, "skipped",
                                        "not sent: unsubscribed or disabled before delivery"))
            return None
        language = template.language_for(delivery.language)
        try:
            mail_from, data = template.build(delivery.email, delivery.subscriber_id, delivery.topics, language)
        except ValueError as exc:
            self.failed += 1
            self.results.append(Outcome(delivery.id, delivery.subscriber_id, "permanent", f"554 {exc}"))
            return None
        return _Copy(delivery, language, mail_from, [delivery.email], data)

    def lease_fresh(self) -> bool:
        return not self.halted and time.monotonic() < self.lease_fresh_until

    async def worker(self, queue: asyncio.Queue[DueDelivery | None], sender: MailSender,
                     template: TemplateSet) -> None:
        """Send what the queue holds over one session, each copy's envelope ahead with the last one's end."""
        accepted = self.journal.accepted
        ahead: _Copy | None = None
        end = False
        async with sender.series() as series:
            while True:
                if ahead is not None:
                    copy, ahead = ahead, None
                    if not (self.lease_fresh() or await self.lease_ok()):
                        continue   # stopping: what is queued is given back at the end
                else:
                    if end or (delivery := await queue.get()) is None:
                        break
                    if not (self.lease_fresh() or await self.lease_ok()):
                        continue
                    if (copy := self.prepare(delivery, template)) is None:   # type: ignore[assignment]
                        continue
                # The next copy, if it is queued already: its envelope goes with this one's end.
                while ahead is None and not end and not queue.empty() and self.lease_fresh():
                    if (following := queue.get_nowait()) is None:
                        end = True
                    else:
                        ahead = self.prepare(following, template)
                delivery, language = copy.delivery, copy.language
                try:
                    result = await series.send(copy.mail_from, copy.rcpts, copy.data,
                                               f"csms/{self.number}/{delivery.subscriber_id}.eml",
                                               lambda: accepted(delivery.id, language), DOT_SAFE,
                                               (ahead.mail_from, ahead.rcpts) if ahead is not None else None)
                except Exception as exc:  # noqa: BLE001 - a bug here must not stall the sweep; retried later
                    log.exception("CSMS #%s to %s: unexpected error", self.number, delivery.email)
                    result = SendResult(TEMPORARY, 0, f"{type(exc).__name__}: {exc}")
                self.results.append(self.outcome(delivery, result, language))

    async def sweep(self, sender: MailSender, template: TemplateSet) -> None:
        """Claim and send chunk after chunk until nothing is claimable; commit every result."""
        # One chunk queued while the next is claimed: the connections never wait for the database.
        queue: asyncio.Queue[DueDelivery | None] = asyncio.Queue(maxsize=self.cfg.chunk_size)
        connections = max(1, self.cfg.connections // self.share)
        workers = [asyncio.create_task(self.worker(queue, sender, template)) for _ in range(connections)]
        try:
            while not self.halted:
                # Not beside a commit: the held rows' range it renews must be the whole of them.
                async with self.commit_lock:
                    asked = time.monotonic()
                    rows = await asyncio.to_thread(self._claim)
                    if not rows:
                        break
                    if not self.held:
                        # Nothing older held: the lease is as fresh as this claim.
                        self.renewed(asked)
                    self.held.update([row.id for row in rows])
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

    async def run(self) -> None:
        views = await asyncio.to_thread(self._load)
        if views is None:
            return
        template = await asyncio.to_thread(self._template, views)
        cfg = self.cfg
        sender = make_sender(self.config, connections=max(1, cfg.connections // self.share),
                             rate_per_second=cfg.rate_per_second / self.share,
                             hourly_cap=math.ceil(cfg.hourly_cap / self.share) if cfg.hourly_cap else 0)
        recorder = asyncio.create_task(self.recorder())
        try:
            await self.sweep(sender, template)
        finally:
            recorder.cancel()
            await asyncio.gather(recorder, return_exceptions=True)
            committed = await asyncio.shield(self.commit())
            await sender.close()
            # What stayed queued (stopping) goes back to whoever claims next, at once.
            await asyncio.to_thread(self._release)
            if committed:
                self.journal.close()


def _sender_main(config: Config, notice_id: int, share: int, name: str, stopping: Any, parent: int,
                 counters: Any, slot: int, level: str) -> None:
    """A spawned sender: runs until nothing is claimable, the publisher says stop, or it is gone."""
    # The publisher asks it to stop (systemd and the terminal signal every process of the group).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    setup_logging(config.logging, level)
    ctx = make_context(config)

    def on_commit(sent: int, failed: int) -> None:
        counters[2 * slot], counters[2 * slot + 1] = sent, failed

    try:
        asyncio.run(_Sender(config, ctx.sessions, notice_id, share=share, name=name, on_commit=on_commit,
                            halted=lambda: stopping.is_set() or os.getppid() != parent).run())
    finally:
        ctx.dispose()


# --- the publisher ------------------------------------------------------------------------


class _Publish:
    """One run of :func:`publish`: its senders, its counters and its progress reports."""

    def __init__(self, ctx: AppContext, notice_id: int, progress: Callable[[Progress], None] | None,
                 stop: asyncio.Event) -> None:
        self.config = ctx.config
        self.cfg = ctx.config.csms
        self.sessions: sessionmaker[Session] = ctx.sessions
        self.notice_id = notice_id
        self.on_progress = progress
        self.stop = stop
        self.number = 0
        self.total = 0
        #: Sent and failed as counted in the database, plus what the current round's senders report.
        self.base = (0, 0)
        self.round: list[tuple[int, int]] = []
        self.counters: Any = None
        self.samples: collections.deque[tuple[float, int]] = collections.deque()
        self.done = False

    # -- database --

    def _start(self) -> tuple[str, dict[str, int]]:
        with self.sessions() as s:
            notice = s.get(Notice, self.notice_id)
            if notice is None:
                raise CsmsError(f"no notice {self.notice_id}")
            if notice.status not in (PUBLISHING, DONE):
                raise CsmsError(f"notice {notice.id} is {notice.status}: start publishing it first (start_publish)")
            self.number, self.total = notice.number or 0, notice.total
            return notice.status, service.counts(s, notice.id)

    def _state(self) -> tuple[dt.datetime | None, bool, int]:
        """When the next pending delivery is due, whether the notice is done, and how many are claimable."""
        now = utcnow()
        with transaction(self.sessions) as s:
            if service.finish_if_done(s, self.notice_id, now):
                return None, True, 0
            return service.next_retry_at(s, self.notice_id), False, service.claimable_count(s, self.notice_id, now)

    def _counts(self) -> dict[str, int]:
        with self.sessions() as s:
            return service.counts(s, self.notice_id)

    # -- progress --

    def _rebase(self, counts: dict[str, int]) -> None:
        self.base = (counts.get(DELIVERY_SENT, 0), counts.get(FAILED, 0))
        self.round = []

    def progress(self, rate: float | None = None) -> Progress:
        sent = self.base[0] + sum(s for s, _ in self.round)
        failed = self.base[1] + sum(f for _, f in self.round)
        if self.counters is not None:
            sent += sum(self.counters[0::2])
            failed += sum(self.counters[1::2])
        done = sent + failed
        if rate is None:
            now = time.monotonic()
            self.samples.append((now, done))
            while len(self.samples) > 2 and self.samples[0][0] < now - RATE_WINDOW:
                self.samples.popleft()
            span = now - self.samples[0][0]
            rate = (done - self.samples[0][1]) / span if span > 0 else 0.0
        return Progress(self.notice_id, self.number, self.total, sent, failed, max(0, self.total - done),
                        round(rate, 1))

    def report(self, progress: Progress | None = None) -> None:
        if self.on_progress is None:
            return
        try:
            self.on_progress(progress or self.progress())
        except Exception:  # noqa: BLE001 - a broken progress bar must not stop the fan-out
            log.exception("CSMS #%s: progress callback failed", self.number)

    async def reporter(self) -> None:
        """Report the spawned senders' progress too, when this process's own sender is quiet."""
        while True:
            await asyncio.sleep(0.5)
            self.report()

    # -- senders --

    def _spawn(self, index: int, share: int, stopping: Any) -> Any:
        level = logging.getLevelName(logging.getLogger().level)
        process = _MP.Process(target=_sender_main, name=f"acedesk-fanout-{self.notice_id}-{index}",
                              args=(self.config, self.notice_id, share, f"{self.notice_id}-{index}-{secrets.token_hex(3)}",
                                    stopping, os.getpid(), self.counters, index - 1, level), daemon=True)
        process.start()
        return process

    async def _watch(self, process: Any) -> None:
        """Wait for a spawned sender; if it died, take its deliveries back at once."""
        await asyncio.to_thread(process.join)
        if process.exitcode != 0:
            log.warning("CSMS #%s: sender process %s ended with %s; taking its deliveries back", self.number,
                        process.pid, process.exitcode)
            await asyncio.to_thread(take_over, self.config, self.sessions, self.notice_id)

    async def send_round(self, claimable: int) -> None:
        """Run the senders until none of them finds anything more to claim."""
        count = min(sender_processes(self.config), max(1, math.ceil(claimable / max(1, self.cfg.chunk_size))))
        stopping = _MP.Event()
        self.counters = _MP.Array("q", 2 * (count - 1), lock=False) if count > 1 else None
        self.round = [(0, 0)]

        def on_commit(sent: int, failed: int) -> None:
            self.round[0] = (sent, failed)
            self.report()

        own = _Sender(self.config, self.sessions, self.notice_id, share=count, halted=self.stop.is_set,
                      name=f"{self.notice_id}-0-{secrets.token_hex(3)}", on_commit=on_commit)
        processes = [self._spawn(i, count, stopping) for i in range(1, count)]
        watchers = [asyncio.create_task(self._watch(p)) for p in processes]

        async def pass_stop() -> None:
            await self.stop.wait()
            stopping.set()

        passer = asyncio.create_task(pass_stop())
        try:
            await own.run()
            await asyncio.gather(*watchers)
        finally:
            stopping.set()
            passer.cancel()
            for task in watchers:
                task.cancel()
            await asyncio.gather(passer, *watchers, return_exceptions=True)
            for process in processes:
                if process.is_alive():
                    await asyncio.to_thread(process.join, 30)
                if process.is_alive():
                    process.kill()
                    await asyncio.to_thread(process.join)
            if any(p.exitcode != 0 for p in processes):
                await asyncio.to_thread(take_over, self.config, self.sessions, self.notice_id)
            self._rebase(await asyncio.to_thread(self._counts))
            self.counters = None

    async def wait(self, due: dt.datetime | None) -> None:
        """Sleep until ``due`` (a retry), at most a poll interval (another instance's claims), or a stop."""
        # Polled, not slept through: another instance's claims may come free (or die) meanwhile.
        poll = min(1.0, max(self.cfg.mark_interval, self.cfg.lease_seconds / 3))
        delay = min(poll, max(0.0, (due - utcnow()).total_seconds())) if due else poll
        try:
            async with asyncio.timeout(delay):
                await self.stop.wait()
        except TimeoutError:
            pass

    async def run(self) -> Progress:
        status, counts = await asyncio.to_thread(self._start)
        self._rebase(counts)
        if status == DONE:
            final = self.progress(rate=0.0)
            final.pending = counts.get(PENDING, 0)
            return final
        await asyncio.to_thread(take_over, self.config, self.sessions, self.notice_id)
        first = self.base[0] + self.base[1]
        started = time.monotonic()
        reporter = asyncio.create_task(self.reporter()) if self.on_progress is not None else None
        try:
            while not self.stop.is_set():
                due, self.done, claimable = await asyncio.to_thread(self._state)
                if self.done:
                    break
                if claimable:
                    await self.send_round(claimable)
                else:
                    # Retries not due yet, or deliveries another instance is sending.
                    await self.wait(due if due is not None and due > utcnow() else None)
        finally:
            if reporter is not None:
                reporter.cancel()
                await asyncio.gather(reporter, return_exceptions=True)
        counts = await asyncio.to_thread(self._counts)
        self._rebase(counts)
        elapsed = time.monotonic() - started
        final = self.progress(rate=(self.base[0] + self.base[1] - first) / elapsed if elapsed > 0 else 0.0)
        final.pending = counts.get(PENDING, 0)
        log.info("CSMS #%s %s: %d sent, %d failed, %d pending", self.number,
                 "done" if self.done else "paused", final.sent, final.failed, final.pending)
        self.report(final)
        return final


async def publish(ctx: AppContext, notice_id: int, *, progress: Callable[[Progress], None] | None = None,
                  stop: asyncio.Event | None = None) -> Progress:
    """Fan notice ``notice_id`` (already ``publishing``) out to its subscribers; return the final counts.

    Returns when every delivery is sent or failed permanently (the notice is
    then ``done``), or, with deliveries still pending, when ``stop`` is set; a
    later call resumes.  Several calls at once (other instances, the CLI
    beside the daemon) share the notice: each delivery is claimed by one
    sender.  ``progress`` is called after each commit of results here and
    twice a second while spawned senders work.
    """
    return await _Publish(ctx, notice_id, progress, stop or asyncio.Event()).run()
