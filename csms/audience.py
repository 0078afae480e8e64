"""Who a notice would reach: the publisher's confirmation before publishing
(the same rule as :func:`csms.service.start_publish`), and subscriber search
for the console."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from models.csms import ACTIVE, Notice, Subscriber, Subscription, Topic


@dataclass(frozen=True)
class Audience:
    total: int
    #: Active subscribers per topic (one subscriber may count under several).
    per_topic: dict[str, int]
    language: str
    #: An English notice with a Spanish version leaves Spanish subscribers to that version.
    spanish_version: bool


def audience(session: Session, notice: Notice) -> Audience:
    """How many active subscribers publishing ``notice`` now would send it to: the rule of
    :func:`csms.service.start_publish` (one version per subscriber of the language group)."""
    from csms import service

    total = service.audience_count(session, notice)
    has_es = any(t.language == "es" for t in service.translations(session, service.original_of(session, notice)))
    per_topic = {name: int(n) for name, n in session.execute(
        select(Topic.name, func.count()).join(Subscription, Subscription.topic_id == Topic.id)
        .join(Subscriber, Subscriber.id == Subscription.subscriber_id)
        .where(Topic.name.in_(list(notice.topics)), Subscriber.status == ACTIVE).group_by(Topic.name)).all()}
    return Audience(total, {t: per_topic.get(t, 0) for t in notice.topics}, notice.language, has_es)


@dataclass(frozen=True)
class SubscriberRow:
    id: int
    email: str
    language: str
    status: str
    topics: list[str]


def find_subscribers(session: Session, text: str, limit: int = 50, offset: int = 0) -> list[SubscriberRow]:
    """Subscribers whose address contains ``text`` (all when empty), alphabetical."""
    query = select(Subscriber).order_by(Subscriber.email).limit(limit).offset(offset)
    if text.strip():
        query = query.where(Subscriber.email.contains(text.strip().lower(), autoescape=True))
    rows = list(session.scalars(query))
    topics: dict[int, list[str]] = {r.id: [] for r in rows}
    if rows:
        for sid, name in session.execute(select(Subscription.subscriber_id, Topic.name)
                                         .join(Topic, Topic.id == Subscription.topic_id)
                                         .where(Subscription.subscriber_id.in_(list(topics))).order_by(Topic.name)):
            topics[sid].append(name)
    return [SubscriberRow(r.id, r.email, r.language, r.status, topics[r.id]) for r in rows]


def known_types(session: Session, defaults: Sequence[str]) -> list[str]:
    """Notice types offered in the composer: the usual ones and any used before."""
    used = [t for t in session.scalars(select(Notice.type).distinct()) if t]
    return sorted(set(defaults) | set(used))
