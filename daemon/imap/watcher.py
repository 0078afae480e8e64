"""IMAP intake: one watcher per configured mailbox.

This module owns everything between an IMAP folder and the ``inbound_messages``
table: the mailbox lease (one watcher per mailbox, also across instances), the
UID checkpoint (``mailboxes.uidvalidity`` / ``last_uid``), the IMAP session,
and moving committed messages to the processed folder.

imapclient is blocking and not thread safe, so each watcher owns one
``IMAPClient`` in one dedicated thread; the asyncio side only starts it, renews
the lease, and stops it.

The order of effects for every batch is what makes crashes harmless:

1. ``UID FETCH <uids> BODY.PEEK[]`` (RFC 3501 6.4.5; PEEK leaves ``\\Seen`` alone),
   by UID, never by sequence number (sequence numbers shift under EXPUNGE);
2. one transaction inserts the rows (duplicates skipped by the database's
   unique constraints) and advances the checkpoint, only if we still hold the
   lease; commit;
3. only then ``UID MOVE`` (RFC 6851), or ``UID COPY`` + ``\\Deleted`` +
   ``UID EXPUNGE`` (RFC 4315) where MOVE is missing.

A crash between 2 and 3 leaves committed messages in the folder with a UID at
or below ``last_uid``: the next session moves them without storing them again.

For throughput, fetching goes on while earlier batches commit in a database
thread (the batches fetched meanwhile go in together), and committed batches
are moved in groups (see ``sync_once``).  A backlog of more than one group is
moved by a :class:`Mover`: a second connection, opened the same way as the
first, that takes committed groups in order from a queue and moves them while
the first connection fetches on (a MOVE costs the server about as much as the
FETCH of the same messages).  The order above holds for every message; when
the mover fails, what it had not moved yet is at or below ``last_uid`` and the
next session moves it.  The checkpoint only ever passes stored messages: after
a failed transaction no later one is committed (it would carry ``last_uid``
past messages never stored, which the next session would then move unstored).

A UIDVALIDITY change (RFC 3501 2.3.1.1) resets ``last_uid`` to 0; messages
still in the folder are fetched again and the ``(desk, sha256)`` constraint
recognises the ones already stored.
"""


from __future__ import annotations

import asyncio
import contextlib
import socket
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError, LoginError
from sqlalchemy.exc import SQLAlchemyError

from daemon.config import ConfigError, MailboxConfig, read_secret
from daemon.context import AppContext
from daemon.metrics import IMAP_ERRORS
from daemon.imap.checkpoint import (Checkpoint, LeaseLost, commit_batch, ensure_mailbox, lease_holder,
                                    load_checkpoint, release_lease, take_lease)
from daemon.imap.mover import MoveGroup, Mover
from daemon.imap.protocol import (ImapError, TlsRefused, chunks, close_quietly, connect, describe, ensure_folder,
                                  fetch_raw, has_new_mail, idle_responses, move_messages, select_uidvalidity, uid_set,
                                  span, uids_after, uids_upto)
from daemon.intake.store import NewMessage
from daemon.runner import backoff, jittered, wait_any

log = logging.getLogger("acedesk.imap")

#: First and last wait before reconnecting; doubled after each failure, with jitter.
BACKOFF_MIN = 1.0
BACKOFF_MAX = 60.0
#: Committed messages are moved in groups of at least this many (one MOVE each).
MOVE_BATCH = 2000
#: Fetched batches that may wait for the database thread while fetching goes on.
MAX_IN_FLIGHT = 4
#: Longest single wait inside IDLE or a poll, so a stop request is seen promptly.
WAIT_SLICE = 0.5
#: Seconds ``run`` waits for the IMAP thread to finish before cutting its socket.
STOP_GRACE = 1.5


class EarlierBatchFailed(Exception):
    """A batch was not stored because one before it failed to commit."""


@dataclass
class _Job:
    """Fetched batches stored in one transaction (ascending UIDs, as fetched)."""

    uids: list[int]
    raw: dict[int, bytes]
    batches: int = 0
    future: Future[int] | None = None

    def add(self, batch: Sequence[int], raw: dict[int, bytes]) -> None:
        self.uids.extend(batch)
        self.raw.update(raw)
        self.batches += 1

    def done(self) -> bool:
        """Return whether the transaction has ended (committed or failed)."""
        return self.future is not None and self.future.done()


class ImapWatcher:
    """Watches one mailbox: a supervisor component (``run``) with a burst mode (``fetch_new``)."""

    def __init__(self, ctx: AppContext, cfg: MailboxConfig, *, use_idle: bool = True, use_mover: bool = True,
                 backoff_min: float = BACKOFF_MIN, backoff_max: float = BACKOFF_MAX) -> None:
        self.ctx = ctx
        self.cfg = cfg
        self.name = f"imap[{cfg.name}]"
        #: IDLE when the server has it; False forces polling (tests, odd servers).
        self.use_idle = use_idle
        #: Move a backlog on a second connection while fetching; False keeps to one connection
        #: (servers that limit connections per user; a refused second login falls back by itself).
        self.use_mover = use_mover
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        #: What the IMAP thread is doing, for log lines and tests ("idle", "polling", ...).
        self.status = "stopped"
        self._step = "starting"
        self._halt = threading.Event()
        self._client: IMAPClient | None = None
        #: Opens another session like the current one (set by ``_open``), for the mover.
        self._connect: Callable[[], IMAPClient] | None = None
        self._mover: Mover | None = None
        #: The server refused a second connection this session: stay on one.
        self._mover_refused = False
        self._mailbox_id: int | None = None
        self._checkpoint = Checkpoint(None, 0)
        #: Whether the current session got as far as a full sync (resets the backoff).
        self._synced = False
        self._notify: Callable[[], None] = lambda: None
        self._thread: threading.Thread | None = None
        #: Commits run here while the IMAP thread fetches on (one per session, see ``_open``).
        self._db = ThreadPoolExecutor(max_workers=1)

    def __repr__(self) -> str:
        return f"<ImapWatcher {self.cfg.name} {self.cfg.host}:{self.cfg.port}/{self.cfg.folder}>"

    # -- asyncio side --------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Hold the mailbox lease and run the IMAP thread until ``stop`` is set."""
        loop = asyncio.get_running_loop()
        self._notify = lambda: _call_soon(loop, self.ctx.wake, "pipeline")
        self._mailbox_id = await asyncio.to_thread(ensure_mailbox, self.ctx.sessions, self.cfg.name)
        try:
            while not stop.is_set():
                if not await self._acquire(stop):
                    return
                try:
                    await self._watch(stop)
                finally:
                    await self._release()
        finally:
            self.status = "stopped"

    async def _acquire(self, stop: asyncio.Event) -> bool:
        """Wait until this instance holds the lease; return False if stopped first."""
        assert self._mailbox_id is not None
        told = False
        retry = min(max(self.cfg.lease_seconds / 4, 0.5), 15.0)
        while not stop.is_set():
            self.status = "waiting for lease"
            try:
                if await asyncio.to_thread(take_lease, self.ctx.sessions, self._mailbox_id,
                                           self.ctx.instance, self.cfg.lease_seconds):
                    log.info("%s: lease taken by %s", self.name, self.ctx.instance)
                    return True
                if not told:
                    owner, until = await asyncio.to_thread(lease_holder, self.ctx.sessions, self._mailbox_id)
                    log.info("%s: watched by %s (lease until %s); waiting to take over",
                             self.name, owner, until.isoformat(timespec="seconds") if until else "?")
                    told = True
            except SQLAlchemyError as exc:
                log.warning("%s: cannot take the mailbox lease: %s", self.name, describe(exc))
            await wait_any(stop, None, retry)
        return False

    async def _watch(self, stop: asyncio.Event) -> None:
        """Run the IMAP thread, renewing the lease, until stop, thread exit or lease loss."""
        assert self._mailbox_id is not None
        loop = asyncio.get_running_loop()
        # A thread left behind by an earlier stop (stuck in a command) must
        # time out before a new one may use the mailbox.
        while self._thread is not None and self._thread.is_alive():
            if stop.is_set():
                return
            await asyncio.to_thread(self._thread.join, WAIT_SLICE)
        done: asyncio.Future[None] = loop.create_future()
        self._halt.clear()
        self._thread = threading.Thread(target=self._thread_main, args=(loop, done), name=self.name,
                                        daemon=True)
        self._thread.start()
        renew_every = max(self.cfg.lease_seconds / 3, 0.2)
        expires = time.monotonic() + self.cfg.lease_seconds
        stopper = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set() and not done.done():
                waiters: list[asyncio.Future[Any]] = [stopper, done]
                await asyncio.wait(waiters, timeout=renew_every, return_when=asyncio.FIRST_COMPLETED)
                if stop.is_set() or done.done():
                    break
                try:
                    held = await asyncio.to_thread(take_lease, self.ctx.sessions, self._mailbox_id,
                                                   self.ctx.instance, self.cfg.lease_seconds)
                except SQLAlchemyError as exc:
                    log.warning("%s: cannot renew the mailbox lease: %s", self.name, describe(exc))
                    held = time.monotonic() < expires
                    if not held:
                        log.warning("%s: lease expired while the database was unreachable; stopping",
                                    self.name)
                else:
                    if held:
                        expires = time.monotonic() + self.cfg.lease_seconds
                    else:
                        log.warning("%s: another instance took the mailbox lease; stopping", self.name)
                if not held:
                    break
        finally:
            stopper.cancel()
            await self._stop_thread(done)

    async def _stop_thread(self, done: asyncio.Future[None]) -> None:
        """Ask the IMAP thread to finish; cut its socket if a command holds it up."""
        self._halt.set()
        await asyncio.wait([done], timeout=STOP_GRACE)
        if not done.done():
            self._abort_socket()
            await asyncio.wait([done], timeout=0.5)
        if not done.done():
            log.warning("%s: IMAP thread still busy (%s) after stop; leaving it to time out",
                        self.name, self._step)
        elif done.exception() is not None:
            raise done.exception()  # type: ignore[misc]

    async def _release(self) -> None:
        if self._mailbox_id is None:
            return
        try:
            await asyncio.to_thread(release_lease, self.ctx.sessions, self._mailbox_id, self.ctx.instance)
        except SQLAlchemyError as exc:
            log.warning("%s: cannot release the mailbox lease (it expires by itself): %s",
                        self.name, describe(exc))

    def _abort_socket(self) -> None:
        # Shutting a socket down is the one thing safe to do from another
        # thread: the blocked recv returns and the IMAP thread unwinds.
        mover = self._mover
        if mover is not None:
            mover.abort_socket()
        client = self._client
        if client is None:
            return
        with contextlib.suppress(Exception):
            client.socket().shutdown(socket.SHUT_RDWR)

    def _thread_main(self, loop: asyncio.AbstractEventLoop, done: asyncio.Future[None]) -> None:
        error: BaseException | None = None
        try:
            self._serve()
        except BaseException as exc:  # noqa: BLE001 - handed to the event loop
            error = exc
        _call_soon(loop, _settle, done, error)

    # -- IMAP thread ----------------------------------------------------------------------

    def _serve(self) -> None:
        """Keep a session open until halted, reconnecting with capped exponential backoff."""
        failures = 0
        while not self._halt.is_set():
            self._synced = False
            try:
                self._session()
                return
            except LeaseLost as exc:
                log.warning("%s: %s; stopping", self.name, exc)
                return
            except (LoginError, TlsRefused, ConfigError) as exc:
                # Retrying soon cannot fix credentials or TLS set-up: wait long.
                wait = jittered(self.backoff_max)
                IMAP_ERRORS.labels(self.name).inc()
                log.error("%s: %s failed: %s; retrying in %.0f s", self.name, self._step, describe(exc), wait)
            except (OSError, IMAPClientError, ImapError, SQLAlchemyError) as exc:
                failures = 1 if self._synced else failures + 1
                # Spread reconnects so that many watchers do not hit a restarted server at once.
                wait = jittered(backoff(failures, self.backoff_min, self.backoff_max))
                IMAP_ERRORS.labels(self.name).inc()
                if not self._halt.is_set():
                    log.warning("%s: %s failed: %s; reconnecting in %.1f s", self.name, self._step,
                                describe(exc), wait)
            except Exception:  # noqa: BLE001 - a bug must not take the daemon down
                wait = jittered(self.backoff_max)
                log.exception("%s: unexpected error while %s; retrying in %.0f s", self.name, self._step, wait)
            self.status = "backing off"
            self._halt.wait(wait)

    def _session(self) -> None:
        with self._open() as client:
            idle = self.use_idle and client.has_capability("IDLE")
            rounds = 0
            while not self._halt.is_set():
                if rounds:
                    self._reselect(client)
                rounds += 1
                self.sync_once(client)
                self._synced = True
                if self._halt.is_set():
                    break
                if idle:
                    self._idle(client)
                else:
                    self._poll(client)

    @contextlib.contextmanager
    def _open(self) -> Iterator[IMAPClient]:
        """Connect, log in, select the folder, check UIDVALIDITY, and finish moves a crash left."""
        cfg = self.cfg
        self.status = "connecting"
        self._step = f"reading the password of imap.mailboxes[{cfg.name}]"
        password = read_secret(f"imap.mailboxes[{cfg.name}]", cfg.password_env, cfg.password_file,
                               self.ctx.config)
        self._step = f"connecting to {cfg.host}:{cfg.port} as {cfg.username} (tls {cfg.tls})"
        client = connect(cfg, password, self.ctx.config)
        self._client = client
        self._connect = functools.partial(connect, cfg, password, self.ctx.config)
        self._mover_refused = False
        self._db = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{self.name}-db")
        try:
            self._step = f"creating {cfg.processed_folder}"
            ensure_folder(client, cfg.processed_folder)
            self._step = f"selecting {cfg.folder}"
            self._adopt_uidvalidity(select_uidvalidity(client, cfg.folder))
            self._step = "moving messages stored before a restart"
            self._move_leftovers(client)
            yield client
        finally:
            self._client = None
            self._connect = None
            self.status = "disconnected"
            self._db.shutdown(wait=True)
            close_quietly(client)

    def _reselect(self, client: IMAPClient) -> None:
        """SELECT the folder again before a round (RFC 3501 6.3.1: it also reports new messages).

        imaplib keeps every untagged response it was not asked about (one
        EXPUNGE per moved message) until the next SELECT, so a long session
        would grow without it; and a UIDVALIDITY change is noticed at once.
        """
        self._step = f"selecting {self.cfg.folder}"
        uidvalidity = select_uidvalidity(client, self.cfg.folder)
        if uidvalidity != self._checkpoint.uidvalidity:
            self._adopt_uidvalidity(uidvalidity)

    def _adopt_uidvalidity(self, uidvalidity: int) -> None:
        assert self._mailbox_id is not None
        stored = load_checkpoint(self.ctx.sessions, self._mailbox_id)
        if stored.uidvalidity == uidvalidity:
            self._checkpoint = stored
            return
        if stored.uidvalidity is not None:
            log.warning("%s: UIDVALIDITY of %s changed from %s to %s (folder recreated or server "
                        "restored): fetching the whole folder again; messages already stored are skipped",
                        self.name, self.cfg.folder, stored.uidvalidity, uidvalidity)
        self._checkpoint = Checkpoint(uidvalidity, 0)
        commit_batch(self.ctx.sessions, self._mailbox_id, self.ctx.instance, self.cfg.lease_seconds,
                     [], self._checkpoint)

    def _move_leftovers(self, client: IMAPClient) -> None:
        """Move messages committed before a crash but not moved yet (UID <= last_uid)."""
        last = self._checkpoint.last_uid
        leftovers = uids_upto(client, last, "UNDELETED")
        for batch in chunks(leftovers, self.cfg.batch_size):
            move_messages(client, batch, self.cfg.processed_folder)
        if leftovers:
            log.info("%s: moved %d message(s) stored before a restart (%s) to %s", self.name,
                     len(leftovers), span(leftovers), self.cfg.processed_folder)
        # A crash between COPY and EXPUNGE leaves copied messages flagged \Deleted.
        if client.has_capability("UIDPLUS") and not client.has_capability("MOVE"):
            deleted = uids_upto(client, last, "DELETED")
            if deleted:
                client.uid_expunge(uid_set(deleted))

    def sync_once(self, client: IMAPClient) -> int:
        """Store and move every message above the checkpoint; return how many rows were new.

        The client must come from :meth:`_open` (folder selected, checkpoint
        loaded).  Fetching goes on while earlier batches commit in the
        database thread, one transaction at a time; the batches fetched
        meanwhile (at most ``MAX_IN_FLIGHT``) make up the next one;
        committed batches are moved in groups of at least ``MOVE_BATCH``
        (a MOVE costs the server a fixed overhead per command), never before
        their commit.  A backlog of more than one group is moved by a
        :class:`Mover` while this connection fetches on; a smaller one (the
        usual IDLE wake-up) is moved here, with no second login.
        """
        self.status = "syncing"
        self._step = f"searching {self.cfg.folder} for new messages"
        uids = uids_after(client, self._checkpoint.last_uid)
        uidvalidity = self._checkpoint.uidvalidity
        after = self._checkpoint.last_uid
        move_at = max(self.cfg.batch_size, MOVE_BATCH)
        mover = self._start_mover(uidvalidity) if len(uids) > move_at else None
        job: _Job | None = None  # the one transaction in the database thread
        waiting = _Job([], {})  # fetched since, for the next one
        group = MoveGroup()
        stored = 0
        try:
            for batch in chunks(uids, self.cfg.batch_size):
                if self._halt.is_set():
                    break  # stop between batches; the rest waits for the next run
                mover = self._check_mover(client, mover)
                self._step = f"fetching {span(batch)}"
                waiting.add(batch, fetch_raw(client, batch))
                # While the database is busy, batches wait and then go in together: when it
                # is the bottleneck its transactions grow (10,000 messages in commits of
                # 2,000 rows take 20-25% less database time than in commits of 500,
                # measured on SQLite and PostgreSQL).  Waiting is bounded for memory.
                if job is not None and (job.done() or waiting.batches >= MAX_IN_FLIGHT):
                    stored += self._settle(group, job)
                    job = None
                if job is None:
                    job, waiting = self._submit(uidvalidity, after, waiting), _Job([], {})
                    after = job.uids[-1]
                if len(group.uids) >= move_at:
                    self._hand_over(client, mover, group)
                    group = MoveGroup()
            if job is not None:
                stored += self._settle(group, job)
                job = None
            if waiting.uids:
                job = self._submit(uidvalidity, after, waiting)
                stored += self._settle(group, job)
                job = None
            mover = self._check_mover(client, mover)
            self._hand_over(client, mover, group)
            if mover is not None:
                self._finish_mover(client, mover)
                mover = None
        finally:
            # On an error, let the transaction in flight land before anyone
            # reloads the checkpoint; its messages are moved by the next session.
            if job is not None and job.future is not None:
                with contextlib.suppress(Exception):
                    job.future.result()
            if mover is not None:
                # Same for the mover: what it has not moved is at or below the checkpoint.
                mover.abandon()
                mover.join()
            self._mover = None
        return stored

    def _submit(self, uidvalidity: int | None, after: int, job: _Job) -> _Job:
        """Hand ``job`` to the database thread; return it with its future set."""
        job.future = self._db.submit(self._commit, uidvalidity, after, job.uids, job.raw)
        return job

    def _commit(self, uidvalidity: int | None, after: int, uids: Sequence[int], raw: dict[int, bytes]) -> int:
        """Store fetched messages and advance the checkpoint from ``after`` (runs in the database thread).

        Raises:
            EarlierBatchFailed: the checkpoint is not at ``after``: the batch
                before this one failed to commit.  Storing this one would
                advance the checkpoint past messages never stored, and the
                next session would move them to the processed folder unstored.
        """
        assert self._mailbox_id is not None
        if self._checkpoint.last_uid != after:
            raise EarlierBatchFailed(f"{span(uids)} not stored: an earlier batch failed to commit")
        cfg = self.cfg
        items = [NewMessage(desk=cfg.desk, source="imap", raw=raw[uid], mailbox_id=self._mailbox_id,
                            uidvalidity=uidvalidity, uid=uid) for uid in uids if uid in raw]
        checkpoint = Checkpoint(uidvalidity, uids[-1])
        new = commit_batch(self.ctx.sessions, self._mailbox_id, self.ctx.instance, cfg.lease_seconds,
                           items, checkpoint)
        self._checkpoint = checkpoint
        self._notify()
        return new

    def _settle(self, group: MoveGroup, job: _Job) -> int:
        """Wait for a job's commit and add its messages to the group to move; return how many rows were new."""
        assert job.future is not None
        self._step = f"storing {span(job.uids)}"
        new = job.future.result()
        group.uids.extend(job.uids)
        group.fetched += len(job.raw)
        group.new += new
        return new

    def _start_mover(self, uidvalidity: int | None) -> Mover | None:
        """Return a mover opening a second session in the background, or None to move here."""
        if not self.use_mover or self._mover_refused or self._connect is None:
            return None
        self._mover = Mover(self.name, self._connect, self.cfg.folder, uidvalidity,
                            self.cfg.processed_folder, self._log_moved)
        return self._mover

    def _check_mover(self, client: IMAPClient, mover: Mover | None) -> Mover | None:
        """Return the mover still in use, or None once moving falls back to ``client``.

        Raises:
            the mover's error, when it failed after logging in: the session
            reconnects like after any IMAP error, and the next one moves
            what was left.
        """
        if mover is None or not mover.failed():
            return mover
        assert mover.error is not None
        if mover.connected:
            self._step = mover.step
            raise mover.error
        # A server that limits connections per user refuses the second login;
        # the mover has taken nothing, so this connection moves everything.
        log.warning("%s: cannot open a second connection to move messages (%s); moving them on "
                    "the fetch connection", self.name, describe(mover.error))
        self._mover_refused = True
        self._mover = None
        for group in mover.take_back():
            self._move_group(client, group)
        return None

    def _hand_over(self, client: IMAPClient, mover: Mover | None, group: MoveGroup) -> None:
        """Have a committed group moved: by the mover if there is one, else on ``client`` now."""
        if mover is None:
            self._move_group(client, group)
        elif group.uids:
            mover.put(group)

    def _finish_mover(self, client: IMAPClient, mover: Mover) -> None:
        """Wait until the mover has moved every group it was given (a stop cuts that short)."""
        mover.close()
        self._step = "waiting for the mover connection to move the last messages"
        while True:
            if self._halt.is_set():
                mover.abandon()  # a stop must not wait for the backlog: the next session moves it
            if mover.join(WAIT_SLICE):
                break
        self._check_mover(client, mover)
        left = sum(len(group.uids) for group in mover.take_back())
        if left:
            log.info("%s: stopping; %d committed message(s) stay in %s for the next session to move",
                     self.name, left, self.cfg.folder)

    def _move_group(self, client: IMAPClient, group: MoveGroup) -> None:
        """Move the committed messages of ``group`` to the processed folder on ``client``."""
        if not group.uids:
            return
        self._step = f"moving {span(group.uids)} to {self.cfg.processed_folder}"
        move_messages(client, group.uids, self.cfg.processed_folder)
        self._log_moved(group)

    def _log_moved(self, group: MoveGroup) -> None:
        log.info("%s: fetched %d messages (%s), stored %d new, moved to %s", self.name, group.fetched,
                 span(group.uids), group.new, self.cfg.processed_folder)

    def _idle(self, client: IMAPClient) -> None:
        """Wait in IDLE (RFC 2177) until new mail, halt, or ``idle_timeout`` (then renew)."""
        self._step = "idling"
        client.idle()
        self.status = "idle"
        ends = time.monotonic() + self.cfg.idle_timeout
        while not self._halt.is_set() and time.monotonic() < ends:
            if has_new_mail(idle_responses(client, min(WAIT_SLICE, self.cfg.idle_timeout))):
                break
        self._step = "ending IDLE"
        client.idle_done()

    def _poll(self, client: IMAPClient) -> None:
        """Wait ``poll_interval`` (the next round's SELECT is the poll), keeping the session alive.

        A NOOP every ``idle_timeout`` keeps a long poll interval inside the
        server's autologout timer (RFC 3501 5.4: at least 30 minutes).
        """
        self.status = "polling"
        self._step = "waiting to poll"
        ends = time.monotonic() + self.cfg.poll_interval
        while not self._halt.is_set() and time.monotonic() < ends:
            self._halt.wait(min(ends - time.monotonic(), self.cfg.idle_timeout))
            if time.monotonic() < ends and not self._halt.is_set():
                self._step = "keeping the session alive (NOOP)"
                client.noop()

    # -- burst mode ------------------------------------------------------------------------

    def fetch_new(self) -> int:
        """Take the lease, store and move everything new once, log out; return rows stored.

        For tests, the bench and one-shot runs. ``notify`` is not called (no loop).

        Raises:
            LeaseLost: another instance watches this mailbox.
        """
        self._mailbox_id = ensure_mailbox(self.ctx.sessions, self.cfg.name)
        if not take_lease(self.ctx.sessions, self._mailbox_id, self.ctx.instance, self.cfg.lease_seconds):
            owner, _ = lease_holder(self.ctx.sessions, self._mailbox_id)
            raise LeaseLost(f"{self.name} is watched by {owner}")
        try:
            with self._open() as client:
                return self.sync_once(client)
        finally:
            release_lease(self.ctx.sessions, self._mailbox_id, self.ctx.instance)


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[..., object], *args: object) -> None:
    # The loop may be closing while the thread finishes: nothing left to tell.
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(callback, *args)


def _settle(done: asyncio.Future[None], error: BaseException | None) -> None:
    if done.done():
        return
    if error is None:
        done.set_result(None)
    else:
        done.set_exception(error)


def make_components(ctx: AppContext) -> list[ImapWatcher]:
    """Return one watcher per configured mailbox."""
    for cfg in ctx.config.imap.mailboxes:
        if cfg.tls != "none" and not cfg.verify_certificates:
            log.warning("imap[%s]: certificate checking is off (verify_certificates = false)", cfg.name)
    return [ImapWatcher(ctx, cfg, use_mover=cfg.second_connection) for cfg in ctx.config.imap.mailboxes]
