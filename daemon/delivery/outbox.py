"""The outbox sender: delivers what the pipeline committed to the ``outbox``
table -- automatic replies, analysts' replies, CSMS control mail -- through
the one way out (:mod:`daemon.delivery.sender`: the relay's pipelining pool
with ``[outbound] connections``, ``rate_per_second`` and ``hourly_cap``, or
the spool).

A batch is claimed (``FOR UPDATE SKIP LOCKED`` on PostgreSQL; SQLite has one
writer): the rows are marked ``sending`` under a lease and the claim is
written to this process's journal before that commit.  Then up to
``connections`` messages are in flight at once:

* 250: the acceptance goes to the journal at once, before the connection
  takes another message; the ``sent`` mark (and the ``on_sent`` hook: the
  ticket's clocks) is committed from a second thread as soon as the database
  allows, so delivery never waits behind a pipeline batch holding SQLite's lock;
* 4xx, a refused or dropped connection, a timeout: retried after a capped
  exponential backoff (``retry_min`` .. ``retry_max``) until ``give_up_hours``;
* 5xx: ``failed``, and the ``on_failed`` hook (a note, the error and a triage
  item on the ticket).

Exactly one reply.  A crash before the 250 leaves the row to be sent again:
nothing is lost.  A crash after it finds the acceptance in the journal, and
the next daemon on this host takes the dead one's journal over at once (its
accepted rows marked sent, the rest back to pending).  What can go out twice
is only a message whose content was written and whose 250 was not read yet:
at most one per connection per crash (SMTP's own window, RFC 1047).  An
instance on another host (PostgreSQL) takes over a dead instance's claims
when their lease expires; its marks were committed within milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from sqlalchemy import Table, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from daemon.config import Config, OutboundConfig
from daemon.context import AppContext
from daemon.delivery import journal as journals
from daemon.delivery.journal import Journal
from daemon.delivery.sender import Sender, make_sender, retry_delay
from daemon.delivery.smtp_pool import SENT, TEMPORARY, SendResult
from daemon.runner import run_loop
from models.base import utcnow
from models.outbox import FAILED, PENDING, SENDING, OutboxMessage
from models.outbox import SENT as ROW_SENT
from models.session import transaction
from responders.delivery import replies_sent, reply_failed

log = logging.getLogger("acedesk.outbox")

BATCH = 500
#: The outbox table itself: the hot path's statements go through Core, without ORM objects.
_TABLE = cast(Table, OutboxMessage.__table__)
#: How long the recorder gathers outcomes before a commit (the journal holds acceptances meanwhile).
RECORD_EVERY = 0.05


@dataclass(frozen=True)
class Claimed:
    id: int
    mail_from: str
    rcpt_to: list[str]
    raw: bytes
    attempts: int
    created_at: dt.datetime
    ticket_id: int | None
    message_id: str


@dataclass(frozen=True)
class Hooks:
    """Side effects of a delivery, run in the transaction that records it."""

    #: Rows just marked sent.
    on_sent: Callable[[Session, Sequence[Claimed], dt.datetime], None]
    #: A row that failed for good, and why.
    on_failed: Callable[[Session, Claimed, str, dt.datetime], None]


def _tickets_sent(session: Session, items: Sequence[Claimed], now: dt.datetime) -> None:
    replies_sent(session, {i.ticket_id for i in items if i.ticket_id is not None}, now)


def _ticket_failed(session: Session, item: Claimed, why: str, now: dt.datetime) -> None:
    if item.ticket_id is not None:
        reply_failed(session, item.ticket_id, item.id, item.message_id, why, now)


#: The desk's hooks: replies move their tickets' clocks; failures reach a person.
TICKET_HOOKS = Hooks(on_sent=_tickets_sent, on_failed=_ticket_failed)


def journal_dir(config: Config) -> Path:
    return config.path(config.daemon.state_dir) / "outbox-journal"


def lease_seconds(cfg: OutboundConfig) -> float:
    # Long enough for two batches over a slow relay (the next batch is claimed while one is sent);
    # a crashed sender's rows come back after it (at once on the same host, through its journal).
    sending = 2 * BATCH / cfg.rate_per_second if cfg.rate_per_second > 0 else 0.1 * BATCH
    return max(10.0, 2 * cfg.timeout + sending)


#: What a claim reads back of each row (the message itself included: read once, here).
_CLAIMED = (OutboxMessage.id, OutboxMessage.mail_from, OutboxMessage.rcpt_to, OutboxMessage.raw,
            OutboxMessage.attempts, OutboxMessage.created_at, OutboxMessage.ticket_id, OutboxMessage.message_id)


def claim(factory: sessionmaker[Session], cfg: OutboundConfig, journal: Journal,
          limit: int = BATCH) -> list[Claimed]:
    """Claim up to ``limit`` due rows (pending and due, or sending with an expired lease).

    One ``UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED LIMIT n)
    RETURNING ...`` marks the batch and reads it back (SQLite 3.35+ and
    PostgreSQL both have RETURNING): one statement per batch, no ORM objects.
    """
    now = utcnow()
    until = now + dt.timedelta(seconds=lease_seconds(cfg))
    is_due = or_((OutboxMessage.status == PENDING)
                 & or_(OutboxMessage.next_attempt_at.is_(None), OutboxMessage.next_attempt_at <= now),
                 (OutboxMessage.status == SENDING) & (OutboxMessage.lease_until < now))
    with factory() as session:
        # A read first: most calls find nothing due (a poll, a wake-up for rows already claimed), and
        # on SQLite a write transaction would wait for -- and then hold -- the one write lock for nothing.
        if session.execute(select(OutboxMessage.id).where(is_due).limit(1)).first() is None:
            return []
    due = select(OutboxMessage.id).where(is_due).order_by(OutboxMessage.id).limit(limit).with_for_update(skip_locked=True)
    ids: list[int] = []
    try:
        with transaction(factory) as session:
            returned = session.connection().execute(
                update(_TABLE).where(_TABLE.c.id.in_(due.scalar_subquery()))
                .values(status=SENDING, lease_until=until)
                .returning(*_CLAIMED)).all()
            if not returned:
                return []
            rows = sorted(returned, key=lambda r: r[0])   # RETURNING has no order; keep the outbox's
            ids = [r[0] for r in rows]
            journal.claimed(ids)   # before the commit: a crash after it is taken over
    except BaseException:
        journal.settled(ids)   # not committed: these rows are not ours (maybe another instance's)
        raise
    return [Claimed(r[0], r[1], list(r[2]), r[3], r[4], r[5], r[6], r[7]) for r in rows]


def mark_sent(session: Session, items: Sequence[Claimed], now: dt.datetime, hooks: Hooks) -> None:
    """Mark ``items`` sent and run ``on_sent`` (a few statements whatever their number)."""
    for start in range(0, len(items), BATCH):  # bounded IN lists
        chunk = items[start:start + BATCH]
        session.connection().execute(update(_TABLE).where(_TABLE.c.id.in_([item.id for item in chunk]))
                                     .values(status=ROW_SENT, sent_at=now, lease_until=None, last_error=None))
        hooks.on_sent(session, chunk, now)


def record_failure(session: Session, cfg: OutboundConfig, item: Claimed, result: SendResult,
                   now: dt.datetime, hooks: Hooks) -> None:
    """Schedule a retry (temporary) or record a permanent failure (and run ``on_failed``)."""
    row = session.get(OutboxMessage, item.id)
    if row is None or row.status == ROW_SENT:
        return
    row.attempts = item.attempts + 1
    row.last_error = result.detail[:2000]
    row.lease_until = None
    expired = now - item.created_at > dt.timedelta(hours=cfg.give_up_hours)
    if result.status == TEMPORARY and not expired:
        row.status = PENDING
        row.next_attempt_at = now + dt.timedelta(seconds=retry_delay(row.attempts, cfg.retry_min, cfg.retry_max))
        log.warning("outbox %s (%s) to %s: temporary failure (attempt %d), retry at %s: %s",
                    item.id, item.message_id, ",".join(item.rcpt_to), row.attempts,
                    row.next_attempt_at.isoformat(timespec="seconds"), result.detail)
        return
    row.status = FAILED
    why = result.detail if result.status != TEMPORARY else f"gave up after {cfg.give_up_hours:g} h: {result.detail}"
    log.error("outbox %s (%s) to %s: permanent failure: %s", item.id, item.message_id,
              ",".join(item.rcpt_to), why)
    hooks.on_failed(session, item, why, now)


class Recorder:
    """Commits outcomes from a second thread, in arrival order, as soon as the database allows.

    The outcomes of ``RECORD_EVERY`` seconds go in one transaction (more when
    the database is busy: on SQLite a pipeline batch holds the one write lock
    and the outcomes that piled up meanwhile go in together).  The journal already holds every acceptance, so nothing
    here needs to be quick for a crash to be harmless.
    """

    def __init__(self, factory: sessionmaker[Session], cfg: OutboundConfig, hooks: Hooks,
                 journal: Journal) -> None:
        self.factory = factory
        self.cfg = cfg
        self.hooks = hooks
        self.journal = journal
        self.queue: queue.SimpleQueue[tuple[Claimed, SendResult] | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name="outbox-recorder", daemon=True)
        self.failed = False
        self.closing = threading.Event()
        self.thread.start()

    def put(self, item: Claimed, result: SendResult) -> None:
        self.queue.put((item, result))

    def _run(self) -> None:
        done = False
        while not done:
            entries = [self.queue.get()]
            # Outcomes arriving within RECORD_EVERY go in one transaction: a commit per reply would cost
            # more CPU than the sending (the journal holds the acceptances meanwhile).  The thread sleeps
            # meanwhile rather than waking at each put, which would take the GIL from the event loop.
            if entries[0] is not None:
                self.closing.wait(RECORD_EVERY)
            while True:
                try:
                    entries.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            done = None in entries
            outcomes = [e for e in entries if e is not None]
            if not outcomes:
                continue
            try:
                self._commit(outcomes)
                self.journal.settled(item.id for item, _ in outcomes)
            except Exception as exc:  # noqa: BLE001 - the journal or the lease brings these back
                self.failed = True
                log.error("outbox: could not record %d outcome(s) (the journal keeps the accepted ones): %s",
                          len(outcomes), exc)

    def _commit(self, outcomes: list[tuple[Claimed, SendResult]]) -> None:
        now = utcnow()
        with transaction(self.factory) as session:
            mark_sent(session, [item for item, result in outcomes if result.status == SENT], now, self.hooks)
            for item, result in outcomes:
                if result.status != SENT:
                    record_failure(session, self.cfg, item, result, now, self.hooks)

    def close(self) -> bool:
        """Wait until every outcome handed over is committed; return whether all were."""
        self.queue.put(None)
        self.closing.set()
        self.thread.join()
        return not self.failed


def settle(session: Session, record: journals.Record, now: dt.datetime, hooks: Hooks) -> None:
    """Apply what a journal says: accepted rows sent, rows claimed and not accepted back to pending."""
    accepted = sorted(record.accepted)
    if accepted:
        rows = session.scalars(select(OutboxMessage).where(OutboxMessage.id.in_(accepted),
                                                           OutboxMessage.status != ROW_SENT)).all()
        mark_sent(session, [Claimed(r.id, r.mail_from, list(r.rcpt_to), b"", r.attempts, r.created_at,
                                    r.ticket_id, r.message_id) for r in rows], now, hooks)
    back = sorted(record.claimed - record.accepted)
    if back:
        session.connection().execute(update(_TABLE).where(_TABLE.c.id.in_(back), _TABLE.c.status == SENDING)
                                     .values(status=PENDING, lease_until=None))


def take_over(factory: sessionmaker[Session], config: Config, hooks: Hooks = TICKET_HOOKS) -> int:
    """Take over the journals of dead processes of this host; return how many rows they held."""
    held = 0
    for record in journals.orphans(journal_dir(config)):
        with transaction(factory) as session:
            settle(session, record, utcnow(), hooks)
        record.path.unlink(missing_ok=True)
        held += len(record.claimed | record.accepted)
        log.info("outbox: took over %s (a process gone): %d accepted, %d back to pending",
                 record.path.name, len(record.accepted), len(record.claimed - record.accepted))
    return held


class Outbox:
    """One process's delivery of the outbox: its sender, journal, recorder and hooks.

    While a full batch is being sent the next one is claimed in a database
    thread, so the relay connections do not wait for the database between
    batches (on SQLite a claim may wait behind a pipeline transaction); the
    recorder lives as long as the outbox, committing outcomes as they come.
    """

    def __init__(self, factory: sessionmaker[Session], config: Config, hooks: Hooks = TICKET_HOOKS) -> None:
        self.factory = factory
        self.config = config
        self.cfg = config.outbound
        self.hooks = hooks
        self.journal = Journal(journal_dir(config))
        self.sender: Sender | None = None
        self.recorder: Recorder | None = None
        #: The next batch, claimed while the current one is sent.
        self._next: asyncio.Future[list[Claimed]] | None = None

    def _sender(self) -> Sender:
        if self.sender is None:
            self.sender = make_sender(self.config, connections=self.cfg.connections,
                                      rate_per_second=self.cfg.rate_per_second, hourly_cap=self.cfg.hourly_cap)
        return self.sender

    def _recorder(self) -> Recorder:
        if self.recorder is None:
            self.recorder = Recorder(self.factory, self.cfg, self.hooks, self.journal)
        return self.recorder

    def _claim(self) -> asyncio.Future[list[Claimed]]:
        return asyncio.ensure_future(asyncio.to_thread(claim, self.factory, self.cfg, self.journal))

    async def run_once(self) -> int:
        """Deliver one batch; return how many rows were settled (sent or failed for good).

        A batch that only met temporary failures counts 0: its rows wait for their retry time.
        """
        claiming, self._next = self._next or self._claim(), None
        items = await claiming
        if not items:
            return 0
        sender = self._sender()
        recorder = self._recorder()
        pending = iter(items)
        unsent = len(items)
        # A full batch means more may be due: claim the next when half of this one is out.
        prefetch_at = len(items) // 2 if len(items) >= BATCH else -1
        relay_down: list[SendResult] = []
        settled = 0

        async def connection() -> None:
            nonlocal settled, unsent
            for item in pending:
                unsent -= 1
                if unsent == prefetch_at and self._next is None and not relay_down:
                    self._next = self._claim()
                if relay_down:   # the relay is unreachable: the rest wait for the next try
                    recorder.put(item, relay_down[0])
                    continue
                result = await sender.send(item.mail_from, item.rcpt_to, item.raw, f"new/{item.id:010d}.eml",
                                           accepted=functools.partial(self.journal.accepted, item.id))
                if result.status == TEMPORARY and result.code in (0, 421):
                    relay_down.append(result)
                elif result.status != TEMPORARY:
                    settled += 1
                recorder.put(item, result)

        await asyncio.gather(*(connection() for _ in range(min(self.cfg.connections, len(items)))))
        return settled

    async def close(self) -> None:
        """Stop: outcomes committed, a batch claimed ahead given back, the journal removed once all is settled."""
        if self._next is not None:
            claiming, self._next = self._next, None
            with contextlib.suppress(Exception):   # not claimed: nothing to give back
                await asyncio.shield(claiming)
        recorded = True
        if self.recorder is not None:
            recorded = await asyncio.to_thread(self.recorder.close)
            self.recorder = None
        if self.sender is not None:
            await self.sender.close()
            self.sender = None
        # What is still open (a batch claimed ahead, a stop in mid-batch, outcomes the database
        # refused): settled here like a dead process's journal, or left for the next process.
        kept = self.journal.open
        if kept.claimed or kept.accepted:
            try:
                await asyncio.to_thread(self._settle_own, kept)
            except Exception as exc:  # noqa: BLE001 - the journal stays for the next process
                recorded = False
                log.error("outbox: could not settle %d claimed row(s) at stop (the journal keeps them): %s",
                          len(kept.claimed | kept.accepted), exc)
        self.journal.close(remove=recorded)

    def _settle_own(self, record: journals.Record) -> None:
        with transaction(self.factory) as session:
            settle(session, record, utcnow(), self.hooks)
        self.journal.clear()


def run_once(factory: sessionmaker[Session], config: Config, hooks: Hooks = TICKET_HOOKS) -> int:
    """Deliver one batch (burst mode, tests); return how many rows were settled."""
    return drain_outbox(factory, config, max_batches=1, hooks=hooks)


def drain_outbox(factory: sessionmaker[Session], config: Config, max_batches: int = 1000,
                 hooks: Hooks = TICKET_HOOKS) -> int:
    """Deliver everything due now (burst mode: CLI, tests); return how many rows were settled."""
    async def drain() -> int:
        outbox = Outbox(factory, config, hooks)
        total = 0
        try:
            for _ in range(max_batches):
                settled = await outbox.run_once()
                total += settled
                if not settled:
                    break
        finally:
            await outbox.close()
        return total

    take_over(factory, config, hooks)
    return asyncio.run(drain())


class OutboxSender:
    """The supervisor component: delivers whenever the pipeline wakes it, or polls."""

    name = "outbox"

    def __init__(self, ctx: AppContext, poll_interval: float = 1.0) -> None:
        self.ctx = ctx
        self.poll_interval = poll_interval

    async def run(self, stop: asyncio.Event) -> None:
        await asyncio.to_thread(take_over, self.ctx.sessions, self.ctx.config)
        outbox = Outbox(self.ctx.sessions, self.ctx.config)
        try:
            await run_loop(self.name, outbox.run_once, stop, wake=self.ctx.wakeup("outbox"), idle=self.poll_interval)
        finally:
            await outbox.close()


def make_components(ctx: AppContext) -> list[OutboxSender]:
    """Return this area's long-running components for the supervisor."""
    return [OutboxSender(ctx, poll_interval=min(1.0, ctx.config.pipeline.poll_interval))]
