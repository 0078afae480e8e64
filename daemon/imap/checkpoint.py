"""The database side of IMAP intake: the mailbox row, its lease, and the UID checkpoint.

One watcher per mailbox, also across instances, is kept by a lease on the
``mailboxes`` row (``take_lease`` is one conditional UPDATE).  The checkpoint
(``uidvalidity`` / ``last_uid``) only advances in the same transaction that
stores the messages below it, and only while the lease is ours.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import or_, select as sql_select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from daemon.intake.store import NewMessage, insert_messages
from models.base import utcnow
from models.core import Mailbox
from models.session import transaction


class LeaseLost(Exception):
    """Another instance holds the mailbox lease: stop touching the mailbox."""


@dataclass
class Checkpoint:
    """Where a mailbox's intake stands: UIDs up to ``last_uid`` are committed."""

    uidvalidity: int | None
    last_uid: int


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
        return bool(result.rowcount == 1)  # type: ignore[attr-defined]  # an UPDATE's CursorResult


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
        if result.rowcount != 1:  # type: ignore[attr-defined]
            raise LeaseLost(f"lease on mailbox {mailbox_id} is no longer held by {owner}")
        return new
