"""What a subscriber does from a notice's links: see and change their topics,
unsubscribe with one click, confirm a request made by mail.  The web edge
checks the signed token and calls these with the id it names."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from csms import service, subscribers
from models.csms import UNSUBSCRIBED, PendingConfirmation, Subscriber


@dataclass(frozen=True)
class SubscriberState:
    email: str
    language: str
    topics: list[str]
    #: Every topic there is (the preferences page offers each).
    known: list[str]


@dataclass(frozen=True)
class PendingState:
    email: str
    language: str
    action: str
    topics: list[str]


def subscriber_state(session: Session, subscriber_id: int) -> SubscriberState | None:
    subscriber = session.get(Subscriber, subscriber_id)
    if subscriber is None:
        return None
    return SubscriberState(subscriber.email, subscriber.language,
                           subscribers.subscriber_topics(session, subscriber_id), service.topic_names(session))


def set_topics(session: Session, subscriber_id: int, wanted: list[str]) -> SubscriberState | None:
    """Make ``wanted`` the subscriber's topics (only topics that exist: a crafted form creates none)."""
    subscriber = session.get(Subscriber, subscriber_id, with_for_update=True)
    if subscriber is None:
        return None
    topics = [t for t in service.topic_names(session) if t in set(wanted)]
    subscribers.set_topics(session, subscriber, topics)
    return subscriber_state(session, subscriber_id)


def set_preferences(session: Session, subscriber_id: int, wanted: list[str],
                    language: str | None) -> SubscriberState | None:
    """The preferences page's save: ``wanted`` topics and, when given, the notices' language."""
    subscriber = session.get(Subscriber, subscriber_id, with_for_update=True)
    if subscriber is None:
        return None
    if language is not None:
        subscriber.language = language
    return set_topics(session, subscriber_id, wanted)


def one_click(session: Session, subscriber_id: int) -> Subscriber | None:
    """Unsubscribe from everything (RFC 8058); None when there was nothing to do."""
    subscriber = session.get(Subscriber, subscriber_id, with_for_update=True)
    if subscriber is None or subscriber.status == UNSUBSCRIBED:
        return None
    subscribers.unsubscribe(session, subscriber)
    return subscriber


def pending_state(session: Session, pending_id: int) -> PendingState | None:
    pending = session.get(PendingConfirmation, pending_id)
    if pending is None:
        return None
    return PendingState(pending.email, pending.language, pending.action, list(pending.topics))


def confirm(session: Session, pending_id: int, now: dt.datetime) -> tuple[PendingState, list[str]]:
    """Carry out a pending request; return it and the address's topics after it.

    Raises :class:`csms.service.CsmsError` when unknown, used or expired.
    """
    pending = subscribers.confirm_pending(session, pending_id, now)
    subscriber = session.scalar(select(Subscriber).where(Subscriber.email == pending.email))
    topics = subscribers.subscriber_topics(session, subscriber.id) if subscriber else []
    return PendingState(pending.email, pending.language, pending.action, list(pending.topics)), topics
