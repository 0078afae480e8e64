"""The outbox sender: delivers the replies the respond stage committed.

It claims due rows (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so several
instances share the work; SQLite serialises writers anyway), marks them
``sending`` under a lease and commits, then delivers them over one SMTP
connection (smtplib in a worker thread) to ``[outbound] relay_host``:

* 250: the row is marked ``sent`` in its own short transaction right after
  the server's answer, and the ticket's first-response clock stops;
* 4xx, a refused or dropped connection, a timeout: retried with capped
  exponential backoff (``retry_min`` .. ``retry_max``) until ``give_up_hours``;
* 5xx: a permanent failure, recorded on the ticket (note, error, a triage item).

With no ``relay_host`` every message is written to ``spool_dir/new/<id>.eml``
(written to ``spool_dir/tmp`` first and renamed, so a reader never sees half a
file) and marked sent: nothing is lost, and a rewrite after a crash replaces
the same file rather than adding one.

At-most-once and its one window: a reply is committed once per inbound
message (a unique key), and is sent again only if the process dies after the
relay said 250 and before the ``sent`` mark commits (the lease then expires
and it is retried).  Marks are committed by a second thread as soon as the
database allows (:class:`Marker`): on PostgreSQL that is one message, the one
in flight; on SQLite, the few accepted while a pipeline batch held the write
lock.  A crash before the 250 simply leaves the row to be retried.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import queue
import smtplib
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session, sessionmaker, undefer

from daemon.config import Config, OutboundConfig, read_secret
from daemon.context import AppContext
from daemon.tls import tls_context
from models.base import utcnow
from models.outbox import FAILED, PENDING, SENDING, SENT, OutboxMessage
from models.responders import TICKET_ANSWERED, Ticket, TicketMessage, TriageItem
from models.session import transaction

log = logging.getLogger("acedesk.outbox")

BATCH = 500


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
class Outcome:
    """What happened to one message: ``sent``, ``temporary`` or ``permanent`` (with the reply)."""

    kind: str
    detail: str = ""


def retry_delay(cfg: OutboundConfig, attempts: int) -> dt.timedelta:
    """Return the wait before the next try after ``attempts`` failures (capped exponential)."""
    return dt.timedelta(seconds=min(cfg.retry_max, cfg.retry_min * 2 ** max(0, attempts - 1)))


def lease_seconds(cfg: OutboundConfig) -> float:
    # Long enough for one batch over a slow relay; a crashed sender's rows come back after it.
    return max(10.0, 2 * cfg.timeout + 0.05 * BATCH)


def claim(factory: sessionmaker[Session], cfg: OutboundConfig, limit: int = BATCH) -> list[Claimed]:
    """Claim up to ``limit`` due rows (pending and due, or sending with an expired lease)."""
    now = utcnow()
    with transaction(factory) as session:
        rows = list(session.scalars(
            select(OutboxMessage)
            .where(or_(
                (OutboxMessage.status == PENDING)
                & or_(OutboxMessage.next_attempt_at.is_(None), OutboxMessage.next_attempt_at <= now),
                (OutboxMessage.status == SENDING) & (OutboxMessage.lease_until < now)))
            .order_by(OutboxMessage.id).limit(limit)
            .with_for_update(skip_locked=True)
            .options(undefer(OutboxMessage.raw))))
        until = now + dt.timedelta(seconds=lease_seconds(cfg))
        for row in rows:
            row.status = SENDING
            row.lease_until = until
        return [Claimed(r.id, r.mail_from, list(r.rcpt_to), r.raw, r.attempts, r.created_at, r.ticket_id,
                        r.message_id) for r in rows]


def _about_this_message(exc: OSError) -> bool:
    """Whether the server judged this one message (refused recipients, a 4xx/5xx other than
    421), rather than the connection going away."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return True
    return isinstance(exc, smtplib.SMTPResponseException) and exc.smtp_code != 421


def mark_sent(session: Session, items: Sequence[Claimed], now: dt.datetime) -> None:
    """Mark ``items`` sent and start (or, for answered tickets, stop) their tickets' clocks.

    Three statements whatever the number of items: the marker thread commits
    hundreds at a time on a busy SQLite, and a round of ORM loads per item
    would hold the write lock the pipeline is waiting for.
    """
    for start in range(0, len(items), BATCH):  # bounded IN lists
        chunk = items[start:start + BATCH]
        session.execute(update(OutboxMessage).where(OutboxMessage.id.in_([item.id for item in chunk]))
                        .values(status=SENT, sent_at=now, lease_until=None, last_error=None))
        tickets = sorted({item.ticket_id for item in chunk if item.ticket_id is not None})
        if not tickets:
            continue
        session.execute(update(Ticket).where(Ticket.id.in_(tickets), Ticket.first_response_at.is_(None))
                        .values(first_response_at=now))
        session.execute(update(Ticket).where(Ticket.id.in_(tickets), Ticket.status == TICKET_ANSWERED,
                                             Ticket.resolved_at.is_(None))
                        .values(resolved_at=now))


def record_failure(factory: sessionmaker[Session], cfg: OutboundConfig, item: Claimed, outcome: Outcome) -> None:
    """Schedule a retry (temporary) or record a permanent failure on the ticket."""
    now = utcnow()
    with transaction(factory) as session:
        row = session.get(OutboxMessage, item.id)
        if row is None or row.status == SENT:
            return
        row.attempts = item.attempts + 1
        row.last_error = outcome.detail[:2000]
        row.lease_until = None
        expired = now - item.created_at > dt.timedelta(hours=cfg.give_up_hours)
        if outcome.kind == "temporary" and not expired:
            row.status = PENDING
            row.next_attempt_at = now + retry_delay(cfg, row.attempts)
            log.warning("outbox %s (%s) to %s: temporary failure (attempt %d), retry at %s: %s",
                        item.id, item.message_id, ",".join(item.rcpt_to), row.attempts,
                        row.next_attempt_at.isoformat(timespec="seconds"), outcome.detail)
            return
        row.status = FAILED
        why = outcome.detail if outcome.kind == "permanent" else f"gave up after {cfg.give_up_hours:g} h: {outcome.detail}"
        log.error("outbox %s (%s) to %s: permanent failure: %s", item.id, item.message_id,
                  ",".join(item.rcpt_to), why)
        if item.ticket_id is not None:
            ticket = session.get(Ticket, item.ticket_id)
            if ticket is not None:
                ticket.last_error = f"reply {item.message_id} not delivered: {why}"[:2000]
                session.add(TicketMessage(ticket_id=ticket.id, direction="note", outbox_id=item.id,
                                          author="outbox", text=f"Delivery failed permanently: {why}"[:4000],
                                          created_at=now))
                session.add(TriageItem(ticket_id=ticket.id, reason="delivery_failed", security=ticket.security,
                                       label=ticket.label, created_at=now,
                                       suggestion={"error": why[:500]}))


# --- delivery -----------------------------------------------------------------------


def _classify_smtp_error(exc: Exception) -> Outcome:
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _ in exc.recipients.values()]
        text = "; ".join(f"{r}: {c} {m.decode(errors='replace') if isinstance(m, bytes) else m}"
                         for r, (c, m) in exc.recipients.items())
        return Outcome("permanent" if all(500 <= c < 600 for c in codes) else "temporary", text)
    if isinstance(exc, (smtplib.SMTPDataError, smtplib.SMTPSenderRefused, smtplib.SMTPResponseException)):
        code = exc.smtp_code
        msg = exc.smtp_error.decode(errors="replace") if isinstance(exc.smtp_error, bytes) else str(exc.smtp_error)
        return Outcome("permanent" if 500 <= code < 600 else "temporary", f"{code} {msg}")
    return Outcome("temporary", f"{type(exc).__name__}: {exc}")


class SmtpSender:
    """One relay connection for a batch (smtplib; run in a worker thread)."""

    def __init__(self, config: Config) -> None:
        self.cfg = config.outbound
        self.password = read_secret("outbound", self.cfg.password_env, self.cfg.password_file, config) \
            if self.cfg.username else ""
        self.context = tls_context(self.cfg.verify_certificates)

    def connect(self) -> smtplib.SMTP:
        cfg = self.cfg
        if cfg.tls == "implicit":
            client: smtplib.SMTP = smtplib.SMTP_SSL(cfg.relay_host, cfg.relay_port, timeout=cfg.timeout,
                                                    context=self.context)
        else:
            client = smtplib.SMTP(cfg.relay_host, cfg.relay_port, timeout=cfg.timeout)
        client.ehlo()
        if cfg.tls == "starttls":
            # Required when configured: never falls back to plaintext.
            client.starttls(context=self.context)
            client.ehlo()
        if cfg.username:
            client.login(cfg.username, self.password)
        return client


def deliver_batch(factory: sessionmaker[Session], config: Config, sender: SmtpSender | None,
                  items: list[Claimed]) -> tuple[int, int]:
    """Deliver ``items``; return ``(sent, failed)``.  Marks each as soon as its fate is known."""
    cfg = config.outbound
    if not cfg.relay_host:
        return spool_batch(factory, config, items), 0
    assert sender is not None
    sent = failed = 0
    try:
        client = sender.connect()
    except Exception as exc:  # noqa: BLE001 - a refused or dropped connection: retry all
        outcome = _classify_smtp_error(exc) if isinstance(exc, smtplib.SMTPResponseException) \
            else Outcome("temporary", f"relay {cfg.relay_host}:{cfg.relay_port}: {type(exc).__name__}: {exc}")
        for item in items:
            record_failure(factory, cfg, item, outcome)
        return 0, len(items)
    marker = Marker(factory)
    try:
        for index, item in enumerate(items):
            try:
                refused = client.sendmail(item.mail_from, item.rcpt_to, item.raw)
            except OSError as exc:  # smtplib's errors are OSErrors too
                if _about_this_message(exc):
                    # A reply for this message (4xx/5xx, RFC 5321 section 4.2.1): judge it, go on.
                    record_failure(factory, cfg, item, _classify_smtp_error(exc))
                    failed += 1
                    try:
                        client.rset()
                    except OSError:
                        pass
                    continue
                # 421, a dropped connection or any other error: this one and the rest are retried later.
                outcome = Outcome("temporary", f"{type(exc).__name__}: {exc}")
                for rest in items[index:]:
                    record_failure(factory, cfg, rest, outcome)
                failed += len(items) - index
                return sent, failed
            if refused:
                log.warning("outbox %s: some recipients refused: %s", item.id, refused)
            # Marked as soon as the database allows: this is the whole resend window.
            marker.put(item)
            sent += 1
    finally:
        marker.close()
        try:
            client.quit()
        except Exception:  # noqa: BLE001 - closing a dead connection
            client.close()
    return sent, failed


class Marker:
    """Commits ``sent`` marks from a second thread while the sender goes on.

    Each mark is committed as soon as the database lets us write: on
    PostgreSQL that is right after the 250, one message at a time; on SQLite,
    where one writer holds the whole database while a pipeline batch runs,
    the marks that piled up meanwhile go in one transaction.  Waiting for the
    lock before sending the next message would instead stall delivery behind
    every pipeline batch.  The resend window after a crash is exactly the
    messages accepted and not yet marked.
    """

    def __init__(self, factory: sessionmaker[Session]) -> None:
        self.factory = factory
        self.queue: queue.SimpleQueue[Claimed | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name="outbox-marker", daemon=True)
        self.error: BaseException | None = None
        self.thread.start()

    def put(self, item: Claimed) -> None:
        self.queue.put(item)

    def _run(self) -> None:
        done = False
        while not done:
            items = [self.queue.get()]
            while True:
                try:
                    items.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            done = None in items
            items = [i for i in items if i is not None]
            if not items:
                continue
            try:
                with transaction(self.factory) as session:
                    mark_sent(session, items, utcnow())
            except BaseException as exc:  # noqa: BLE001 - the lease brings these back; say so
                self.error = exc
                log.error("outbox: could not mark %d sent message(s) (they may be sent again after "
                          "their lease): %s", len(items), exc)

    def close(self) -> None:
        """Wait until every mark handed over is committed."""
        self.queue.put(None)
        self.thread.join()


def spool_batch(factory: sessionmaker[Session], config: Config, items: list[Claimed]) -> int:
    """Write ``items`` to the spool folder (atomic rename) and mark them sent."""
    spool = config.path(config.outbound.spool_dir)
    tmp_dir, new_dir = spool / "tmp", spool / "new"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    new_dir.mkdir(parents=True, exist_ok=True)
    for item in items:
        tmp = tmp_dir / f"{item.id}.{os.getpid()}.eml"
        envelope = (f"X-Acedesk-Envelope-From: {item.mail_from}\r\n"
                    f"X-Acedesk-Envelope-To: {', '.join(item.rcpt_to)}\r\n").encode()
        with open(tmp, "wb") as fh:
            fh.write(envelope + item.raw)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, new_dir / f"{item.id:010d}.eml")
    now = utcnow()
    with transaction(factory) as session:
        mark_sent(session, items, now)
    return len(items)


def run_once(factory: sessionmaker[Session], config: Config, sender: SmtpSender | None = None) -> int:
    """Claim one batch and deliver it; return how many rows were handled (burst mode, tests)."""
    items = claim(factory, config.outbound)
    if not items:
        return 0
    if config.outbound.relay_host and sender is None:
        sender = SmtpSender(config)
    sent, failed = deliver_batch(factory, config, sender, items)
    log.debug("outbox batch: %d sent, %d failed", sent, failed)
    return len(items) if sent else 0


def drain_outbox(factory: sessionmaker[Session], config: Config, max_batches: int = 1000) -> int:
    """Deliver everything due now; return how many were sent or tried."""
    total = 0
    for _ in range(max_batches):
        n = run_once(factory, config)
        if not n:
            break
        total += n
    return total


class OutboxSender:
    """The supervisor component: delivers whenever the respond stage wakes it, or polls."""

    name = "outbox"

    def __init__(self, ctx: AppContext, poll_interval: float = 1.0) -> None:
        self.ctx = ctx
        self.poll_interval = poll_interval
        self.sender = SmtpSender(ctx.config) if ctx.config.outbound.relay_host else None

    async def run(self, stop: asyncio.Event) -> None:
        wake = self.ctx.wakeup("outbox")
        while not stop.is_set():
            wake.clear()
            handled = await asyncio.to_thread(run_once, self.ctx.sessions, self.ctx.config, self.sender)
            if handled:
                continue
            waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(wake.wait())]
            try:
                await asyncio.wait(waiters, timeout=self.poll_interval, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waiters:
                    w.cancel()


def make_components(ctx: AppContext) -> list[Any]:
    """Return this area's long-running components for the supervisor."""
    return [OutboxSender(ctx, poll_interval=min(1.0, ctx.config.pipeline.poll_interval))]
