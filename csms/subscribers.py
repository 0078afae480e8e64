"""CSMS subscribers over the database, each inside the caller's transaction:
subscriber import, subscriptions, pending double-opt-in confirmations,
bounce records and the rate-limited control mail (confirmations, results),
which goes out through the transactional outbox like help-desk replies.
SQLAlchemy only: no sockets, no SMTP (those live in ``daemon/``).
"""

from __future__ import annotations

import datetime as dt
import email.utils
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.orm import Session

from csms.service import CsmsError, ensure_topics
from models.base import utcnow
from models.csvfile import read_rows
from models.csms import (
    ACTIVE,
    DISABLED,
    FAILED,
    PENDING,
    UNSUBSCRIBED,
    BounceEvent,
    ControlMail,
    Delivery,
    PendingConfirmation,
    Subscriber,
    Subscription,
    Topic,
)
from models.outbox import PENDING as OUTBOX_PENDING
from models.outbox import OutboxMessage

log = logging.getLogger("acedesk.csms")



# --- subscribers --------------------------------------------------------------


@dataclass
class ImportStats:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped: int = 0
    rejected: int = 0


def import_subscribers(session: Session, rows: Sequence[tuple[str, list[str], str]], stats: ImportStats) -> None:
    """Create or update subscribers and set their topics to exactly the given ones.

    Re-import updates, never duplicates.  Addresses that unsubscribed or were
    disabled by bounces are left alone (an operator list never re-subscribes
    someone who left).
    """
    by_email: dict[str, tuple[list[str], str]] = {}
    for email_address, topics, language in rows:
        by_email[email_address.strip().lower()] = (topics, language or "en")
    if not by_email:
        return
    topic_ids = ensure_topics(session, {t for topics, _ in by_email.values() for t in topics})
    existing = {email_address: (sid, status, lang) for sid, email_address, status, lang in session.execute(
        select(Subscriber.id, Subscriber.email, Subscriber.status, Subscriber.language)
        .where(Subscriber.email.in_(list(by_email))))}
    new = [{"email": e, "language": lang, "status": ACTIVE, "created_at": utcnow(), "updated_at": utcnow()}
           for e, (_, lang) in by_email.items() if e not in existing]
    if new:
        session.execute(insert(Subscriber), new)
        stats.created += len(new)
        for sid, email_address in session.execute(select(Subscriber.id, Subscriber.email)
                                                  .where(Subscriber.email.in_([n["email"] for n in new]))):
            existing[email_address] = (sid, ACTIVE, by_email[email_address][1])
    ids = {e: v[0] for e, v in existing.items() if v[1] == ACTIVE}
    stats.skipped += sum(1 for e, v in existing.items() if v[1] != ACTIVE and e in by_email)
    current: dict[int, set[int]] = {}
    for sid, tid in session.execute(select(Subscription.subscriber_id, Subscription.topic_id)
                                    .where(Subscription.subscriber_id.in_(list(ids.values())))):
        current.setdefault(sid, set()).add(tid)
    add: list[dict[str, Any]] = []
    remove: list[tuple[int, int]] = []
    for email_address, sid in ids.items():
        topics, lang = by_email[email_address]
        want = {topic_ids[t] for t in topics}
        have = current.get(sid, set())
        add += [{"subscriber_id": sid, "topic_id": t, "created_at": utcnow()} for t in want - have]
        remove += [(sid, t) for t in have - want]
        changed = bool(want ^ have) or existing[email_address][2] != lang
        if existing[email_address][2] != lang:
            session.execute(update(Subscriber).where(Subscriber.id == sid).values(language=lang))
        if email_address not in {n["email"] for n in new}:
            if changed:
                stats.updated += 1
            else:
                stats.unchanged += 1
    if add:
        session.execute(insert(Subscription), add)
    for sid, tid in remove:
        session.execute(delete(Subscription).where(Subscription.subscriber_id == sid, Subscription.topic_id == tid))


def subscribe(session: Session, email_address: str, topics: Sequence[str], language: str) -> Subscriber:
    """Subscribe a (confirmed) address to ``topics``; reactivates an unsubscribed one."""
    email_address = email_address.strip().lower()
    subscriber = session.scalar(select(Subscriber).where(Subscriber.email == email_address))
    if subscriber is None:
        subscriber = Subscriber(email=email_address, language=language, status=ACTIVE)
        session.add(subscriber)
        session.flush()
    else:
        subscriber.status = ACTIVE
        subscriber.language = language
    ids = ensure_topics(session, topics)
    have = set(session.scalars(select(Subscription.topic_id).where(Subscription.subscriber_id == subscriber.id)))
    for tid in set(ids.values()) - have:
        session.add(Subscription(subscriber_id=subscriber.id, topic_id=tid))
    session.flush()
    return subscriber


def unsubscribe(session: Session, subscriber: Subscriber, topics: Sequence[str] | None = None) -> None:
    """Remove ``topics`` (all when None or empty); with none left the address is unsubscribed."""
    if topics:
        ids = [tid for tid in session.scalars(select(Topic.id).where(Topic.name.in_(list(topics))))]
        session.execute(delete(Subscription).where(Subscription.subscriber_id == subscriber.id,
                                                   Subscription.topic_id.in_(ids)))
    else:
        session.execute(delete(Subscription).where(Subscription.subscriber_id == subscriber.id))
    left = session.scalar(select(func.count()).where(Subscription.subscriber_id == subscriber.id))
    if not left:
        subscriber.status = UNSUBSCRIBED
        # Deliveries of notices still going out are not sent to someone who left.
        session.execute(update(Delivery).where(Delivery.subscriber_id == subscriber.id, Delivery.status == PENDING)
                        .values(status=FAILED, last_error="unsubscribed before delivery"))


def set_topics(session: Session, subscriber: Subscriber, topics: Sequence[str]) -> None:
    """Make ``topics`` exactly the subscriber's topics (none: unsubscribed); reactivates them."""
    if not topics:
        unsubscribe(session, subscriber)
        return
    drop = set(subscriber_topics(session, subscriber.id)) - set(topics)
    subscribe(session, subscriber.email, topics, subscriber.language)
    if drop:
        unsubscribe(session, subscriber, sorted(drop))


def subscriber_topics(session: Session, subscriber_id: int) -> list[str]:
    return list(session.scalars(select(Topic.name).join(Subscription, Subscription.topic_id == Topic.id)
                                .where(Subscription.subscriber_id == subscriber_id).order_by(Topic.name)))


# --- bounces -------------------------------------------------------------------------


def record_bounce(session: Session, subscriber_id: int, *, kind: str, notice_number: int | None, action: str,
                  status_code: str, diagnostic: str, inbound_message_id: int | None, threshold: int,
                  window_days: int, now: dt.datetime, source: str = "dsn") -> bool:
    """Record a bounce; return True when it disabled the subscriber (hard bounces at the threshold)."""
    session.add(BounceEvent(subscriber_id=subscriber_id, notice_number=notice_number, kind=kind, source=source,
                            action=action, status_code=status_code, diagnostic=diagnostic,
                            inbound_message_id=inbound_message_id, received_at=now))
    session.flush()
    if kind != "hard":
        return False
    hard = session.scalar(select(func.count()).where(
        BounceEvent.subscriber_id == subscriber_id, BounceEvent.kind == "hard",
        BounceEvent.received_at >= now - dt.timedelta(days=window_days))) or 0
    subscriber = session.get(Subscriber, subscriber_id)
    if subscriber is not None and subscriber.status == ACTIVE and hard >= threshold:
        subscriber.status = DISABLED
        return True
    return False


def record_complaint(session: Session, subscriber_id: int, *, feedback_type: str, user_agent: str,
                     inbound_message_id: int | None, now: dt.datetime) -> None:
    """Record an ARF complaint (RFC 5965) about a subscriber with the bounces (never counted as one)."""
    session.add(BounceEvent(subscriber_id=subscriber_id, notice_number=None, kind="complaint", source="arf",
                            action=feedback_type[:32], status_code="", diagnostic=user_agent[:1000],
                            inbound_message_id=inbound_message_id, received_at=now))
    session.flush()


# --- confirmations and control mail ------------------------------------------------


def may_send_control_mail(session: Session, rcpt: str, now: dt.datetime, *, per_address_per_day: int,
                          per_hour: int) -> bool:
    """Whether one more confirmation may go to ``rcpt`` (the request address must not mail-bomb)."""
    to_them = session.scalar(select(func.count()).where(
        ControlMail.rcpt == rcpt.lower(), ControlMail.created_at >= now - dt.timedelta(days=1))) or 0
    if to_them >= per_address_per_day:
        return False
    total = session.scalar(select(func.count()).where(ControlMail.created_at >= now - dt.timedelta(hours=1))) or 0
    return total < per_hour


def queue_control_mail(session: Session, *, rcpt: str, mail_from: str, kind: str, raw: bytes, message_id: str,
                       inbound_message_id: int | None, now: dt.datetime) -> ControlMail:
    """Put one message from the request address in the transactional outbox and the ledger.

    Both rows commit with the decision that made them (or neither does); the
    outbox's unique ``inbound_message_id`` means one command gets at most one
    answer, whatever crashes.
    """
    out = OutboxMessage(inbound_message_id=inbound_message_id, mail_from=mail_from, rcpt_to=[rcpt.lower()],
                        message_id=message_id, template=f"csms_{kind}", raw=raw, status=OUTBOX_PENDING,
                        attempts=0, created_at=now)
    session.add(out)
    session.flush()
    mail = ControlMail(rcpt=rcpt.lower(), kind=kind, inbound_message_id=inbound_message_id, outbox_id=out.id,
                       created_at=now)
    session.add(mail)
    session.flush()
    return mail


def create_pending(session: Session, email_address: str, action: str, topics: Sequence[str], language: str,
                   expires_at: dt.datetime, inbound_message_id: int | None) -> PendingConfirmation:
    pending = PendingConfirmation(email=email_address.lower(), action=action, topics=list(topics),
                                  language=language, expires_at=expires_at, inbound_message_id=inbound_message_id)
    session.add(pending)
    session.flush()
    return pending


def confirm_pending(session: Session, pending_id: int, now: dt.datetime) -> PendingConfirmation:
    """Carry out a pending request once; raises :class:`CsmsError` if unknown, used or expired."""
    pending = session.get(PendingConfirmation, pending_id, with_for_update=True)
    if pending is None:
        raise CsmsError("no such confirmation")
    if pending.confirmed_at is not None:
        raise CsmsError("already confirmed")
    if pending.expires_at < now:
        raise CsmsError("confirmation expired")
    pending.confirmed_at = now
    if pending.action == "subscribe":
        subscribe(session, pending.email, pending.topics, pending.language)
    else:
        subscriber = session.scalar(select(Subscriber).where(Subscriber.email == pending.email))
        if subscriber is not None:
            unsubscribe(session, subscriber, pending.topics or None)
    return pending



# --- the subscriber CSV (email,topics,language) -------------------------------------------


@dataclass(frozen=True)
class CsvProblem:
    line: int
    message: str


def parse_subscribers_csv(text: str) -> tuple[list[tuple[int, str, list[str], str]], list[CsvProblem]]:
    """Return ``([(line, email, topics, language)], problems)`` for a subscriber CSV.

    Columns ``email,topics,language`` (a header row naming them; topics
    ``;``-separated; language ``en`` or ``es``, empty = ``en``).  A bad row is
    reported with its line number and left out; the others go on.
    """
    table = read_rows(text, ("email", "topics", "language"))
    if not table.header:
        return [], [CsvProblem(line, message) for line, message in table.errors]
    missing = [c for c in ("email", "topics") if c not in table.header]
    if missing:
        return [], [CsvProblem(1, f"the header row must name the columns email,topics,language "
                                  f"(missing: {', '.join(missing)})")]
    rows: list[tuple[int, str, list[str], str]] = []
    problems: list[CsvProblem] = [CsvProblem(line, message) for line, message in table.errors]
    for line, record in table.records:
        address = (record.get("email") or "").strip()
        topics = [t.strip() for t in (record.get("topics") or "").split(";") if t.strip()]
        language = (record.get("language") or "").strip().lower() or "en"
        if not address and not topics:
            continue  # a blank line
        name, parsed = email.utils.parseaddr(address)
        if not _ADDRESS.match(address) or parsed != address or name:
            problems.append(CsvProblem(line, f"not an e-mail address: {address!r}"))
        elif not topics:
            problems.append(CsvProblem(line, f"{address}: no topics (separate several with ';')"))
        elif language not in ("en", "es"):
            problems.append(CsvProblem(line, f"{address}: language {language!r}: expected en or es"))
        else:
            rows.append((line, address.lower(), topics, language))
    return rows, problems


_ADDRESS = re.compile(r"^[^@\s<>(),;:\"\[\]]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+$")
