"""The fixtures' servers are real and reachable."""

from sqlalchemy import select

from daemon.intake.store import NewMessage, insert_messages
from models.core import InboundMessage
from models.session import transaction


def test_dovecot_accepts_append_and_lists_it(dovecot):
    user = dovecot.new_user()
    client = dovecot.client(user)
    client.append("INBOX", b"From: a@example.com\r\nSubject: hi\r\n\r\nbody\r\n")
    client.select_folder("INBOX")
    assert len(client.search("ALL")) == 1
    client.logout()


def test_store_dedupes_per_desk(sessions):
    raw = b"Message-ID: <x@example.com>\r\nFrom: a@example.com\r\n\r\nhello\r\n"
    with transaction(sessions) as s:
        assert insert_messages(s, [NewMessage("helpdesk@ace-support.example", "cli", raw)]) == 1
    with transaction(sessions) as s:
        insert_messages(s, [NewMessage("helpdesk@ace-support.example", "cli", raw),
                            NewMessage("ayuda@ace-support.example", "cli", raw)])
    with sessions() as s:
        rows = s.scalars(select(InboundMessage).order_by(InboundMessage.desk)).all()
    assert [(r.desk, r.message_id) for r in rows] == [
        ("ayuda@ace-support.example", "<x@example.com>"),
        ("helpdesk@ace-support.example", "<x@example.com>"),
    ]
