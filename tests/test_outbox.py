"""The outbox sender against a real capturing SMTP server (aiosmtpd): replies
arrive once; 4xx and a relay that is down are retried until it is back; 5xx
is a permanent failure recorded on the ticket; a crash between commit and
send (or after claiming) loses nothing and sends once; no relay = spool."""

from __future__ import annotations

import datetime as dt
import time

from aiosmtpd.controller import Controller
from sqlalchemy import select, update

from daemon.config import PipelineConfig
from daemon.delivery.outbox import BATCH, drain_outbox, run_once
from daemon.worker import drain
from models.base import utcnow
from models.outbox import FAILED, PENDING, SENDING, SENT, OutboxMessage
from models.responders import Ticket, TriageItem
from models.session import transaction
from tests.servers import SmtpCapture, free_port
from tests.test_responders import import_users, ingest, mail, make_ctx, stages

FAST = {"retry_min": 0.05, "retry_max": 0.2, "timeout": 5.0}


def setup(sessions, engine, config_factory, port: int, **outbound):
    config = config_factory(engine.url.render_as_string(hide_password=False),
                            outbound={"relay_host": "127.0.0.1", "relay_port": port, **FAST, **outbound})
    ctx = make_ctx(config, engine)
    import_users(sessions)
    ingest(sessions, mail(msgid="<m1@broker.example>"))
    drain(sessions, stages(ctx), PipelineConfig())
    return config


def statuses(sessions) -> list[str]:
    with sessions() as s:
        return [o.status for o in s.scalars(select(OutboxMessage).order_by(OutboxMessage.id))]


def test_reply_is_delivered_once_and_the_clock_stops(sessions, engine, config_factory, smtp_capture):
    config = setup(sessions, engine, config_factory, smtp_capture.port)
    assert drain_outbox(sessions, config) == 1
    assert drain_outbox(sessions, config) == 0
    got = smtp_capture.handler.wait_for(1)
    assert len(got) == 1 and got[0].rcpt_tos == ["alice@broker.example"]
    assert got[0].message["In-Reply-To"] == "<m1@broker.example>"
    assert statuses(sessions) == [SENT]
    with sessions() as s:
        ticket = s.scalars(select(Ticket)).one()
        assert ticket.first_response_at is not None and ticket.resolved_at is not None


def test_4xx_is_retried_with_backoff_then_arrives(sessions, engine, config_factory, smtp_capture):
    config = setup(sessions, engine, config_factory, smtp_capture.port)
    smtp_capture.handler.data_errors.extend(["451 4.3.0 try again later", "421 4.3.2 busy"])
    run_once(sessions, config)
    with sessions() as s:
        row = s.scalars(select(OutboxMessage)).one()
        assert row.status == PENDING and row.attempts == 1 and "451" in row.last_error
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and statuses(sessions) != [SENT]:
        run_once(sessions, config)
        time.sleep(0.05)
    assert statuses(sessions) == [SENT]
    assert len(smtp_capture.handler.wait_for(1)) == 1


def test_relay_down_then_up_loses_nothing(sessions, engine, config_factory):
    port = free_port()
    config = setup(sessions, engine, config_factory, port)
    run_once(sessions, config)  # nothing listens: connection refused
    with sessions() as s:
        row = s.scalars(select(OutboxMessage)).one()
        assert row.status == PENDING and row.attempts == 1 and "refused" in row.last_error.lower()
    capture = SmtpCapture()
    capture.port = port
    capture.controller = Controller(capture.handler, hostname="127.0.0.1", port=port)
    capture.start()
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and statuses(sessions) != [SENT]:
            run_once(sessions, config)
            time.sleep(0.05)
        assert len(capture.handler.wait_for(1)) == 1
    finally:
        capture.stop()


def test_5xx_is_permanent_and_recorded_on_the_ticket(sessions, engine, config_factory, smtp_capture):
    smtp_capture.handler.rcpt_errors["alice@broker.example"] = "550 5.1.1 no such user"
    config = setup(sessions, engine, config_factory, smtp_capture.port)
    run_once(sessions, config)
    assert statuses(sessions) == [FAILED]
    with sessions() as s:
        ticket = s.scalars(select(Ticket)).one()
        assert "550" in ticket.last_error
        assert s.scalars(select(TriageItem).where(TriageItem.reason == "delivery_failed")).one()
    assert drain_outbox(sessions, config) == 0
    assert smtp_capture.messages == []


def test_crash_after_claim_is_retried_after_the_lease_and_sent_once(sessions, engine, config_factory, smtp_capture):
    config = setup(sessions, engine, config_factory, smtp_capture.port)
    # A sender claimed the row and died before sending: the lease runs out, another one sends it.
    with transaction(sessions) as s:
        s.execute(update(OutboxMessage).values(status=SENDING, lease_until=utcnow() + dt.timedelta(seconds=60)))
    assert drain_outbox(sessions, config) == 0
    with transaction(sessions) as s:
        s.execute(update(OutboxMessage).values(lease_until=utcnow() - dt.timedelta(seconds=1)))
    assert drain_outbox(sessions, config) == 1
    assert len(smtp_capture.handler.wait_for(1)) == 1 and statuses(sessions) == [SENT]


def test_no_relay_writes_the_spool_atomically(sessions, engine, config_factory, tmp_path):
    config = config_factory(engine.url.render_as_string(hide_password=False))
    ctx = make_ctx(config, engine)
    import_users(sessions)
    ingest(sessions, mail())
    drain(sessions, stages(ctx), PipelineConfig())
    assert drain_outbox(sessions, config) == 1
    files = list((tmp_path / "spool" / "new").iterdir())
    assert len(files) == 1, files   # no temporary file left beside it
    spooled = files[0].read_bytes()
    assert b"Auto-Submitted: auto-replied" in spooled
    # Readable: the text is quoted-printable, not base64.
    assert b"Content-Transfer-Encoding: quoted-printable" in spooled and b"base64" not in spooled
    assert statuses(sessions) == [SENT]


def test_a_stop_gives_back_the_batch_claimed_ahead(sessions, engine, config_factory, smtp_capture, tmp_path):
    # More than a batch is due: the next batch is claimed while the first is sent.  A stop after the
    # first batch must hand those rows back at once (not leave them "sending" until the lease runs
    # out), and the next run sends each row exactly once.
    config = config_factory(engine.url.render_as_string(hide_password=False),
                            outbound={"relay_host": "127.0.0.1", "relay_port": smtp_capture.port, **FAST})
    total = BATCH + 40
    with transaction(sessions) as s:
        s.add_all(OutboxMessage(mail_from="helpdesk@ace-support.example", rcpt_to=[f"u{i}@broker.example"],
                                message_id=f"<{i}@ace-support.example>",
                                raw=f"Subject: reply {i}\r\n\r\nbody {i}\r\n".encode()) for i in range(total))
    assert run_once(sessions, config) == BATCH
    assert sorted(statuses(sessions)) == [PENDING] * 40 + [SENT] * BATCH
    assert not list((tmp_path / "var" / "outbox-journal").glob("*"))   # nothing left to take over
    assert drain_outbox(sessions, config) == 40
    got = smtp_capture.handler.wait_for(total)
    assert sorted(m.rcpt_tos[0] for m in got) == sorted(f"u{i}@broker.example" for i in range(total))
    assert statuses(sessions) == [SENT] * total
