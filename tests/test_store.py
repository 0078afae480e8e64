"""Intake writes rows through the driver for speed: what the ORM reads back,
filters and orders must be exactly what it would have written itself."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select

from daemon.intake.store import NewMessage, insert_messages
from models.base import utcnow
from models.core import NEW, InboundMessage
from models.session import transaction


def raw(n: int) -> bytes:
    return (f"From: jo@broker.example\r\nTo: helpdesk@ace-support.example\r\nSubject: entry {n}\r\n"
            f"Message-ID: <{n}@broker.example>\r\n\r\nMy entry {n} is on hold.\r\n").encode()


def test_intake_rows_read_back_through_the_orm_and_duplicates_count_zero(sessions):
    before = utcnow()
    items = [NewMessage(desk="HelpDesk@ace-support.example", source="smtp", raw=raw(n),
                        envelope_from="jo@broker.example", envelope_to=("helpdesk@ace-support.example",))
             for n in range(3)]
    with transaction(sessions) as session:
        assert insert_messages(session, items) == 3
    with transaction(sessions) as session:
        # The same bytes to the same desk again, and one new: only the new one counts.
        assert insert_messages(session, items[:2] + [NewMessage(desk="helpdesk@ace-support.example",
                                                                source="smtp", raw=raw(9))]) == 1
    after = utcnow()
    with sessions() as session:
        rows = list(session.scalars(select(InboundMessage).order_by(InboundMessage.id)))
        # Timestamps compare and filter as the ORM's own would (SQLite keeps them as text).
        recent = session.scalars(select(InboundMessage.id).where(
            InboundMessage.received_at >= before - dt.timedelta(seconds=1),
            InboundMessage.received_at <= after)).all()
        assert rows[0].raw == raw(0)
    assert len(rows) == 4 and len(recent) == 4
    first = rows[0]
    assert first.desk == "helpdesk@ace-support.example" and first.state == NEW and first.attempts == 0
    assert first.envelope_to == ["helpdesk@ace-support.example"] and first.envelope_from == "jo@broker.example"
    assert first.message_id == "<0@broker.example>" and first.size == len(raw(0)) and len(first.sha256) == 64
    assert first.received_at.tzinfo is not None and before - dt.timedelta(seconds=1) <= first.received_at <= after
    assert rows[3].envelope_to == [] and rows[3].message_id == "<9@broker.example>"


def test_the_same_message_twice_in_one_batch_is_stored_once(sessions):
    # One fetch can hold a message twice (a copy re-delivered with LF line endings): one row.
    desk = "helpdesk@ace-support.example"
    items = [NewMessage(desk, "imap", raw(1)), NewMessage(desk, "imap", raw(1).replace(b"\r\n", b"\n")),
             NewMessage(desk, "imap", raw(2))]
    with transaction(sessions) as session:
        assert insert_messages(session, items) == 2
    with sessions() as session:
        assert sorted(session.scalars(select(InboundMessage.message_id))) == ["<1@broker.example>",
                                                                             "<2@broker.example>"]
