"""Subscribers as an operator sees them: who they are, what they get, in
which language, in what state, and what happened to them -- listed, shown
one by one with their history, removed, or exported as CSV.

States: ``pending`` (asked by mail, not confirmed yet: no subscriber row),
``active``, ``bouncing`` (active, with hard bounces in the window but fewer
than the threshold), ``disabled`` (too many hard bounces), ``unsubscribed``.
The history is read from what the database already keeps: the confirmations,
bounces, complaints and deliveries.  Functions of the caller's session,
shared by the command line and the web console.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from dataclasses import dataclass, field

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from csms.service import CsmsError, versions
from models.csms import (
    ACTIVE,
    DISABLED,
    SENT,
    UNSUBSCRIBED,
    BounceEvent,
    Delivery,
    Notice,
    PendingConfirmation,
    Subscriber,
    Subscription,
    Topic,
)

PENDING_STATE = "pending"
BOUNCING = "bouncing"
STATES = (PENDING_STATE, ACTIVE, BOUNCING, DISABLED, UNSUBSCRIBED)


@dataclass(frozen=True)
class Entry:
    """One row of the roster."""

    email: str
    state: str
    language: str
    topics: list[str]
    id: int | None = None
    created_at: dt.datetime | None = None
    hard_bounces: int = 0


@dataclass(frozen=True)
class Event:
    at: dt.datetime
    what: str


@dataclass(frozen=True)
class Detail:
    entry: Entry
    history: list[Event] = field(default_factory=list)
    notices_sent: int = 0


def _topics_by_subscriber(session: Session, ids: list[int]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    if ids:
        for sid, name in session.execute(select(Subscription.subscriber_id, Topic.name)
                                         .join(Topic, Topic.id == Subscription.topic_id)
                                         .where(Subscription.subscriber_id.in_(ids)).order_by(Topic.name)):
            out.setdefault(sid, []).append(name)
    return out


def _hard_bounces(session: Session, ids: list[int], since: dt.datetime) -> dict[int, int]:
    if not ids:
        return {}
    return {sid: int(n) for sid, n in session.execute(
        select(BounceEvent.subscriber_id, func.count()).where(BounceEvent.subscriber_id.in_(ids),
                                                              BounceEvent.kind == "hard",
                                                              BounceEvent.received_at >= since)
        .group_by(BounceEvent.subscriber_id))}


def _state(status: str, hard: int) -> str:
    return BOUNCING if status == ACTIVE and hard > 0 else status


def entries(session: Session, *, now: dt.datetime, window_days: int, state: str | None = None,
            topic: str | None = None, search: str = "", limit: int | None = None) -> list[Entry]:
    """The roster, by address; ``state``/``topic``/``search`` (part of the address) narrow it."""
    if state is not None and state not in STATES:
        raise CsmsError(f"unknown state {state!r}: one of {', '.join(STATES)}")
    out: list[Entry] = []
    if state in (None, PENDING_STATE):
        out += _pending(session, now, topic, search)
    if state != PENDING_STATE:
        query = select(Subscriber).order_by(Subscriber.email)
        if search:
            query = query.where(Subscriber.email.contains(search.lower()))
        if state in (DISABLED, UNSUBSCRIBED):
            query = query.where(Subscriber.status == state)
        elif state in (ACTIVE, BOUNCING):
            query = query.where(Subscriber.status == ACTIVE)
        if topic:
            query = query.where(Subscriber.id.in_(select(Subscription.subscriber_id).join(
                Topic, Topic.id == Subscription.topic_id).where(func.lower(Topic.name) == topic.lower())))
        rows = list(session.scalars(query))
        ids = [r.id for r in rows]
        topics = _topics_by_subscriber(session, ids)
        hard = _hard_bounces(session, ids, now - dt.timedelta(days=window_days))
        for r in rows:
            entry = Entry(r.email, _state(r.status, hard.get(r.id, 0)), r.language, topics.get(r.id, []), r.id,
                          r.created_at, hard.get(r.id, 0))
            if state in (None, entry.state) or state == DISABLED or state == UNSUBSCRIBED:
                out.append(entry)
    out.sort(key=lambda e: e.email)
    return out[:limit] if limit else out


def _pending(session: Session, now: dt.datetime, topic: str | None, search: str) -> list[Entry]:
    """Addresses with an unconfirmed, unexpired subscribe request and no subscriber row."""
    query = (select(PendingConfirmation).where(PendingConfirmation.action == "subscribe",
                                               PendingConfirmation.confirmed_at.is_(None),
                                               PendingConfirmation.expires_at > now)
             .where(~PendingConfirmation.email.in_(select(Subscriber.email)))
             .order_by(PendingConfirmation.email, PendingConfirmation.id.desc()))
    if search:
        query = query.where(PendingConfirmation.email.contains(search.lower()))
    seen: dict[str, Entry] = {}
    for p in session.scalars(query):
        if p.email in seen or (topic and topic.lower() not in [t.lower() for t in p.topics]):
            continue
        seen[p.email] = Entry(p.email, PENDING_STATE, p.language, list(p.topics), None, p.created_at)
    return list(seen.values())


def find(session: Session, address: str) -> Subscriber:
    """The subscriber with ``address`` (case-insensitive).

    Raises:
        CsmsError: no such subscriber.
    """
    subscriber = session.scalar(select(Subscriber).where(Subscriber.email == address.strip().lower()))
    if subscriber is None:
        raise CsmsError(f"no subscriber {address.strip()!r} (see 'acedesk csms subscribers list')")
    return subscriber


def detail(session: Session, address: str, *, now: dt.datetime, window_days: int) -> Detail:
    """One subscriber with their history, oldest first."""
    subscriber = find(session, address)
    hard = _hard_bounces(session, [subscriber.id], now - dt.timedelta(days=window_days)).get(subscriber.id, 0)
    entry = Entry(subscriber.email, _state(subscriber.status, hard), subscriber.language,
                  _topics_by_subscriber(session, [subscriber.id]).get(subscriber.id, []), subscriber.id,
                  subscriber.created_at, hard)
    history = [Event(subscriber.created_at, "added")]
    for p in session.scalars(select(PendingConfirmation).where(PendingConfirmation.email == subscriber.email)
                             .order_by(PendingConfirmation.id)):
        what = f"asked by mail to {p.action} {', '.join(p.topics) or 'all topics'} ({p.language})"
        history.append(Event(p.created_at, what))
        if p.confirmed_at:
            history.append(Event(p.confirmed_at, f"confirmed: {p.action}"))
    for b in session.scalars(select(BounceEvent).where(BounceEvent.subscriber_id == subscriber.id)
                             .order_by(BounceEvent.id)):
        if b.kind == "complaint":
            history.append(Event(b.received_at, f"complaint ({b.action or 'abuse'}) from {b.diagnostic or 'a feedback loop'}"))
        else:
            number = f" to CSMS #{b.notice_number}" if b.notice_number else ""
            history.append(Event(b.received_at, f"{b.kind} bounce{number}: {b.status_code} {b.diagnostic[:80]}".strip()))
    sent = session.scalar(select(func.count()).where(Delivery.subscriber_id == subscriber.id,
                                                     Delivery.status == SENT)) or 0
    last = session.execute(select(Delivery.sent_at, Notice, Delivery.language).join(Notice, Notice.id == Delivery.notice_id)
                           .where(Delivery.subscriber_id == subscriber.id, Delivery.status == SENT)
                           .order_by(Delivery.sent_at.desc()).limit(1)).first()
    if last is not None and last[0] is not None:
        # The version they got: the notice's own, or its translation in their language.
        sent_version = next((v for v in versions(session, last[1]) if v.language == last[2]), last[1])
        history.append(Event(last[0], f"last notice sent: CSMS #{sent_version.number} ({sent_version.language})"))
    if subscriber.status != ACTIVE:
        history.append(Event(subscriber.updated_at, subscriber.status))
    history.sort(key=lambda e: e.at)
    return Detail(entry, history, int(sent))


def remove(session: Session, address: str) -> int:
    """Delete a subscriber, their subscriptions, deliveries and bounce records, and their pending
    requests (an operator's erasure); return the subscriber's id."""
    subscriber = find(session, address)
    sid = subscriber.id
    for table in (Subscription, Delivery, BounceEvent):
        session.execute(delete(table).where(table.subscriber_id == sid))
    session.execute(delete(PendingConfirmation).where(PendingConfirmation.email == subscriber.email))
    session.delete(subscriber)
    session.flush()
    return sid


EXPORT_COLUMNS = ("email", "topics", "language", "state", "created_at", "hard_bounces")


def export_csv(rows: list[Entry]) -> str:
    """The roster as CSV: ``email,topics,language`` first (re-importable), then state and dates."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(EXPORT_COLUMNS)
    for e in rows:
        writer.writerow([e.email, ";".join(e.topics), e.language, e.state,
                         e.created_at.isoformat() if e.created_at else "", e.hard_bounces])
    return out.getvalue()


__all__ = ["STATES", "Entry", "Detail", "Event", "entries", "detail", "remove", "export_csv", "find"]
