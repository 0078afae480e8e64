"""CSMS use cases over the database, each inside the caller's transaction:
numbering, notices and their reminders, publishing (number + delivery rows
in one transaction), fan-out bookkeeping (claiming due deliveries, recording
results in batches).  Subscribers live in :mod:`csms.subscribers`.  SQLAlchemy only: no sockets, no SMTP (those live in ``daemon/``).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, case, exists, func, insert, literal, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from csms.render import NoticeView
from models.csms import (
    ACTIVE, CANCELLED, DONE, DRAFT, FAILED, PENDING, PUBLISHING, SCHEDULED, SENT, BounceEvent, CsmsCounter, Delivery, Notice, Subscriber, Subscription,
    Topic,
)

log = logging.getLogger("acedesk.csms")

NUMBER_COUNTER = "notice"


class CsmsError(Exception):
    """A CSMS operation that cannot be done as asked (shown to the user)."""


# --- numbering -----------------------------------------------------------------


def allocate_number(session: Session, start: int) -> int:
    """Return the next notice number: one atomic ``UPDATE ... RETURNING`` on the counter row.

    The row lock (PostgreSQL) or the write lock taken by ``BEGIN IMMEDIATE``
    (SQLite) serialises concurrent publishers; a number handed out in a
    transaction that rolls back was never used by anyone, so it is never
    used twice either.
    """
    stmt = (update(CsmsCounter).where(CsmsCounter.name == NUMBER_COUNTER)
            .values(value=CsmsCounter.value + 1).returning(CsmsCounter.value))
    for _ in range(3):
        value = session.execute(stmt).scalar()
        if value is not None:
            return int(value)
        highest = session.scalar(select(func.max(Notice.number))) or 0
        first = max(start, int(highest) + 1)
        try:
            with session.begin_nested():
                session.execute(insert(CsmsCounter).values(name=NUMBER_COUNTER, value=first))
            return first
        except IntegrityError:
            continue  # another publisher created the row first: increment it
    raise CsmsError("could not allocate a notice number")


# --- topics --------------------------------------------------------------------


def ensure_topics(session: Session, names: Iterable[str]) -> dict[str, int]:
    """Return ``{name: id}`` for ``names``, creating the missing topics."""
    wanted = [n.strip() for n in names if n.strip()]
    if not wanted:
        return {}
    found = {name: tid for tid, name in session.execute(select(Topic.id, Topic.name).where(Topic.name.in_(wanted)))}
    for name in wanted:
        if name not in found:
            try:
                with session.begin_nested():
                    topic = Topic(name=name, description="")
                    session.add(topic)
                    session.flush()
                found[name] = topic.id
            except IntegrityError:
                found[name] = session.scalar(select(Topic.id).where(Topic.name == name))  # type: ignore[assignment]
    return found


def topic_names(session: Session) -> list[str]:
    return list(session.scalars(select(Topic.name).order_by(Topic.name)))


def topic_counts(session: Session) -> list[tuple[str, int]]:
    """Topics with their number of active subscribers."""
    active = (select(Subscription.topic_id, func.count().label("n"))
              .join(Subscriber, Subscriber.id == Subscription.subscriber_id)
              .where(Subscriber.status == ACTIVE).group_by(Subscription.topic_id).subquery())
    rows = session.execute(select(Topic.name, func.coalesce(active.c.n, 0))
                           .outerjoin(active, active.c.topic_id == Topic.id).order_by(Topic.name))
    return [(name, int(n)) for name, n in rows]


# --- notices ---------------------------------------------------------------------


def find_notice(session: Session, ref: str | int) -> Notice:
    """Return the notice with number ``ref`` (also ``#N`` / ``CSMS#N``), else with id ``ref``."""
    text = str(ref).strip().upper().replace("CSMS", "").lstrip("# ")
    try:
        value = int(text)
    except ValueError:
        raise CsmsError(f"not a notice id or number: {ref!r}") from None
    notice = session.scalar(select(Notice).where(Notice.number == value))
    if notice is None and not str(ref).strip().startswith(("#", "CSMS", "csms")):
        notice = session.get(Notice, value)
    if notice is None:
        raise CsmsError(f"no notice {ref}")
    return notice


def create_notice(session: Session, *, title: str, type: str, body: str, topics: Sequence[str],
                  tags: Sequence[str] = (), related: Sequence[int] = (), language: str = "en",
                  author: str = "", translation_of: Notice | None = None, parent: Notice | None = None,
                  scheduled_at: dt.datetime | None = None, event: dict | None = None,
                  hold_for_translation: bool = False) -> Notice:
    """Create a draft notice (scheduled when ``scheduled_at`` is given); topics must exist.

    ``hold_for_translation``: it is not published until a translation of it exists.
    """
    if not title.strip():
        raise CsmsError("a notice needs a title")
    if not topics:
        raise CsmsError("a notice needs at least one topic (Programs Affected)")
    known = set(topic_names(session))
    unknown = [t for t in topics if t not in known]
    if unknown:
        raise CsmsError(f"unknown topic(s): {', '.join(unknown)} (see 'acedesk csms topics')")
    notice = Notice(title=title.strip(), type=type.strip().upper(), body=body, topics=list(topics),
                    tags=list(tags), related=[int(r) for r in related], language=language, author=author,
                    translation_of_id=translation_of.id if translation_of else None,
                    parent_id=parent.id if parent else None, event=event,
                    status=SCHEDULED if scheduled_at else DRAFT, scheduled_at=scheduled_at,
                    late=False, total=0, hold_for_translation=hold_for_translation)
    if translation_of is not None and translation_of.translation_of_id is not None:
        raise CsmsError(f"notice {translation_of.id} is itself a translation: name the original")
    session.add(notice)
    session.flush()
    return notice


def editable_refusal(notice: Notice) -> str:
    """Why ``notice`` can no longer be edited, in words for its author; empty when it can."""
    if notice.status in (DRAFT, SCHEDULED):
        return ""
    if notice.status == CANCELLED:
        return f"notice {notice.id} was cancelled: it can no longer be edited"
    label = f"CSMS #{notice.number}" if notice.number else f"notice {notice.id}"
    return (f"{label} is {notice.status}: a published notice can no longer be edited "
            "(publish an UPDATE notice instead)")


def update_draft(session: Session, notice: Notice, *, title: str | None = None, type: str | None = None,
                 body: str | None = None, topics: Sequence[str] | None = None, tags: Sequence[str] | None = None,
                 language: str | None = None) -> list[str]:
    """Change what is given of a draft or scheduled notice; return the names of the fields changed.

    Refused with :class:`CsmsError` once the notice is publishing, done or cancelled; the row is
    locked first, so a scheduler publishing it meanwhile makes the edit fail rather than be lost.
    """
    session.refresh(notice, with_for_update=True)
    refusal = editable_refusal(notice)
    if refusal:
        raise CsmsError(refusal)
    if title is not None and not title.strip():
        raise CsmsError("a notice needs a title")
    if topics is not None:
        if not topics:
            raise CsmsError("a notice needs at least one topic (Programs Affected)")
        unknown = [t for t in topics if t not in set(topic_names(session))]
        if unknown:
            raise CsmsError(f"unknown topic(s): {', '.join(unknown)} (see 'acedesk csms topics')")
    if language is not None and language != notice.language:
        # A group is one original and its Spanish versions: keep it one.
        if notice.translation_of_id is not None:
            raise CsmsError(f"notice {notice.id} is the Spanish version of another notice: its language stays es")
        if translations(session, notice):
            raise CsmsError(f"notice {notice.id} has a Spanish version: its language stays {notice.language}")
    wanted = {"title": title.strip() if title is not None else None,
              "type": type.strip().upper() if type is not None else None, "body": body,
              "topics": list(topics) if topics is not None else None,
              "tags": list(tags) if tags is not None else None, "language": language}
    changed = []
    for name, value in wanted.items():
        if value is not None and value != getattr(notice, name):
            setattr(notice, name, value)
            changed.append(name)
    return changed


def schedule(session: Session, notice: Notice, at: dt.datetime) -> None:
    if notice.status not in (DRAFT, SCHEDULED):
        raise CsmsError(f"notice {notice.id} is {notice.status}; only drafts and scheduled notices can be scheduled")
    notice.scheduled_at = at
    notice.status = SCHEDULED


def cancel(session: Session, notice: Notice) -> None:
    if notice.status not in (DRAFT, SCHEDULED):
        raise CsmsError(f"notice {notice.id} is {notice.status}; only drafts and scheduled notices can be cancelled")
    notice.status = CANCELLED
    # Reminders derived from it go with it.
    for child in session.scalars(select(Notice).where(Notice.parent_id == notice.id,
                                                       Notice.status.in_((DRAFT, SCHEDULED)))):
        child.status = CANCELLED


def view(session: Session, notice: Notice) -> NoticeView:
    """Return the plain data that rendering needs.

    A notice not published yet carries the date it is scheduled for (a preview of next week's
    reminder shows next week's date); a draft, today's.
    """
    def number_of(notice_id: int | None) -> int | None:
        return session.scalar(select(Notice.number).where(Notice.id == notice_id)) if notice_id else None

    return NoticeView(number=notice.number, title=notice.title, type=notice.type, body=notice.body,
                      topics=list(notice.topics), tags=list(notice.tags), related=list(notice.related),
                      language=notice.language, published_at=notice.published_at or notice.scheduled_at,
                      translation_of=number_of(notice.translation_of_id), parent=number_of(notice.parent_id),
                      author=notice.author)


def due_notices(session: Session, now: dt.datetime) -> list[int]:
    """Ids of scheduled notices whose time has come (oldest first); not those held for a
    translation that does not exist yet."""
    translation = aliased(Notice)
    has_translation = exists().where(translation.translation_of_id == Notice.id, translation.status != CANCELLED)
    return list(session.scalars(select(Notice.id).where(Notice.status == SCHEDULED, Notice.scheduled_at <= now)
                                .where(or_(~Notice.hold_for_translation, has_translation))
                                .order_by(Notice.scheduled_at, Notice.id)))


def waiting_for_translation(session: Session, notice: Notice | None) -> bool:
    """Whether ``notice`` is held (``--with-translation``) and no translation of it exists yet."""
    if notice is None or not notice.hold_for_translation:
        return False
    return not translations(session, notice)


# --- language versions ------------------------------------------------------------------
#
# An original notice and its translations are one group: each subscriber of its topics gets
# exactly one version of it.  Publishing the original takes its unpublished translations along
# (they get their numbers in the same transaction); the delivery rows are the original's, and
# which version a subscriber gets is decided when their turn comes, by their language then.
# A translation published on its own (after the original, or before it) goes only to
# subscribers of its language who got no version yet; an original published after a
# translation, to everyone who got none.


def original_of(session: Session, notice: Notice) -> Notice:
    if notice.translation_of_id is None:
        return notice
    return session.get(Notice, notice.translation_of_id) or notice


def translations(session: Session, notice: Notice) -> list[Notice]:
    """The non-cancelled translations of ``notice`` (an original)."""
    return list(session.scalars(select(Notice).where(Notice.translation_of_id == notice.id,
                                                     Notice.status != CANCELLED).order_by(Notice.id)))


def group_ids(session: Session, notice: Notice) -> list[int]:
    """Ids of every notice in ``notice``'s language group (original first)."""
    original = original_of(session, notice)
    return [original.id, *(t.id for t in translations(session, original))]


def companions(session: Session, notice: Notice) -> list[Notice]:
    """The translations that go out together with ``notice``: an original's unpublished ones."""
    if notice.translation_of_id is not None:
        return []
    return [t for t in translations(session, notice) if t.status in (DRAFT, SCHEDULED)]


def versions(session: Session, notice: Notice) -> list[Notice]:
    """The published versions of ``notice``'s group (those with a number), the notice's own first."""
    group = [session.get(Notice, i) for i in group_ids(session, notice)]
    found = [n for n in group if n is not None and n.number is not None and n.status in (PUBLISHING, DONE)]
    return sorted(found, key=lambda n: n.id != notice.id)


def _audience_filter(session: Session, notice: Notice):  # type: ignore[no-untyped-def]
    """Who ``notice`` goes to: active subscribers of its topics who got no version of it yet (a
    translation: only those of its language)."""
    topic_ids = select(Topic.id).where(Topic.name.in_(list(notice.topics)))
    group = group_ids(session, notice)
    conditions = [
        Subscriber.status == ACTIVE,
        exists().where(Subscription.subscriber_id == Subscriber.id, Subscription.topic_id.in_(topic_ids)),
        ~exists().where(Delivery.notice_id.in_(group), Delivery.subscriber_id == Subscriber.id),
    ]
    if notice.translation_of_id is not None:
        conditions.append(Subscriber.language == notice.language)
    return conditions


def audience_count(session: Session, notice: Notice) -> int:
    """How many subscribers publishing ``notice`` now would write a delivery for."""
    return int(session.scalar(select(func.count()).select_from(Subscriber)
                              .where(*_audience_filter(session, notice))) or 0)


def next_number(session: Session, start: int) -> int:
    """The number the next publication would take (a preview: another publisher may take it first)."""
    value = session.scalar(select(CsmsCounter.value).where(CsmsCounter.name == NUMBER_COUNTER))
    if value is not None:
        return int(value) + 1
    return max(start, int(session.scalar(select(func.max(Notice.number))) or 0) + 1)


@dataclass(frozen=True)
class PublishPlan:
    """What publishing a notice would do, for a person to confirm before it happens."""

    notice_id: int
    #: (notice id, language, number it takes, title) of each version going out, the notice's first.
    versions: list[tuple[int, str, int, str]]
    topics: list[str]
    #: Recipients per language version, as the subscribers' languages are now.
    recipients: dict[str, int]
    #: Held for a translation that does not exist yet (``--with-translation``).
    waiting_for_translation: bool

    @property
    def total(self) -> int:
        return sum(self.recipients.values())


def publish_plan(session: Session, notice: Notice, *, number_start: int) -> PublishPlan:
    """Return what :func:`start_publish` would do now: numbers, topics, recipients per language."""
    if notice.status not in (DRAFT, SCHEDULED):
        raise CsmsError(f"notice {notice.id} is {notice.status}; only drafts and scheduled notices are published")
    going = [notice, *companions(session, notice)]
    number = next_number(session, number_start)
    listed: list[tuple[int, str, int, str]] = []
    for version in going:
        if version.number is not None:
            listed.append((version.id, version.language, version.number, version.title))
        else:
            listed.append((version.id, version.language, number, version.title))
            number += 1
    languages = {v.language for v in going} | {v.language for v in versions(session, notice)}
    chosen = case(*[(Subscriber.language == lang, lang) for lang in sorted(languages)],
                  else_=notice.language) if languages else literal(notice.language)
    recipients = {lang: 0 for lang in sorted(languages)}
    for lang, n in session.execute(select(chosen, func.count()).select_from(Subscriber)
                                   .where(*_audience_filter(session, notice)).group_by(chosen)):
        recipients[str(lang)] = int(n)
    return PublishPlan(notice.id, listed, list(notice.topics), recipients,
                       waiting_for_translation(session, notice))


def start_publish(session: Session, notice: Notice, now: dt.datetime, *, number_start: int,
                  late_after: float = 300.0) -> int:
    """Allocate the number and write one delivery row per subscriber, in the caller's transaction.

    Returns the number of deliveries.  Idempotent: a notice already
    publishing or done is left alone (returns its total).  The original's
    unpublished translations are published with it (numbers, no rows of
    their own: each subscriber's version is chosen at fan-out).

    Raises:
        CsmsError: cancelled; held for a translation that does not exist; or nobody would
            receive it (then no number is used: the caller's transaction rolls back).
    """
    session.refresh(notice, with_for_update=True)
    if notice.status in (PUBLISHING, DONE):
        return notice.total
    if notice.status == CANCELLED:
        raise CsmsError(f"notice {notice.id} was cancelled")
    if waiting_for_translation(session, notice):
        raise CsmsError(f"notice {notice.id} is held until its translation exists (created with "
                        f"--with-translation; create one with --translation-of {notice.id})")
    going = [notice, *companions(session, notice)]
    audience = (
        select(literal(notice.id), Subscriber.id, literal(PENDING), literal(0))
        .where(*_audience_filter(session, notice))
    )
    session.execute(insert(Delivery).from_select(["notice_id", "subscriber_id", "status", "attempts"], audience))
    notice.total = session.scalar(select(func.count()).where(Delivery.notice_id == notice.id)) or 0
    if notice.total == 0:
        raise CsmsError(f"nobody would receive notice {notice.id}: no active subscriber of "
                        f"{', '.join(notice.topics)}"
                        + (f" in language {notice.language!r}" if notice.translation_of_id else "")
                        + " (no number was used)")
    for version in going:
        if version.number is None:
            version.number = allocate_number(session, number_start)
        version.published_at = now
        if version.scheduled_at and (now - version.scheduled_at).total_seconds() > late_after:
            version.late = True
        version.status = PUBLISHING
    log.info("CSMS #%s (notice %s) publishing to %d subscribers%s%s", notice.number, notice.id, notice.total,
             " (late)" if notice.late else "",
             "".join(f", with its {v.language} version CSMS #{v.number}" for v in going[1:]))
    return notice.total


def counts(session: Session, notice_id: int) -> dict[str, int]:
    """``{"sent": n, "failed": n, "pending": n}`` for one notice."""
    result = {SENT: 0, FAILED: 0, PENDING: 0}
    for status, n in session.execute(select(Delivery.status, func.count()).where(Delivery.notice_id == notice_id)
                                     .group_by(Delivery.status)):
        result[status] = int(n)
    return result


def finish_if_done(session: Session, notice_id: int, now: dt.datetime) -> bool:
    """Mark the notice ``done`` when no delivery is pending; return whether it is done.

    The translations that went out with it (no rows of their own) are done with it.
    """
    pending = session.scalar(select(exists().where(Delivery.notice_id == notice_id, Delivery.status == PENDING)))
    if pending:
        return False
    notice = session.get(Notice, notice_id)
    if notice is not None and notice.status == PUBLISHING:
        notice.status = DONE
        notice.finished_at = now
        notice.lease_owner = None
        notice.lease_until = None
        c = counts(session, notice_id)
        log.info("CSMS #%s done: %d sent, %d failed", notice.number, c[SENT], c[FAILED])
        for companion in session.scalars(select(Notice).where(Notice.translation_of_id == notice_id,
                                                              Notice.status == PUBLISHING, Notice.total == 0)):
            companion.status = DONE
            companion.finished_at = now
    return True


def counts_by_language(session: Session, notice_id: int) -> dict[str, int]:
    """Sent deliveries of a notice per language version."""
    return {str(lang): int(n) for lang, n in session.execute(
        select(Delivery.language, func.count()).where(Delivery.notice_id == notice_id, Delivery.status == SENT,
                                                     Delivery.language.is_not(None)).group_by(Delivery.language))}


def take_lease(session: Session, notice_id: int, owner: str, now: dt.datetime, seconds: float) -> bool:
    """Take or renew the publishing lease on a notice; False if another live instance holds it."""
    result = session.execute(
        update(Notice).where(Notice.id == notice_id, Notice.status == PUBLISHING)
        .where(or_(Notice.lease_owner.is_(None), Notice.lease_owner == owner, Notice.lease_until < now))
        .values(lease_owner=owner, lease_until=now + dt.timedelta(seconds=seconds)))
    return bool(result.rowcount)


def release_lease(session: Session, notice_id: int, owner: str) -> None:
    session.execute(update(Notice).where(Notice.id == notice_id, Notice.lease_owner == owner)
                    .values(lease_owner=None, lease_until=None))


def publishing_notices(session: Session) -> list[int]:
    """Notices being sent; not the translations that went out with their original (it sends them)."""
    companion = Notice.translation_of_id.is_not(None) & (Notice.total == 0)
    return list(session.scalars(select(Notice.id).where(Notice.status == PUBLISHING, ~companion)
                                .order_by(Notice.id)))


@dataclass(frozen=True)
class DueDelivery:
    id: int
    subscriber_id: int
    email: str
    attempts: int
    first_attempt_at: dt.datetime | None
    #: The notice's topics this subscriber is still subscribed to ("ACE, ACH Refunds"); empty
    #: when they left all of them after publishing started.
    topics: str
    #: False when the subscriber unsubscribed or was disabled (bounces) after publishing started.
    active: bool = True
    #: The subscriber's language now: which version of the notice they get.
    language: str = "en"

    @property
    def still_wanted(self) -> bool:
        """Whether the subscriber still wants this notice: active and on one of its topics."""
        return self.active and bool(self.topics)


def _due_rows(session: Session, notice: Notice, after_id: int, limit: int, now: dt.datetime) -> list:
    """The rows behind :func:`fetch_due`: one query, one row per (due delivery, matching topic)."""
    due = (select(Delivery.id, Delivery.subscriber_id, Delivery.attempts, Delivery.first_attempt_at)
           .where(Delivery.notice_id == notice.id, Delivery.status == PENDING, Delivery.id > after_id)
           .where(or_(Delivery.next_attempt_at.is_(None), Delivery.next_attempt_at <= now))
           .order_by(Delivery.id).limit(limit).subquery())
    return _detail_rows(session, notice, due)


def _detail_rows(session: Session, notice: Notice, due) -> list:  # type: ignore[no-untyped-def]
    """Each delivery of the subquery ``due`` with its subscriber and matched topics, in id order."""
    # The subscriber's topics among the notice's, joined in the same query: no second round trip
    # with a thousand ids in an IN list.
    topic_ids = select(Topic.id).where(Topic.name.in_(list(notice.topics))).scalar_subquery()
    return list(session.execute(
        select(due.c.id, due.c.subscriber_id, Subscriber.email, due.c.attempts, due.c.first_attempt_at,
               Subscriber.status, Topic.name, Subscriber.language)
        .join(Subscriber, Subscriber.id == due.c.subscriber_id)
        .outerjoin(Subscription, (Subscription.subscriber_id == due.c.subscriber_id)
                   & Subscription.topic_id.in_(topic_ids))
        .outerjoin(Topic, Topic.id == Subscription.topic_id)
        .order_by(due.c.id)).all())


def _due_deliveries(notice: Notice, rows: Sequence, only: set[int] | None = None) -> list[DueDelivery]:
    """Turn :func:`_due_rows` into deliveries (those in ``only``, when given), the matched topics
    in the notice's order."""
    order = {name: i for i, name in enumerate(notice.topics)}
    # A thousand deliveries share a handful of topic lists: each is sorted and joined once.
    joined: dict[tuple[str, ...], str] = {}
    out: list[DueDelivery] = []

    def add(first: Any, names: tuple[str, ...]) -> None:
        topics = joined.get(names)
        if topics is None:
            topics = joined[names] = ", ".join(sorted(names, key=lambda n: order.get(n, 0)))
        out.append(DueDelivery(first[0], first[1], first[2], first[3], first[4], topics,
                               first[5] == ACTIVE, first[7] or "en"))

    first: Any = None
    names: list[str] = []
    for row in rows:
        if only is not None and row[0] not in only:
            continue
        if first is None or row[0] != first[0]:
            if first is not None:
                add(first, tuple(names))
            first, names = row, []
        if row[6] is not None:
            names.append(row[6])
    if first is not None:
        add(first, tuple(names))
    return out


def fetch_due(session: Session, notice: Notice, after_id: int, limit: int, now: dt.datetime) -> list[DueDelivery]:
    """The next ``limit`` pending, due deliveries after ``after_id`` (keyset order), with matched topics.

    Subscribers who left or were disabled since publishing started come back too, marked, so that
    the fan-out settles their deliveries (``skipped``) instead of leaving them pending.
    """
    return _due_deliveries(notice, _due_rows(session, notice, after_id, limit, now))


def _claimable(notice_id: int, now: dt.datetime):  # type: ignore[no-untyped-def]
    """Pending, due, and claimed by nobody (or by a claim whose lease ran out)."""
    return (Delivery.notice_id == notice_id, Delivery.status == PENDING,
            or_(Delivery.next_attempt_at.is_(None), Delivery.next_attempt_at <= now),
            or_(Delivery.claim_owner.is_(None), Delivery.claim_until < now))


def claim_due(session: Session, notice: Notice, owner: str, now: dt.datetime, lease_seconds: float,
              limit: int) -> list[DueDelivery]:
    """Claim the next ``limit`` claimable deliveries of ``notice`` for ``owner`` until ``now`` +
    ``lease_seconds``, in the caller's transaction; return them with their subscribers.

    One ``UPDATE ... WHERE id IN (SELECT ... LIMIT n) RETURNING``: on SQLite the caller's
    ``BEGIN IMMEDIATE`` makes the claim exclusive; on PostgreSQL ``FOR UPDATE SKIP LOCKED``
    lets several senders and instances claim side by side, never the same row.
    """
    pick = select(Delivery.id).where(*_claimable(notice.id, now)).order_by(Delivery.id).limit(limit)
    if session.get_bind().dialect.name == "postgresql":
        pick = pick.with_for_update(skip_locked=True)
    claimed = list(session.scalars(
        update(Delivery).where(Delivery.id.in_(pick.scalar_subquery()))
        .values(claim_owner=owner, claim_until=now + dt.timedelta(seconds=lease_seconds))
        .returning(Delivery.id).execution_options(synchronize_session=False)))
    if not claimed:
        return []
    # By the claimed range, not a thousand ids in an IN list: our own older claims in it are left
    # out below, and nobody else's rows are ours.
    due = (select(Delivery.id, Delivery.subscriber_id, Delivery.attempts, Delivery.first_attempt_at)
           .where(Delivery.notice_id == notice.id, Delivery.status == PENDING,
                  Delivery.id.between(min(claimed), max(claimed)), Delivery.claim_owner == owner).subquery())
    return _due_deliveries(notice, _detail_rows(session, notice, due), set(claimed))


def claimable_count(session: Session, notice_id: int, now: dt.datetime) -> int:
    """How many deliveries of a notice a sender could claim now."""
    return int(session.scalar(select(func.count()).select_from(Delivery).where(*_claimable(notice_id, now))) or 0)


def renew_claims(session: Session, notice_id: int, owner: str, now: dt.datetime, lease_seconds: float,
                 ids: tuple[int, int] | None = None) -> None:
    """Extend the lease of what ``owner`` still holds of a notice (only between ``ids``, first and
    last, when given: the index then reads that range instead of every pending delivery)."""
    stmt = update(Delivery).where(Delivery.notice_id == notice_id, Delivery.status == PENDING,
                                  Delivery.claim_owner == owner)
    if ids is not None:
        stmt = stmt.where(Delivery.id.between(ids[0], ids[1]))
    session.execute(stmt.values(claim_until=now + dt.timedelta(seconds=lease_seconds))
                    .execution_options(synchronize_session=False))


def claim_owners(session: Session, notice_id: int) -> list[str]:
    """The owners holding claims on a notice's pending deliveries."""
    return [str(o) for o in session.scalars(
        select(Delivery.claim_owner).where(Delivery.notice_id == notice_id, Delivery.status == PENDING,
                                           Delivery.claim_owner.is_not(None)).distinct())]


def release_claims(session: Session, notice_id: int, owners: Sequence[str]) -> int:
    """Give ``owners``' pending deliveries of a notice back to whoever claims next; return how many."""
    if not owners:
        return 0
    result = session.execute(update(Delivery).where(Delivery.notice_id == notice_id, Delivery.status == PENDING,
                                                    Delivery.claim_owner.in_(list(owners)))
                             .values(claim_owner=None, claim_until=None)
                             .execution_options(synchronize_session=False))
    return int(result.rowcount)  # type: ignore[attr-defined]  # an UPDATE's CursorResult


def next_retry_at(session: Session, notice_id: int) -> dt.datetime | None:
    return session.scalar(select(func.min(Delivery.next_attempt_at))
                          .where(Delivery.notice_id == notice_id, Delivery.status == PENDING))


@dataclass(frozen=True)
class Outcome:
    """What happened to one delivery attempt."""

    delivery_id: int
    subscriber_id: int
    #: ``sent``, ``temporary``, ``permanent`` (a 5xx: also a hard bounce) or ``skipped`` (not sent:
    #: the subscriber left before their turn).
    result: str
    detail: str = ""
    #: For temporary failures: when to try again; None = give up (permanent).
    retry_at: dt.datetime | None = None
    #: The language version sent.
    language: str | None = None


def record_outcomes(session: Session, outcomes: Sequence[Outcome], now: dt.datetime, *,
                    notice_number: int | None = None) -> None:
    """Write a batch of results: sent rows in one statement, failures row by row."""
    sent: dict[str | None, list[int]] = {}
    for o in outcomes:
        if o.result == "sent":
            sent.setdefault(o.language, []).append(o.delivery_id)
    for language, ids in sent.items():
        # Only while pending: a takeover may record an acceptance its sender committed already.
        session.execute(update(Delivery).where(Delivery.id.in_(ids), Delivery.status == PENDING)
                        .values(status=SENT, sent_at=now, attempts=Delivery.attempts + 1, language=language,
                                first_attempt_at=func.coalesce(Delivery.first_attempt_at, now),
                                claim_owner=None, claim_until=None)
                        .execution_options(synchronize_session=False))
    temps = [o for o in outcomes if o.result == "temporary" and o.retry_at is not None]
    if temps:
        session.connection().execute(
            update(Delivery.__table__).where(Delivery.__table__.c.id == bindparam("b_id"))
            .values(attempts=Delivery.__table__.c.attempts + 1, next_attempt_at=bindparam("b_next"),
                    last_error=bindparam("b_err"), claim_owner=None, claim_until=None,
                    first_attempt_at=func.coalesce(Delivery.__table__.c.first_attempt_at, now)),
            [{"b_id": o.delivery_id, "b_next": o.retry_at, "b_err": o.detail[:2000]} for o in temps])
    perms = [o for o in outcomes
             if o.result in ("permanent", "skipped") or (o.result == "temporary" and o.retry_at is None)]
    if perms:
        session.connection().execute(
            update(Delivery.__table__).where(Delivery.__table__.c.id == bindparam("b_id"))
            .values(status=FAILED, attempts=Delivery.__table__.c.attempts + 1, last_error=bindparam("b_err"),
                    claim_owner=None, claim_until=None,
                    first_attempt_at=func.coalesce(Delivery.__table__.c.first_attempt_at, now)),
            [{"b_id": o.delivery_id, "b_err": o.detail[:2000]} for o in perms])
        for o in perms:
            if o.result == "permanent":
                session.add(BounceEvent(subscriber_id=o.subscriber_id, notice_number=notice_number, kind="hard",
                                        source="smtp", action="failed", status_code=o.detail[:3],
                                        diagnostic=o.detail[:1000]))
