"""CSMS as subscribers, operators and mail servers see it, against real
servers: the seed notice rendered from its fields; subscribe by mail ->
confirm -> receive a notice -> one-click unsubscribe over HTTP -> nothing
more; forged and expired tokens refused; DSNs to the VERP address disabling
a subscriber after the threshold (delayed ones never); a notice due while
the daemon was down going out once, late; concurrent numbering; the
confirmation rate limit; and the ``acedesk csms`` commands end to end."""

from __future__ import annotations

import datetime as dt
import http.client
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from email import message_from_bytes, policy
from pathlib import Path
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.orm import undefer

from csms import service, subscribers
from csms.render import NoticeView, render_for
from csms.tokens import CONFIRM, UNSUBSCRIBE
from daemon.notices import scheduler as csms_runner
from daemon.intake import ingress
from daemon.app import PipelineWorker
from daemon.cli.main import main
from daemon.config import PipelineConfig
from daemon.context import AppContext, make_context
from daemon.notices.fanout import load_signer
from daemon.notices.scheduler import Scheduler
from daemon.web.server import WebServer
from daemon.delivery.outbox import OutboxSender
from daemon.stages.csms import make_stage as make_csms_stage
from daemon.stages.parse import make_stage as make_parse_stage
from daemon.intake.store import NewMessage, insert_messages
from daemon.worker import drain
from models.base import utcnow
from models.core import DONE, AuditEntry, InboundMessage
from models.csms import (
    ACTIVE,
    DISABLED,
    UNSUBSCRIBED,
    BounceEvent,
    Notice,
    Subscriber,
)
from models.migrate import upgrade
from models.outbox import OutboxMessage
from models.session import make_engine, make_sessionmaker, transaction
from tests.conftest import DATA
from tests.servers import Together, BackgroundComponent, free_port, wait_for_port

REQUEST = "csms-request@ace-support.example"
SEED_TITLE = "Support Call Today for Electronic Refund and Add Notify Party Features in the ACE Portal"
ET = ZoneInfo("America/New_York")
REPO = Path(__file__).parents[1]



def csms_config(config_factory, db_url: str, smtp_port: int | None = None, **csms):
    port = free_port()
    sections = {"csms": {"base_url": f"http://127.0.0.1:{port}", "scheduler_interval": 0.2, **csms},
                "web": {"listen": f"127.0.0.1:{port}"}}
    if smtp_port:
        sections["outbound"] = {"relay_host": "127.0.0.1", "relay_port": smtp_port, "retry_min": 0.2}
    return config_factory(db_url, **sections)


def context(config) -> AppContext:
    """A migrated database with no topics yet: the daemon and the CLI create the configured ones."""
    ctx = make_context(config)
    upgrade(ctx.engine)
    return ctx


def request_mail(subject: str, sender: str = "jo@broker.example", body: str = "", extra: str = "",
                 msgid: str | None = None) -> bytes:
    msgid = msgid or f"<{abs(hash((subject, sender, body, extra, time.monotonic())))}@broker.example>"
    return (f"From: Jo Broker <{sender}>\r\nTo: {REQUEST}\r\nSubject: {subject}\r\nMessage-ID: {msgid}\r\n"
            f"Date: Wed, 11 Feb 2026 09:00:00 -0500\r\n{extra}\r\n{body}\r\n").encode()


def dsn(recipient: str, action: str, status: str, diagnostic: str) -> bytes:
    return (
        "From: Mail Delivery System <MAILER-DAEMON@mx.example.org>\r\n"
        "To: csms-bounces@ace-support.example\r\nSubject: Undelivered Mail Returned to Sender\r\n"
        f"Message-ID: <{abs(hash((recipient, action, status, time.monotonic())))}@mx.example.org>\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
        "--B\r\nContent-Type: text/plain\r\n\r\nThis is the mail system at host mx.example.org.\r\n\r\n"
        "--B\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.example.org\r\n\r\n"
        f"Final-Recipient: rfc822; {recipient}\r\nAction: {action}\r\nStatus: {status}\r\n"
        f"Diagnostic-Code: smtp; {diagnostic}\r\n\r\n"
        "--B\r\nContent-Type: text/rfc822-headers\r\n\r\nSubject: CSMS# 1 - x\r\n\r\n--B--\r\n").encode()


def ingest(ctx: AppContext, raw: bytes, desk: str = REQUEST, envelope_from: str | None = None) -> None:
    """Store ``raw`` as delivered to ``desk`` (a DSN has the null sender ``<>``: pass ``""``)."""
    with transaction(ctx.sessions) as session:
        insert_messages(session, [NewMessage(desk=desk, source="cli", raw=raw, envelope_from=envelope_from)])


def run_stages(ctx: AppContext) -> None:
    drain(ctx.sessions, [make_parse_stage(ctx), make_csms_stage(ctx)], PipelineConfig())


def wait_until(predicate, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def web(method: str, url: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, str]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def one_click(url: str) -> tuple[int, str]:
    return web("POST", url, b"List-Unsubscribe=One-Click",
                {"Content-Type": "application/x-www-form-urlencoded"})


def subscriber(ctx: AppContext, email_address: str) -> Subscriber | None:
    with ctx.sessions() as session:
        return session.scalar(select(Subscriber).where(Subscriber.email == email_address))


def topics_of(ctx: AppContext, email_address: str) -> list[str]:
    with ctx.sessions() as session:
        sub = session.scalar(select(Subscriber).where(Subscriber.email == email_address))
        return subscribers.subscriber_topics(session, sub.id) if sub else []


def add_notice(ctx: AppContext, title: str, topics: list[str], at: dt.datetime | None = None, **kw) -> int:
    with transaction(ctx.sessions) as session:
        return service.create_notice(session, title=title, type="INFORMATION", body=f"About {title}.",
                                     topics=topics, scheduled_at=at, **kw).id


def notice(ctx: AppContext, notice_id: int) -> Notice:
    with ctx.sessions() as session:
        return session.get(Notice, notice_id)


# --- rendering ----------------------------------------------------------------------------


def _normalised(text: str) -> str:
    # The seed is text scraped from the notice's web page, where the number and the
    # date, the tags and the topics run together; layout and emphasis aside, every
    # character must be the same.
    return re.sub(r"[\s*|]", "", text)


def test_seed_notice_rendered_from_its_fields_matches_it():
    seed = (DATA / "csms" / "seed_67721788.txt").read_text(encoding="utf-8")
    body = (DATA / "csms" / "seed_67721788.md").read_text(encoding="utf-8")
    view = NoticeView(number=67721788, title=SEED_TITLE, type="REMINDER", body=body, topics=["ACE", "ACE Portal"],
                      tags=["Deadline", "High Urgency", "Action Required"],
                      published_at=dt.datetime(2026, 2, 11, 8, 0, tzinfo=ET))
    rendered = render_for(view, "jo@broker.example", "ACE Portal", "https://x.example/u/t", "https://x.example/m")
    assert rendered.subject == f"CSMS# 67721788 - {SEED_TITLE}"
    text, footer = rendered.text.split("\n--\n")
    assert _normalised(text) == _normalised(seed)
    assert text.startswith("CSMS #67721788\nWednesday, February 11, 2026\nDeadline | High Urgency | Action Required\n")
    assert "You are subscribed to ACE Portal." in footer and "https://x.example/u/t" in footer
    # Links are kept in both parts; the HTML is sanitised and has the same header block.
    for url in re.findall(r"\[ (https://\S+) \]", seed):
        assert f"[ {url} ]" in rendered.text
        assert f'href="{url.replace("&", "&amp;")}"' in rendered.html
    assert "<strong>ACE User Readiness Support Call</strong>" in rendered.html
    assert "Wednesday, February 11, 2026" in rendered.html and "CSMS #67721788" in rendered.html


# --- subscribe -> confirm -> receive -> one-click unsubscribe ------------------------------


def test_subscribe_confirm_receive_unsubscribe_by_one_click_then_nothing_more(db_url, smtp_capture, config_factory):
    config = csms_config(config_factory, db_url, smtp_capture.port)
    ctx = context(config)
    daemon = Together(PipelineWorker(ctx, [make_parse_stage(ctx), make_csms_stage(ctx)]),
                      OutboxSender(ctx, poll_interval=0.1), *csms_runner.make_components(ctx), WebServer(ctx, load_signer(config)),
                      *ingress.make_components(ctx))
    runner = BackgroundComponent(daemon).start()
    import smtplib
    try:
        wait_for_port(config.ingress.port)
        wait_for_port(config.web.host_port()[1])
        with smtplib.SMTP("127.0.0.1", config.ingress.port, timeout=10) as smtp:
            smtp.sendmail("jo@broker.example", [REQUEST], request_mail("subscribe ACH Refunds; ace portal; Nonsense"))
        request = smtp_capture.handler.wait_for(1)[0]
        m = request.message
        assert request.rcpt_tos == ["jo@broker.example"] and m["Auto-Submitted"] == "auto-replied"
        assert subscriber(ctx, "jo@broker.example") is None  # double opt-in: nothing yet
        text = m.get_content()
        assert "ACH Refunds" in text and "ACE Portal" in text and "Nonsense" in text  # the unknown one is named
        token = re.search(r"confirm (\S+)$", m["Subject"]).group(1)
        # Replying to the confirmation request (the token in the subject) subscribes.
        with smtplib.SMTP("127.0.0.1", config.ingress.port, timeout=10) as smtp:
            smtp.sendmail("jo@broker.example", [REQUEST],
                          request_mail(f"Re: {m['Subject']}", extra=f"In-Reply-To: {m['Message-ID']}\r\n"))
        result = smtp_capture.handler.wait_for(2)[1].message
        assert "ACE Portal" in result.get_content() and result["To"] == "jo@broker.example"
        assert topics_of(ctx, "jo@broker.example") == ["ACE Portal", "ACH Refunds"]
        assert token  # the same token cannot be used twice:
        with smtplib.SMTP("127.0.0.1", config.ingress.port, timeout=10) as smtp:
            smtp.sendmail("jo@broker.example", [REQUEST], request_mail(f"confirm {token}"))

        first = add_notice(ctx, "ACH refunds are electronic", ["ACH Refunds"], at=utcnow())
        got = smtp_capture.handler.wait_for(3)
        notice_mail = got[2]
        m = notice_mail.message
        number = notice(ctx, first).number
        assert m["Subject"] == f"CSMS# {number} - ACH refunds are electronic"
        assert notice_mail.rcpt_tos == ["jo@broker.example"]
        assert notice_mail.mail_from.startswith("csms-bounces+") and m["List-Unsubscribe-Post"] == \
            "List-Unsubscribe=One-Click"
        url = re.search(r"<(http://[^>]+)>", m["List-Unsubscribe"]).group(1)
        assert url.startswith(config.csms.base_url + "/u/")
        assert "You are subscribed to ACH Refunds." in m.get_body(("plain",)).get_content()

        # A GET (a link scanner) shows a page and changes nothing.
        status, page = web("GET", url)
        assert status == 200 and "<form method=\"post\"" in page and "List-Unsubscribe" in page
        assert subscriber(ctx, "jo@broker.example").status == ACTIVE
        status, page = one_click(url)
        assert status == 200 and "jo@broker.example will receive no more CSMS notices" in page
        assert subscriber(ctx, "jo@broker.example").status == UNSUBSCRIBED
        assert one_click(url)[0] == 200  # again: still fine, nothing to do

        # Nobody left to receive the next one: it is not published (no number used), back to draft.
        second = add_notice(ctx, "Another ACH notice", ["ACH Refunds", "ACE Portal"], at=utcnow())
        wait_until(lambda: notice(ctx, second).status == "draft", what="the second notice to be refused")
        assert len(smtp_capture.messages) == 3 and notice(ctx, second).number is None
    finally:
        runner.stop()
        ctx.dispose()
    assert runner.error is None
    with ctx.sessions() as session:
        states = list(session.scalars(select(InboundMessage.state)))
        actions = list(session.scalars(select(AuditEntry.action).order_by(AuditEntry.id)))
    assert states == [DONE, DONE, DONE]
    assert actions == ["csms.confirmation_sent", "csms.confirmed", "csms.confirm_refused"]
    archive = Path(config.daemon.state_dir) / config.csms.archive_dir
    assert f"CSMS #{number}" in (archive / "index.html").read_text()


# --- the HTTP endpoint refuses what it must -----------------------------------------------


def test_forged_expired_and_wrong_tokens_are_refused_and_change_nothing(db_url, config_factory):
    config = csms_config(config_factory, db_url)
    ctx = context(config)
    with transaction(ctx.sessions) as session:
        sid = subscribers.subscribe(session, "ana@carrier.example", ["ACE"], "en").id
    signer = load_signer(config)
    base = config.csms.base_url
    good = signer.make(UNSUBSCRIBE, sid, 3600)
    payload, mac = good.split(".")
    forged = f"{payload}.{'A' if mac[0] != 'A' else 'B'}{mac[1:]}"
    other = signer.make(UNSUBSCRIBE, sid + 1, 3600).split(".")[0] + "." + mac  # someone else's payload, our MAC
    expired = signer.make(UNSUBSCRIBE, sid, 3600, now=time.time() - 7200)
    confirmation = signer.make(CONFIRM, sid, 3600)
    server = BackgroundComponent(WebServer(ctx, signer)).start()
    try:
        wait_for_port(config.web.host_port()[1])
        for token, why in ((forged, "altered"), (other, "altered"), (expired, "expired"),
                           (confirmation, "meant for something else")):
            status, text = one_click(f"{base}/u/{token}")
            assert status == 400 and why in text and "Nothing was changed" in text and "<script" not in text
            assert web("GET", f"{base}/u/{token}")[0] == 400
        assert web("POST", f"{base}/u/{good}", b"", {"Content-Type": "application/x-www-form-urlencoded"})[0] == 400
        assert web("POST", f"{base}/u/{good}", b"List-Unsubscribe=Yes")[0] == 400
        # The preferences page (the footer's "Manage your preferences" link): topics as checkboxes.
        status, page = web("GET", f"{base}/u/{good}?manage=1")
        assert status == 200 and 'value="ACE" checked' in page and 'value="Manifest">' in page
        csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
        status, page = web("POST", f"{base}/u/{good}?manage=1",
                           f"action=update&topic=Manifest&topic=ACE&topic=Bogus&csrf={csrf}".encode(),
                           {"Content-Type": "application/x-www-form-urlencoded"})
        assert status == 200 and topics_of(ctx, "ana@carrier.example") == ["ACE", "Manifest"]
        assert web("GET", f"{base}/nothing-here")[0] == 404
        assert web("DELETE", f"{base}/u/{good}")[0] == 405
        assert web("POST", f"{base}/u/{good}", b"", {"Content-Length": "20000"})[0] == 413
        assert web("GET", f"{base}/u/{good}", headers={"X-Big": "y" * 9000})[0] == 431
        assert subscriber(ctx, "ana@carrier.example").status == ACTIVE
        # RFC 8058 prefers multipart/form-data; that works too.
        body = (b'--XX\r\nContent-Disposition: form-data; name="List-Unsubscribe"\r\n\r\nOne-Click\r\n--XX--\r\n')
        status, _ = web("POST", f"{base}/u/{good}", body, {"Content-Type": "multipart/form-data; boundary=XX"})
        assert status == 200
    finally:
        server.stop()
        ctx.dispose()
    assert server.error is None
    assert subscriber(ctx, "ana@carrier.example").status == UNSUBSCRIBED


# --- bounces ----------------------------------------------------------------------------------


def test_hard_bounces_to_the_verp_address_disable_after_the_threshold_delayed_never(db_url, config_factory, caplog):
    config = csms_config(config_factory, db_url, bounce_threshold=3)
    ctx = context(config)
    with transaction(ctx.sessions) as session:
        ana = subscribers.subscribe(session, "ana@carrier.example", ["ACE"], "en").id
        bob = subscribers.subscribe(session, "bob@carrier.example", ["ACE"], "en").id
    signer = load_signer(config)

    def bounce(raw: bytes, address: str) -> None:
        ingest(ctx, raw, address, envelope_from="")

    def verp(sid: int, number: int = 67800001) -> str:
        return signer.verp_local("csms-bounces", sid, number) + "@ace-support.example"

    # Delayed and 4xx reports: recorded, never counted.
    for _ in range(4):
        bounce(dsn("ana@carrier.example", "delayed", "4.4.7", "451 try again later"), verp(ana))
    bounce(dsn("ana@carrier.example", "failed", "4.2.2", "452 mailbox full"), verp(ana))
    # A report naming bob in its body, sent to ana's VERP address: it is about ana.
    bounce(dsn("bob@carrier.example", "failed", "5.1.1", "550 no such user"), verp(ana))
    # A forged VERP address (bad signature) naming bob: not attributed to anyone.
    forged = verp(bob).split("@")[0][:-12] + "000000000000@ace-support.example"
    for _ in range(3):
        bounce(dsn("bob@carrier.example", "failed", "5.1.1", "550 no such user"), forged)
    run_stages(ctx)
    assert subscriber(ctx, "ana@carrier.example").status == ACTIVE
    assert subscriber(ctx, "bob@carrier.example").status == ACTIVE
    bounce(dsn("ana@carrier.example", "failed", "5.1.1", "550 5.1.1 user unknown"), verp(ana, 67800002))
    run_stages(ctx)
    assert subscriber(ctx, "ana@carrier.example").status == ACTIVE  # two hard bounces
    with caplog.at_level(logging.WARNING, logger="acedesk.csms"):
        bounce(dsn("ana@carrier.example", "failed", "5.2.1", "550 5.2.1 mailbox disabled"), verp(ana, 67800003))
        run_stages(ctx)
    assert subscriber(ctx, "ana@carrier.example").status == DISABLED
    assert subscriber(ctx, "bob@carrier.example").status == ACTIVE
    assert any("disabled" in r.getMessage() and "ana@carrier.example" in r.getMessage() for r in caplog.records)
    with ctx.sessions() as session:
        kinds = sorted(session.scalars(select(BounceEvent.kind).where(BounceEvent.subscriber_id == ana)))
        assert kinds == ["hard"] * 3 + ["soft"] * 5
        assert session.scalar(select(func.count()).select_from(BounceEvent)
                              .where(BounceEvent.subscriber_id == bob)) == 0
        assert set(session.scalars(select(InboundMessage.state))) == {DONE}
        assert session.scalar(select(func.count()).select_from(AuditEntry)
                              .where(AuditEntry.action == "csms.bounce_unattributed")) == 3
        assert session.scalar(select(func.count()).select_from(OutboxMessage)) == 0  # bounces are never answered
    # A disabled address gets no more notices.
    with transaction(ctx.sessions) as session:
        n = session.get(Notice, add_notice(ctx, "After the bounces", ["ACE"]))
        assert service.start_publish(session, n, utcnow(), number_start=1) == 1  # bob only
    ctx.dispose()


# --- requests to the request address: screening and the rate limit -------------------------


def test_confirmations_are_rate_limited_and_automatic_mail_never_answered(db_url, config_factory):
    config = csms_config(config_factory, db_url, confirmations_per_address_per_day=3, confirmations_per_hour=5)
    ctx = context(config)
    for i in range(5):
        ingest(ctx, request_mail("subscribe ACE", body=f"attempt {i}"))
    run_stages(ctx)
    with ctx.sessions() as session:
        to_jo = [r.rcpt_to for r in session.scalars(select(OutboxMessage))]
    assert to_jo == [["jo@broker.example"]] * 3
    # The hourly cap covers everyone together: two more addresses, one gets through.
    ingest(ctx, request_mail("suscribir ACE", sender="carla@importadora.example"))
    ingest(ctx, request_mail("subscribe ACE", sender="dan@carrier.example"))
    ingest(ctx, request_mail("subscribe ACE", sender="eve@carrier.example"))
    # Automatic mail and our own are never answered; Reply-To is never where an answer goes.
    ingest(ctx, request_mail("subscribe ACE", sender="ooo@broker.example", extra="Auto-Submitted: auto-replied\r\n"))
    ingest(ctx, request_mail("subscribe ACE", sender="list@broker.example", extra="List-Id: <x.broker.example>\r\n"))
    ingest(ctx, request_mail("subscribe ACE", sender="csms@ace-support.example"))
    run_stages(ctx)
    with ctx.sessions() as session:
        rows = list(session.scalars(select(OutboxMessage).order_by(OutboxMessage.id).options(undefer(OutboxMessage.raw))))
        actions = list(session.scalars(select(AuditEntry.action).order_by(AuditEntry.id)))
        states = set(session.scalars(select(InboundMessage.state)))
    assert [r.rcpt_to[0] for r in rows] == ["jo@broker.example"] * 3 + ["carla@importadora.example", "dan@carrier.example"]
    spanish = message_from_bytes(rows[3].raw, policy=policy.default)
    assert spanish["Subject"].startswith("CSMS: confirmar ") and "Recibimos una solicitud" in spanish.get_content()
    assert actions.count("csms.rate_limited") == 3 and actions.count("csms.ignored_automatic") == 3
    assert states == {DONE}
    assert subscriber(ctx, "jo@broker.example") is None  # nobody is subscribed by asking alone
    ctx.dispose()


def test_someone_else_cannot_subscribe_or_unsubscribe_you(db_url, config_factory):
    config = csms_config(config_factory, db_url)
    ctx = context(config)
    with transaction(ctx.sessions) as session:
        subscribers.subscribe(session, "ana@carrier.example", ["ACE"], "en")
    # A forged From: the confirmation goes to the real owner of the address, who ignores it.
    ingest(ctx, request_mail("unsubscribe", sender="ana@carrier.example", extra="Reply-To: mallory@evil.example\r\n"))
    ingest(ctx, request_mail("confirm AAAAAAAAAA.BBBBBBBBBBBBBBBBBBBBBB", sender="mallory@evil.example"))
    run_stages(ctx)
    with ctx.sessions() as session:
        rcpts = [r.rcpt_to for r in session.scalars(select(OutboxMessage).order_by(OutboxMessage.id))]
    assert rcpts[0] == ["ana@carrier.example"] and ["mallory@evil.example"] not in rcpts
    assert subscriber(ctx, "ana@carrier.example").status == ACTIVE
    ctx.dispose()


def test_spanish_unsubscribe_confirmed_by_link_mailto_one_click_and_replies_to_notices(db_url, config_factory):
    config = csms_config(config_factory, db_url)
    ctx = context(config)
    with transaction(ctx.sessions) as session:
        subscribers.subscribe(session, "carla@importadora.example", ["ACE", "ACH Refunds"], "es")
        dan = subscribers.subscribe(session, "dan@carrier.example", ["ACE"], "en").id
    signer = load_signer(config)
    dan_token = signer.make(UNSUBSCRIBE, dan, 3600)
    ingest(ctx, request_mail("baja: ACH Refunds", sender="carla@importadora.example"))
    # A reply to a notice quotes its footer (and unsubscribe link): that is a question, not a command.
    ingest(ctx, request_mail("Re: CSMS# 67800001 - ACH", sender="dan@carrier.example",
                             body=f"Does this apply to sureties?\n\n> Unsubscribe: {config.csms.base_url}/u/{dan_token}"))
    run_stages(ctx)
    with ctx.sessions() as session:
        rows = list(session.scalars(select(OutboxMessage).order_by(OutboxMessage.id).options(undefer(OutboxMessage.raw))))
    to_carla = message_from_bytes(rows[0].raw, policy=policy.default)
    assert rows[0].rcpt_to == ["carla@importadora.example"] and "cancelar la suscripción" in to_carla.get_content()
    assert rows[1].rcpt_to == ["dan@carrier.example"] and "subscribe ACE; ACE Portal" in \
        message_from_bytes(rows[1].raw, policy=policy.default).get_content()
    assert topics_of(ctx, "carla@importadora.example") == ["ACE", "ACH Refunds"]
    assert subscriber(ctx, "dan@carrier.example").status == ACTIVE
    link = re.search(r"(http://\S+/c/\S+)", to_carla.get_content()).group(1)
    server = BackgroundComponent(WebServer(ctx, signer)).start()
    try:
        wait_for_port(config.web.host_port()[1])
        status, page = web("GET", link)  # a scanner following the link confirms nothing
        assert status == 200 and "Confirmar" in page and topics_of(ctx, "carla@importadora.example") == ["ACE", "ACH Refunds"]
        status, page = web("POST", link, b"confirm=1", {"Content-Type": "application/x-www-form-urlencoded"})
        assert status == 200 and topics_of(ctx, "carla@importadora.example") == ["ACE"]
        status, page = web("POST", link, b"confirm=1", {"Content-Type": "application/x-www-form-urlencoded"})
        assert status == 400 and "ya se usó" in page  # in her language
    finally:
        server.stop()
    assert server.error is None
    # The mailto: of List-Unsubscribe carries the recipient's own token: honoured at once, unanswered.
    ingest(ctx, request_mail(f"unsubscribe {dan_token}", sender="dan@carrier.example"))
    run_stages(ctx)
    assert subscriber(ctx, "dan@carrier.example").status == UNSUBSCRIBED
    with ctx.sessions() as session:
        assert session.scalar(select(func.count()).select_from(OutboxMessage)) == 2
    ctx.dispose()


def test_acedesk_run_sends_what_fell_due_while_down_late_and_drains_on_sigterm(db_url, smtp_capture, tmp_path):
    cfg = tmp_path / "config.toml"
    cfg.write_text(f"""
[database]
url = "{db_url}"
[daemon]
state_dir = "{tmp_path}/var"
shutdown_timeout = 5.0
[ingress]
port = {free_port()}
[outbound]
relay_host = "127.0.0.1"
relay_port = {smtp_capture.port}
[web]
listen = "127.0.0.1:{free_port()}"
[csms]
scheduler_interval = 0.5
secret_file = "csms.secret"
""")
    (tmp_path / "csms.secret").write_text("a-test-secret-of-enough-length\n")
    from daemon.config import load_config
    config = load_config(cfg, env={})
    ctx = context(config)
    with transaction(ctx.sessions) as session:
        for i in range(3):
            subscribers.subscribe(session, f"user{i}@broker.example", ["Manifest"], "en")
    due = add_notice(ctx, "Due while the daemon was down", ["Manifest"], at=utcnow() - dt.timedelta(hours=3))
    env = {**os.environ, "ACEDESK_CONFIG": str(cfg)}
    proc = subprocess.Popen([sys.executable, "-m", "daemon.cli.main", "run"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        smtp_capture.handler.wait_for(3, timeout=30)
        wait_until(lambda: notice(ctx, due).status == "done", what="the notice to be done")
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=20)[0]
    assert proc.returncode == 0, output
    assert "Traceback" not in output and re.search(r"was due .* ET and goes out 3 h \d+ min late", output), output
    assert sorted(c.rcpt_tos[0] for c in smtp_capture.messages) == [f"user{i}@broker.example" for i in range(3)]
    assert notice(ctx, due).late
    ctx.dispose()


# --- scheduling -------------------------------------------------------------------------------


def test_a_notice_due_while_the_daemon_was_down_goes_out_on_start_late_and_once(db_url, smtp_capture,
                                                                                  config_factory):
    config = csms_config(config_factory, db_url, smtp_capture.port)
    ctx = context(config)
    with transaction(ctx.sessions) as session:
        for i in range(6):
            subscribers.subscribe(session, f"user{i}@broker.example", ["Cargo Release"], "en")
    due = add_notice(ctx, "Due an hour ago", ["Cargo Release"], at=utcnow() - dt.timedelta(hours=1))
    future = add_notice(ctx, "Due tomorrow", ["Cargo Release"], at=utcnow() + dt.timedelta(days=1))
    # Two daemons start against the same database: the notice still goes out once.
    other = make_context(config)
    other.instance = "second-instance"
    both = [BackgroundComponent(Scheduler(c)).start() for c in (ctx, other)]
    try:
        wait_until(lambda: notice(ctx, due).status == "done", what="the late notice to go out")
        time.sleep(0.5)
    finally:
        for b in both:
            b.stop()
    again = BackgroundComponent(Scheduler(ctx)).start()  # a restart sends nothing twice
    time.sleep(0.6)
    again.stop()
    got = list(smtp_capture.messages)
    assert sorted(c.rcpt_tos[0] for c in got) == sorted(f"user{i}@broker.example" for i in range(6))
    n = notice(ctx, due)
    assert n.late and n.published_at - n.scheduled_at >= dt.timedelta(minutes=59)
    assert notice(ctx, future).status == "scheduled"
    assert all(b.error is None for b in both)
    other.dispose()
    ctx.dispose()


def test_concurrent_publishers_get_distinct_monotonic_numbers(db_url):
    engine = make_engine(db_url, pool_size=8)
    upgrade(engine)
    sessions = make_sessionmaker(engine)
    results: dict[int, list[int]] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def allocate(worker: int) -> None:
        try:
            barrier.wait()
            mine = results.setdefault(worker, [])
            for _ in range(15):
                with transaction(sessions) as session:
                    mine.append(service.allocate_number(session, 67800001))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=allocate, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    engine.dispose()
    assert not errors
    everything = [n for nums in results.values() for n in nums]
    assert len(everything) == 60 and len(set(everything)) == 60
    assert sorted(everything) == list(range(67800001, 67800061))  # none lost, none reused
    assert all(nums == sorted(nums) for nums in results.values())  # monotonic for each publisher


# --- the command line ---------------------------------------------------------------------


def test_csms_commands_end_to_end(db_url, smtp_capture, tmp_path, capsys, monkeypatch):
    cfg = tmp_path / "config.toml"
    cfg.write_text(f"""
[database]
url = "{db_url}"
[daemon]
state_dir = "{tmp_path}/var"
[outbound]
relay_host = "127.0.0.1"
relay_port = {smtp_capture.port}
[csms]
base_url = "https://csms.example.gov"
number_start = 67800001
secret_file = "csms.secret"
""")
    (tmp_path / "csms.secret").write_text("a-test-secret-of-enough-length\n")
    monkeypatch.setenv("ACEDESK_CONFIG", str(cfg))

    def acedesk(*args: str) -> tuple[int, str, str]:
        code = main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    assert acedesk("db", "upgrade")[0] == 0
    csv_file = tmp_path / "subs.csv"
    csv_file.write_text("email,topics,language\n"
                        "jo@broker.example,ACE;ACH Refunds,en\n"
                        "not-an-address,ACE,en\n"
                        "carla@importadora.example,ach refunds,es\n"
                        "ana@carrier.example,Cargo Release,fr\n"
                        "dan@carrier.example,ACE Portal,\n")
    code, out, err = acedesk("csms", "subscribers", "import", str(csv_file))
    assert code == 1 and "3 created" in out and "2 bad row(s) skipped" in out
    assert f"{csv_file}:3: not an e-mail address" in err and f"{csv_file}:5:" in err and "Traceback" not in err
    code, out, _ = acedesk("csms", "subscribers", "import", str(csv_file))
    assert "0 created" in out and "3 unchanged" in out
    code, out, _ = acedesk("csms", "topics")
    assert re.search(r"ACH Refunds\s+2 subscriber", out) and re.search(r"ACE Portal\s+1 subscriber", out)

    body = tmp_path / "body.md"
    body.write_text("CBP will hold a call about **ACH refunds**. See [the FAQ](https://www.cbp.gov/faq).\n")
    code, out, err = acedesk("csms", "create", "--title", "ACH Refund Support Call", "--type", "information",
                             "--tag", "Deadline;High Urgency", "--topic", "ACH Refunds", "--topic", "ace portal",
                             "--body", str(body), "--at", "2030-12-03 14:00",
                             "--support-call", "2030-12-10 14:00")
    assert code == 0, err
    notice_id = int(re.search(r"notice (\d+) created: scheduled, to be published 2030-12-03 14:00 ET", out).group(1))
    reminder_id = int(re.search(r"reminder (\d+): 'Support Call Today: ACH Refund Support Call', "
                                r"2030-12-10 08:00 ET", out).group(1))
    code, out, _ = acedesk("csms", "show", str(reminder_id))
    assert "type:      REMINDER" in out and "reminder of: notice" in out and "2:00 p.m. ET" in out
    code, out, _ = acedesk("csms", "preview", str(notice_id))
    assert "Subject: CSMS# (number assigned at publication) - ACH Refund Support Call" in out
    assert "Deadline | High Urgency" in out and "the FAQ [ https://www.cbp.gov/faq ]" in out
    assert "Unsubscribe: https://csms.example.gov/u/" in out
    code, out, _ = acedesk("csms", "preview", str(notice_id), "--html")
    assert '<a href="https://www.cbp.gov/faq" rel="noopener noreferrer">the FAQ</a>' in out
    assert acedesk("csms", "schedule", str(notice_id), "--at", "2031-01-05 09:30")[1].strip() == \
        f"notice {notice_id} scheduled for 2031-01-05 09:30 ET"
    code, out, err = acedesk("csms", "publish", str(notice_id))
    assert code == 2 and "add --yes" in err  # no terminal to ask: a script must say so
    code, out, err = acedesk("csms", "publish", str(notice_id), "--yes")
    assert code == 0, err
    assert "Publish CSMS #67800001 (English" in out and "Recipients: 3 (3 in English)" in out
    number = int(re.search(r"CSMS #(\d+) \(notice", out).group(1))
    assert number == 67800001 and f"CSMS #{number} done: 3 sent, 0 failed" in out
    assert f"CSMS #{number}" in err and "msg" in err  # the progress bar
    assert sorted(c.rcpt_tos[0] for c in smtp_capture.messages) == \
        ["carla@importadora.example", "dan@carrier.example", "jo@broker.example"]
    assert acedesk("csms", "publish", str(number))[1].startswith(f"CSMS #{number} was already published")
    code, out, _ = acedesk("csms", "list")
    assert re.search(rf"{notice_id}\s+{number}\s+done\s+.*\s3\s+0\s+0\s+ACH Refund Support Call", out)
    code, out, _ = acedesk("csms", "show", f"#{number}", "--json")
    assert '"sent": 3' in out and '"status": "done"' in out

    # A Spanish version written after the English went out reaches nobody twice: carla had the English one.
    body.write_text("CBP llevará a cabo una llamada sobre **reembolsos ACH**.\n")
    code, out, err = acedesk("csms", "create", "--title", "Llamada de apoyo", "--topic", "ACH Refunds",
                             "--body", str(body), "--language", "es", "--translation-of", str(number))
    assert code == 0, err
    es_id = int(re.search(r"notice (\d+) created", out).group(1))
    code, out, err = acedesk("csms", "publish", str(es_id), "--yes")
    assert code == 2 and "nobody would receive" in err and len(smtp_capture.messages) == 3

    assert acedesk("csms", "cancel", str(reminder_id))[1].strip() == f"notice {reminder_id} cancelled"
    code, _, err = acedesk("csms", "cancel", str(number))
    assert code == 2 and "only drafts and scheduled notices can be cancelled" in err
    code, out, _ = acedesk("csms", "archive")
    assert code == 0 and "1 published notice(s)" in out
    archive = tmp_path / "var" / "csms-archive"
    assert "ACH Refund Support Call" in (archive / "index.html").read_text()
    assert f"<title>CSMS# {number} - ACH Refund Support Call</title>" in (archive / "atom.xml").read_text()
    assert (archive / "notices" / f"{number}.html").exists()

    # Mistakes are named, never a traceback.
    for args, message in ((("csms", "create", "--title", "x", "--topic", "ACE", "--body", str(body), "--at",
                            "tomorrow"), "expected a time in ET"),
                          (("csms", "create", "--title", "x", "--topic", "Nope", "--body", str(body)),
                           "unknown topic(s): Nope"),
                          (("csms", "show", "99999999"), "no notice 99999999"),
                          (("csms", "subscribers", "import", str(tmp_path / "missing.csv")), "No such file")):
        code, _, err = acedesk(*args)
        assert code == 2 and message in err and "Traceback" not in err
