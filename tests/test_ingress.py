"""SMTP/LMTP ingress against a real aiosmtpd listener, driven with smtplib."""

from __future__ import annotations

import smtplib

import pytest
from sqlalchemy import select
from sqlalchemy.orm import undefer

from daemon.config import DeskConfig, IngressConfig
from daemon.intake.ingress import Ingress, IngressHandler
from models.core import NEW, InboundMessage
from models.session import make_engine, make_sessionmaker
from tests.servers import BackgroundComponent, free_port, wait_for_port

MSG = (b"From: Jo Broker <jo@broker.example>\r\nTo: helpdesk@ace-support.example\r\n"
       b"Subject: locked out\r\nMessage-ID: <m1@broker.example>\r\n\r\nMy ACE account is locked.\r\n")


def start_ingress(sessions, protocol="smtp", max_size=100_000):
    cfg = IngressConfig(port=free_port(), protocol=protocol, max_message_size=max_size)
    handler = IngressHandler(DeskConfig(), sessions, source=protocol)
    bg = BackgroundComponent(Ingress(cfg, handler)).start()
    wait_for_port(cfg.port)
    return bg, cfg.port


@pytest.fixture
def ingress(sessions):
    bg, port = start_ingress(sessions)
    yield port
    bg.stop()


def stored(sessions) -> list[InboundMessage]:
    with sessions() as s:
        return list(s.scalars(select(InboundMessage).options(undefer(InboundMessage.raw))
                              .order_by(InboundMessage.id)))


def test_mail_to_a_desk_is_committed_before_250(ingress, sessions):
    with smtplib.SMTP("127.0.0.1", ingress, timeout=10) as smtp:
        refused = smtp.sendmail("jo@broker.example", ["helpdesk@ace-support.example"], MSG)
    assert refused == {}
    rows = stored(sessions)
    assert len(rows) == 1
    # Stored as received, under the one Received line this server prepends (as every MTA does).
    received, _, rest = rows[0].raw.partition(b";\r\n\t")
    assert rows[0].raw.startswith(b"Received: from ") and b"by acedesk" in received and rows[0].state == NEW
    assert rest.split(b"\r\n", 1)[1] == MSG
    assert rows[0].desk == "helpdesk@ace-support.example" and rows[0].envelope_from == "jo@broker.example"
    assert rows[0].message_id == "<m1@broker.example>"


def test_relay_is_refused(ingress, sessions):
    with smtplib.SMTP("127.0.0.1", ingress, timeout=10) as smtp:
        smtp.ehlo()
        smtp.mail("spammer@example.net")
        code, text = smtp.rcpt("victim@example.org")
    assert code == 550 and b"Relaying denied" in text
    assert stored(sessions) == []


def test_oversize_message_gets_552_and_is_not_stored(sessions):
    bg, port = start_ingress(sessions, max_size=2_000)
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
            with pytest.raises(smtplib.SMTPResponseException) as info:
                smtp.sendmail("jo@broker.example", ["helpdesk@ace-support.example"], MSG + b"x" * 5_000 + b"\r\n")
        assert info.value.smtp_code == 552
    finally:
        bg.stop()
    assert stored(sessions) == []


def test_database_down_gives_451_so_the_sender_retries(tmp_path):
    # A PostgreSQL URL on a port where nothing listens: every commit fails.
    dead = make_engine(f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/none")
    bg, port = start_ingress(make_sessionmaker(dead))
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=20) as smtp:
            with pytest.raises(smtplib.SMTPDataError) as info:
                smtp.sendmail("jo@broker.example", ["helpdesk@ace-support.example"], MSG)
        assert info.value.smtp_code == 451
    finally:
        bg.stop()
        dead.dispose()


def test_a_copy_to_two_desks_is_two_messages_and_a_resend_is_one(ingress, sessions):
    rcpts = ["helpdesk@ace-support.example", "AYUDA@ace-support.example"]
    with smtplib.SMTP("127.0.0.1", ingress, timeout=10) as smtp:
        smtp.sendmail("jo@broker.example", rcpts, MSG)
        smtp.sendmail("jo@broker.example", rcpts, MSG)  # the client retried after a lost 250
    assert sorted(r.desk for r in stored(sessions)) == ["ayuda@ace-support.example", "helpdesk@ace-support.example"]


def test_lmtp_answers_once_per_recipient(sessions):
    bg, port = start_ingress(sessions, protocol="lmtp")
    try:
        # smtplib's sendmail reads one reply after DATA; LMTP sends one per recipient (RFC 2033).
        lmtp = smtplib.LMTP("127.0.0.1", port, timeout=10)
        lmtp.ehlo()
        lmtp.mail("jo@broker.example")
        lmtp.rcpt("helpdesk@ace-support.example")
        lmtp.rcpt("ayuda@ace-support.example")
        first = lmtp.data(MSG)
        second = lmtp.getreply()
        lmtp.quit()
        assert first[0] == 250 and second[0] == 250
    finally:
        bg.stop()
    assert len(stored(sessions)) == 2


def test_verp_bounce_addresses_are_accepted_other_local_parts_are_not(ingress, sessions):
    with smtplib.SMTP("127.0.0.1", ingress, timeout=10) as smtp:
        smtp.ehlo()
        smtp.mail("")
        assert smtp.rcpt("csms-bounces+abc123@ace-support.example")[0] == 250
        assert smtp.rcpt("csms-bouncesX@ace-support.example")[0] == 550
        assert smtp.rcpt("helpdesk@ace-support.example.evil.example")[0] == 550
