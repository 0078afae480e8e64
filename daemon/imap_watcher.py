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
import datetime as dt
import functools
import logging
import queue
import random
import re
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from imapclient import IMAPClient, SocketTimeout
from imapclient.exceptions import IMAPClientError, LoginError
from imapclient.response_parser import parse_fetch_response
from sqlalchemy import or_, select as sql_select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from daemon.config import Config, ConfigError, MailboxConfig, read_secret
from daemon.context import AppContext
from daemon.store import NewMessage, insert_messages
from daemon.tls import tls_context as client_tls_context
from models.base import utcnow
from models.core import Mailbox
from models.session import transaction

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


class ImapError(Exception):
    """The server did something that makes this session unusable."""


class TlsRefused(ImapError):
    """TLS could not be established; we never fall back to plaintext."""


class LeaseLost(Exception):
    """Another instance holds the mailbox lease: stop touching the mailbox."""


class EarlierBatchFailed(Exception):
    """A batch was not stored because one before it failed to commit."""


@dataclass
class _Group:
    """Committed messages waiting to be moved together."""

    uids: list[int] = field(default_factory=list)
    fetched: int = 0
    new: int = 0


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


@dataclass
class Checkpoint:
    """Where a mailbox's intake stands: UIDs up to ``last_uid`` are committed."""

    uidvalidity: int | None
    last_uid: int


# --- the database side: mailbox row, lease, checkpoint -------------------------------


def ensure_mailbox(sessions: sessionmaker[Session], name: str) -> int:
    """Return the id of mailbox ``name``, creating its row on first use."""
    with sessions() as session:
        found = session.scalar(sql_select(Mailbox.id).where(Mailbox.name == name))
    if found is not None:
        return found
    try:
        with transaction(sessions) as session:
            session.add(Mailbox(name=name, last_uid=0))
    except IntegrityError:
        pass  # another instance created it at the same moment
    with sessions() as session:
        return session.scalars(sql_select(Mailbox.id).where(Mailbox.name == name)).one()


def take_lease(sessions: sessionmaker[Session], mailbox_id: int, owner: str, seconds: float) -> bool:
    """Take or renew the lease on a mailbox; return whether ``owner`` now holds it.

    One conditional UPDATE, so two instances racing cannot both win: the row
    is taken only when it is free, already ours, or its lease has expired.
    """
    now = utcnow()
    with transaction(sessions) as session:
        result = session.execute(
            update(Mailbox)
            .where(Mailbox.id == mailbox_id,
                   or_(Mailbox.lease_owner.is_(None), Mailbox.lease_owner == owner,
                       Mailbox.lease_until.is_(None), Mailbox.lease_until < now))
            .values(lease_owner=owner, lease_until=now + dt.timedelta(seconds=seconds))
            .execution_options(synchronize_session=False))
        return result.rowcount == 1


def lease_holder(sessions: sessionmaker[Session], mailbox_id: int) -> tuple[str | None, dt.datetime | None]:
    """Return who holds the lease on a mailbox, and until when."""
    with sessions() as session:
        row = session.execute(sql_select(Mailbox.lease_owner, Mailbox.lease_until)
                              .where(Mailbox.id == mailbox_id)).one()
        return row[0], row[1]


def release_lease(sessions: sessionmaker[Session], mailbox_id: int, owner: str) -> None:
    """Give the lease up (only if it is still ours), so another instance can take over at once."""
    with transaction(sessions) as session:
        session.execute(
            update(Mailbox).where(Mailbox.id == mailbox_id, Mailbox.lease_owner == owner)
            .values(lease_owner=None, lease_until=None)
            .execution_options(synchronize_session=False))


def load_checkpoint(sessions: sessionmaker[Session], mailbox_id: int) -> Checkpoint:
    """Return the stored UID checkpoint of a mailbox."""
    with sessions() as session:
        row = session.execute(sql_select(Mailbox.uidvalidity, Mailbox.last_uid)
                              .where(Mailbox.id == mailbox_id)).one()
        return Checkpoint(uidvalidity=row[0], last_uid=row[1] or 0)


def commit_batch(sessions: sessionmaker[Session], mailbox_id: int, owner: str, lease_seconds: float,
                 items: Sequence[NewMessage], checkpoint: Checkpoint) -> int:
    """Store ``items`` and advance the checkpoint in one transaction; return how many were new.

    The checkpoint UPDATE only matches while ``owner`` holds the lease (it
    renews it too): a watcher that lost its lease rolls back instead of
    moving the checkpoint under the new holder's feet.

    Raises:
        LeaseLost: another instance holds the lease; nothing was committed.
    """
    with transaction(sessions) as session:
        new = insert_messages(session, items)
        result = session.execute(
            update(Mailbox).where(Mailbox.id == mailbox_id, Mailbox.lease_owner == owner)
            .values(uidvalidity=checkpoint.uidvalidity, last_uid=checkpoint.last_uid,
                    lease_until=utcnow() + dt.timedelta(seconds=lease_seconds),
                    updated_at=utcnow())
            .execution_options(synchronize_session=False))
        if result.rowcount != 1:
            raise LeaseLost(f"lease on mailbox {mailbox_id} is no longer held by {owner}")
        return new


# --- the IMAP side: pure helpers over one client ---------------------------------------


def tls_context(cfg: MailboxConfig, config: Config | None) -> ssl.SSLContext:
    """Return the TLS context for a mailbox: certificates checked unless configured otherwise."""
    ca_file = str(config.path(cfg.ca_file) if config else cfg.ca_file) if cfg.ca_file else ""
    return client_tls_context(cfg.verify_certificates, ca_file)


def connect(cfg: MailboxConfig, password: str, config: Config | None = None) -> IMAPClient:
    """Return a logged-in client for ``cfg``, over TLS unless ``tls = "none"``.

    Raises:
        TlsRefused: STARTTLS is missing or failed; no credentials were sent.
        LoginError: the server refused the credentials.
    """
    # Every socket operation, the connect included, is bounded (a hung server
    # must not stall the watcher); IDLE waits use their own short polls.
    timeout = SocketTimeout(connect=cfg.command_timeout, read=cfg.command_timeout)
    implicit = cfg.tls == "implicit"
    context = tls_context(cfg, config) if cfg.tls != "none" else None
    client = IMAPClient(cfg.host, port=cfg.port, ssl=implicit, ssl_context=context, timeout=timeout)
    quiet_imaplib(client)
    try:
        if cfg.tls == "starttls":
            start_tls(client, cfg, context)
        client.login(cfg.username, password)
    except BaseException:
        close_quietly(client)
        raise
    return client


def quiet_imaplib(client: IMAPClient) -> None:
    """Turn imaplib's debug tracing off unless someone asked for imaplib debug logs.

    imapclient sets ``imaplib.IMAP4.debug = 5`` so that imaplib traces through
    its logger; imaplib then formats the repr of every response -- whole
    message bodies -- whether or not the log record is kept.  Measured here,
    that halves the FETCH rate (10k -> 20k msgs/s without it).
    """
    if not logging.getLogger("imapclient.imaplib").isEnabledFor(logging.DEBUG):
        client._imap.debug = 0  # imaplib's documented attribute, on imapclient's private handle


def start_tls(client: IMAPClient, cfg: MailboxConfig, context: ssl.SSLContext | None) -> None:
    """Upgrade the connection with STARTTLS (RFC 3501 6.2.1), or raise :class:`TlsRefused`.

    A server (or a man in the middle) that does not offer STARTTLS gets no
    plaintext login from us: that is the downgrade attack RFC 2595 warns of.
    """
    where = f"{cfg.host}:{cfg.port}"
    if not client.has_capability("STARTTLS"):
        raise TlsRefused(f"{where} does not offer STARTTLS; refusing to log in over plaintext "
                         "(use tls = \"implicit\" if the server speaks IMAPS)")
    try:
        client.starttls(context)
    except (IMAPClientError, ssl.SSLError, OSError) as exc:
        raise TlsRefused(f"STARTTLS with {where} failed ({describe(exc)}); "
                         "refusing to log in over plaintext") from exc


def close_quietly(client: IMAPClient) -> None:
    """Log out if the connection still works, else just close the socket."""
    try:
        client.logout()
    except Exception:  # noqa: BLE001 - the connection is being thrown away anyway
        with contextlib.suppress(Exception):
            client.shutdown()


def ensure_folder(client: IMAPClient, folder: str) -> None:
    """Create ``folder`` unless it exists (another client may create it at the same moment)."""
    if client.folder_exists(folder):
        return
    try:
        client.create_folder(folder)
    except IMAPClientError:
        if not client.folder_exists(folder):
            raise


def select_uidvalidity(client: IMAPClient, folder: str) -> int:
    """Select ``folder`` and return its UIDVALIDITY."""
    info = client.select_folder(folder)
    value = info.get(b"UIDVALIDITY")
    if value is None:  # RFC 3501 6.3.1 makes it mandatory
        raise ImapError(f"SELECT {folder} returned no UIDVALIDITY")
    return int(value)


def uids_after(client: IMAPClient, last_uid: int) -> list[int]:
    """Return the UIDs above ``last_uid`` in the selected folder, ascending.

    ``UID n:*`` always matches the highest UID even when it is below n
    (RFC 3501 6.4.8: ``*`` is the largest UID in use, and a range is
    unordered), so the result is filtered.
    """
    return sorted(uid for uid in client.search(["UID", f"{last_uid + 1}:*"]) if uid > last_uid)


def uids_upto(client: IMAPClient, last_uid: int, *criteria: str) -> list[int]:
    """Return the UIDs at or below ``last_uid`` still in the selected folder."""
    if last_uid <= 0:
        return []
    found = client.search(["UID", f"1:{last_uid}", *criteria])
    return sorted(uid for uid in found if uid <= last_uid)


def uid_set(uids: Sequence[int]) -> str:
    """Return ``uids`` as a compact IMAP sequence set: ``1:500,502``."""
    parts: list[str] = []
    ordered = sorted(uids)
    start = prev = ordered[0]
    for uid in ordered[1:] + [0]:
        if uid == prev + 1:
            prev = uid
            continue
        parts.append(str(start) if start == prev else f"{start}:{prev}")
        start = prev = uid
    return ",".join(parts)


def move_messages(client: IMAPClient, uids: Sequence[int], folder: str) -> None:
    """Move ``uids`` out of the selected folder into ``folder``."""
    if not uids:
        return
    ids = uid_set(uids)
    if client.has_capability("MOVE"):
        client.move(ids, folder)  # RFC 6851: atomic
        return
    client.copy(ids, folder)
    client.add_flags(ids, [b"\\Deleted"], silent=True)
    if client.has_capability("UIDPLUS"):
        client.uid_expunge(ids)  # RFC 4315 2.1: expunges only these UIDs
    else:
        client.expunge()  # RFC 3501 6.4.3: also expunges others' \Deleted messages


def fetch_raw(client: IMAPClient, uids: Sequence[int]) -> dict[int, bytes]:
    """Return the raw bytes of ``uids`` (missing ones were expunged meanwhile).

    imapclient's ``fetch`` tokenises every response in Python, which costs
    about twice the CPU of reading it (measured here: 0.3 against 0.13 CPU-s
    for 10,000 messages) -- CPU, and the GIL, that the database thread needs
    at the same moment.  So the command goes through imapclient's imaplib
    handle, the usual response shape is read directly, and any other shape
    goes through imapclient's own parser.
    """
    typ, data = client._imap.uid("FETCH", uid_set(uids), "(BODY.PEEK[])")  # BAD raises
    if typ != "OK":
        raise IMAPClientError(f"UID FETCH {span(uids)} failed: {data!r}")
    wanted = set(uids)
    found = plain_bodies(data)
    if found is None:
        parsed = parse_fetch_response(data, False, True)
        found = {uid: item[b"BODY[]"] for uid, item in parsed.items() if item.get(b"BODY[]") is not None}
    return {uid: raw for uid, raw in found.items() if uid in wanted}


#: How a server usually answers ``UID FETCH ... (BODY.PEEK[])``: ``* 7 FETCH (UID 42 BODY[] {2048}``,
#: the literal, then ``)``.  (RFC 3501 7.4.2: the UID must be there; its place is free.)
_PLAIN_FETCH = re.compile(rb"\d+ \(UID (\d+) BODY\[\] \{\d+\}")


def plain_bodies(data: list[object]) -> dict[int, bytes] | None:
    """Return the bodies in imaplib's FETCH ``data`` by UID, or None if any response has another shape.

    Another shape -- UID after the body, unsolicited FLAGS, a quoted or NIL
    body -- is left to imapclient's parser rather than guessed at here.
    """
    if data == [None]:  # imaplib's way of saying no FETCH response came (all expunged)
        return {}
    found: dict[int, bytes] = {}
    items = iter(data)
    for item in items:
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], bytes)):
            return None
        match = _PLAIN_FETCH.fullmatch(item[0])
        if match is None or next(items, None) != b")":
            return None
        found[int(match.group(1))] = item[1]
    return found


def idle_responses(client: IMAPClient, timeout: float) -> list[tuple[object, ...]]:
    """Wait up to ``timeout`` for IDLE responses (RFC 2177) and return them.

    imapclient's ``idle_check`` cannot tell "nothing yet" from "connection
    closed" (both end its read loop), so readiness is checked here first: a
    readable socket that yields no response has been closed by the server.

    Raises:
        ConnectionError: the server closed the connection or said BYE.
    """
    sock = client.socket()
    pending = isinstance(sock, ssl.SSLSocket) and sock.pending() > 0
    if not pending:
        readable, _, _ = select.select([sock], [], [], timeout)
        if not readable:
            return []
    responses = client.idle_check(timeout=0)
    if not responses:
        raise ConnectionError("the server closed the connection")
    for response in responses:
        if response and response[0] == b"BYE":
            raise ConnectionError(f"the server said BYE: {response[1:]!r}")
    return responses


def has_new_mail(responses: Sequence[tuple[object, ...]]) -> bool:
    """Return whether IDLE responses announce new messages (``* n EXISTS``)."""
    return any(len(r) >= 2 and r[1] == b"EXISTS" for r in responses)


def describe(exc: BaseException) -> str:
    """Return an exception as a short phrase for a log line."""
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timed out"
    text = str(exc).strip()
    if text.startswith(("b'", 'b"')) and text.endswith(("'", '"')):
        text = text[2:-1]  # imapclient wraps raw server text: b'[AUTHENTICATIONFAILED] ...'
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def span(uids: Sequence[int]) -> str:
    return f"uid {uids[0]}" if len(uids) == 1 else f"uid {uids[0]}-{uids[-1]}"


def chunks(items: Sequence[int], size: int) -> Iterator[Sequence[int]]:
    for start in range(0, len(items), max(1, size)):
        yield items[start:start + size]


# --- the mover: MOVE on a second connection while the first one fetches ------------------


class Mover:
    """A second IMAP session that moves committed groups while the first session fetches.

    imapclient is not thread safe, so the mover owns its client in its own
    thread.  The client comes from the watcher's own ``connect`` call (same
    TLS rules, same timeouts) and selects the same folder; a UIDVALIDITY other
    than the fetch session's would make the UIDs mean other messages, so that
    ends the mover before it moves anything.  Groups are handed over only
    once committed and are moved in the order they came.

    Nothing the mover leaves undone is lost: every UID it was given is at or
    below the checkpoint, so the next session's ``_move_leftovers`` moves it.
    """

    def __init__(self, name: str, open_client: Callable[[], IMAPClient], folder: str,
                 uidvalidity: int | None, processed: str, moved: Callable[[_Group], None]) -> None:
        #: What the mover is doing, for the log line when it fails.
        self.step = "opening a second connection to move messages"
        #: Why the mover ended early, if it did.
        self.error: BaseException | None = None
        #: Whether it logged in; before that it has taken (and moved) nothing.
        self.connected = False
        self._open_client = open_client
        self._folder = folder
        self._uidvalidity = uidvalidity
        self._processed = processed
        self._moved = moved
        self._queue: queue.SimpleQueue[_Group | None] = queue.SimpleQueue()
        self._stopping = threading.Event()
        self._client: IMAPClient | None = None
        self._thread = threading.Thread(target=self._main, name=f"{name}-mover", daemon=True)
        self._thread.start()

    def put(self, group: _Group) -> None:
        """Hand over a committed group to move."""
        self._queue.put(group)

    def close(self) -> None:
        """Say no more groups will come: the mover logs out once it has moved the ones it has."""
        self._queue.put(None)

    def abandon(self) -> None:
        """Let the MOVE in progress finish and leave the rest to the next session."""
        if not self._stopping.is_set():
            self._stopping.set()
            self._queue.put(None)  # wakes a mover waiting for a group

    def join(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` for the mover to log out; return whether it has."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def failed(self) -> bool:
        """Return whether the mover has ended on an error."""
        return self.error is not None and not self._thread.is_alive()

    def take_back(self) -> list[_Group]:
        """Return the groups the mover never took (once it has ended)."""
        groups: list[_Group] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return groups
            if item is not None:
                groups.append(item)

    def abort_socket(self) -> None:
        """Cut the mover's connection from another thread (a stop that cannot wait)."""
        client = self._client
        if client is not None:
            with contextlib.suppress(Exception):
                client.socket().shutdown(socket.SHUT_RDWR)

    def _main(self) -> None:
        try:
            client = self._open_client()
        except BaseException as exc:  # noqa: BLE001 - the fetch session decides what it means
            self.error = exc
            return
        self._client = client
        self.connected = True
        try:
            self.step = f"selecting {self._folder} on the mover connection"
            uidvalidity = select_uidvalidity(client, self._folder)
            if uidvalidity != self._uidvalidity:
                raise ImapError(f"UIDVALIDITY of {self._folder} changed from {self._uidvalidity} to "
                                f"{uidvalidity} during the session")
            while not self._stopping.is_set():
                group = self._queue.get()
                if group is None or self._stopping.is_set():
                    break
                self.step = f"moving {span(group.uids)} to {self._processed} on the mover connection"
                move_messages(client, group.uids, self._processed)
                self._moved(group)
        except BaseException as exc:  # noqa: BLE001 - handed to the fetch session
            self.error = exc
        finally:
            self._client = None
            close_quietly(client)


# --- the watcher -------------------------------------------------------------------------


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
            await _wait(stop, retry)
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
                await asyncio.wait([stopper, done], timeout=renew_every, return_when=asyncio.FIRST_COMPLETED)
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
        delay = self.backoff_min
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
                wait = self._jitter(self.backoff_max)
                log.error("%s: %s failed: %s; retrying in %.0f s", self.name, self._step, describe(exc), wait)
            except (OSError, IMAPClientError, ImapError, SQLAlchemyError) as exc:
                if self._synced:
                    delay = self.backoff_min
                wait = self._jitter(delay)
                if not self._halt.is_set():
                    log.warning("%s: %s failed: %s; reconnecting in %.1f s", self.name, self._step,
                                describe(exc), wait)
                delay = min(self.backoff_max, delay * 2)
            except Exception:  # noqa: BLE001 - a bug must not take the daemon down
                wait = self._jitter(self.backoff_max)
                log.exception("%s: unexpected error while %s; retrying in %.0f s", self.name, self._step, wait)
            self.status = "backing off"
            self._halt.wait(wait)

    def _jitter(self, delay: float) -> float:
        # Spread reconnects so that many watchers do not hit a restarted server at once.
        return delay * random.uniform(0.75, 1.0)

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
        group = _Group()
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
                    group = _Group()
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

    def _settle(self, group: _Group, job: _Job) -> int:
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

    def _hand_over(self, client: IMAPClient, mover: Mover | None, group: _Group) -> None:
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

    def _move_group(self, client: IMAPClient, group: _Group) -> None:
        """Move the committed messages of ``group`` to the processed folder on ``client``."""
        if not group.uids:
            return
        self._step = f"moving {span(group.uids)} to {self.cfg.processed_folder}"
        move_messages(client, group.uids, self.cfg.processed_folder)
        self._log_moved(group)

    def _log_moved(self, group: _Group) -> None:
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


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


def make_components(ctx: AppContext) -> list[ImapWatcher]:
    """Return one watcher per configured mailbox."""
    for cfg in ctx.config.imap.mailboxes:
        if cfg.tls != "none" and not cfg.verify_certificates:
            log.warning("imap[%s]: certificate checking is off (verify_certificates = false)", cfg.name)
    return [ImapWatcher(ctx, cfg, use_mover=cfg.second_connection) for cfg in ctx.config.imap.mailboxes]
