"""The CSMS fan-out against real servers (aiosmtpd capturing SMTP, a scripted
raw SMTP server for broken relays): a notice reaches exactly the union of its
topics' subscribers, once each, personalised; a throttling relay slows it
down but never skips anyone, a 5xx fails a recipient for good; a publisher
killed with SIGKILL and started again sends everyone the notice, with at most
the in-flight window twice; and the SMTP pool pipelines, dot-stuffs, reuses
connections, and turns a dropped or silent relay into ``temporary``."""

from __future__ import annotations

import asyncio
import collections
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import time
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import insert, select

from csms import service
from csms.message import DOT_SAFE, MessageTemplate, Sender
from csms.render import NoticeView, render_for
from csms.subscribers import ImportStats, import_subscribers
from csms.tokens import UNSUBSCRIBE, Signer
from daemon.config import config_from_dict
from daemon.context import AppContext
from daemon.notices.fanout import Progress, load_signer, publish
from daemon.delivery.smtp_pool import PERMANENT, SENT, TEMPORARY, RateLimiter, SmtpPool
from daemon.tls import tls_context
from models.base import utcnow
from models.csms import DONE, FAILED, PUBLISHING, BounceEvent, Delivery, Notice, Subscriber, Subscription, Topic
from models.csms import SENT as DELIVERY_SENT
from models.session import make_sessionmaker, transaction
from tests.servers import CaptureHandler, SmtpCapture, free_port

ROOT = Path(__file__).resolve().parent.parent

# Fast retries, short leases and commits: the behaviour, at test speed.
FAST = {"retry_min": 0.05, "retry_max": 0.2, "lease_seconds": 2.0, "mark_interval": 0.02, "connections": 3,
        "chunk_size": 7, "fanout_processes": 1}


def relay_config(config_factory, db_url: str, port: int, **csms):
    return config_factory(db_url, outbound={"relay_host": "127.0.0.1", "relay_port": port, "timeout": 5.0},
                          csms={**FAST, **csms})


def context(config, engine) -> AppContext:
    return AppContext(config=config, engine=engine, sessions=make_sessionmaker(engine), instance="test")


def subscribe(sessions, rows: list[tuple[str, list[str], str]]) -> dict[str, int]:
    """Import ``(email, topics, language)`` rows; return ``{email: subscriber id}``."""
    with transaction(sessions) as s:
        service.ensure_topics(s, {t for _, topics, _ in rows for t in topics} | {"ACE"})
        import_subscribers(s, rows, ImportStats())
    with sessions() as s:
        return {e: i for i, e in s.execute(select(Subscriber.id, Subscriber.email))}


def start(sessions, topics: list[str], title: str = "ACE Portal maintenance") -> int:
    """Create a notice to ``topics`` and start publishing it (number + delivery rows); return its id."""
    with transaction(sessions) as s:
        notice = service.create_notice(s, title=title, type="INFORMATION", topics=topics,
                                       body="The **ACE Portal** will be unavailable.\n\n.NET clients: log in again.")
        service.start_publish(s, notice, utcnow(), number_start=67800001)
        return notice.id


def by_rcpt(captured) -> collections.Counter:
    return collections.Counter(r for m in captured for r in m.rcpt_tos)


def deliveries(sessions, notice_id: int) -> dict[int, Delivery]:
    with sessions() as s:
        return {d.subscriber_id: d for d in s.scalars(select(Delivery).where(Delivery.notice_id == notice_id))}


# --- 1. the union of the topics, once each, personalised --------------------------------


def test_notice_reaches_the_union_of_its_topics_once_each_personalised(engine, sessions, config_factory,
                                                                        smtp_capture):
    db_url = engine.url.render_as_string(hide_password=False)
    config = relay_config(config_factory, db_url, smtp_capture.port)
    ids = subscribe(sessions, [
        ("ana@importer.example", ["ACE"], "en"),
        ("bo@broker.example", ["ACE", "ACH Refunds"], "en"),
        ("cy@carrier.example", ["ACH Refunds", "Cargo Release"], "en"),
        ("di@broker.example", ["ACE", "ACH Refunds", "Cargo Release"], "en"),
        ("ed@filer.example", ["Cargo Release"], "en"),
        ("fay@elsewhere.example", ["Export"], "en"),   # not a topic of the notice
        *((f"trader{i}@importer.example", [["ACE"], ["ACH Refunds"], ["Cargo Release"]][i % 3], "en")
          for i in range(20)),
    ])
    notice_id = start(sessions, ["ACE", "ACH Refunds", "Cargo Release"])
    seen: list[Progress] = []

    result = asyncio.run(publish(context(config, engine), notice_id, progress=seen.append))

    wanted = set(ids) - {"fay@elsewhere.example"}
    got = by_rcpt(smtp_capture.handler.wait_for(len(wanted)))
    assert set(got) == wanted and set(got.values()) == {1}
    assert (result.total, result.sent, result.failed, result.pending) == (len(wanted), len(wanted), 0, 0)
    assert seen and seen[-1].sent == len(wanted)
    with sessions() as s:
        notice = s.get(Notice, notice_id)
        assert notice.status == DONE and notice.lease_owner is None
        assert service.counts(s, notice_id) == {"sent": len(wanted), "failed": 0, "pending": 0}
    signer = load_signer(config)
    expected_topics = {"ana@importer.example": "ACE", "bo@broker.example": "ACE, ACH Refunds",
                       "cy@carrier.example": "ACH Refunds, Cargo Release",
                       "di@broker.example": "ACE, ACH Refunds, Cargo Release", "ed@filer.example": "Cargo Release"}
    for captured in smtp_capture.messages:
        rcpt = captured.rcpt_tos[0]
        sid = ids[rcpt]
        msg = captured.message
        assert not msg.defects and msg.get_content_type() == "multipart/alternative"
        assert msg["To"].addresses[0].addr_spec == rcpt
        assert msg["Subject"] == f"CSMS# {notice.number} - ACE Portal maintenance"
        # The return path is this subscriber's VERP address, signed: a DSN names them without guessing.
        assert config.desk.is_bounce_address(captured.mail_from)
        assert signer.parse_verp(captured.mail_from) == (sid, notice.number)
        # One-click unsubscribe (RFC 8058): mailto and https, each with this subscriber's signed token.
        assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        mailto, https = [u.strip().strip("<>") for u in str(msg["List-Unsubscribe"]).split(",")]
        assert mailto.startswith(f"mailto:{config.desk.csms_request_address}?subject=unsubscribe%20")
        token = https.rsplit("/u/", 1)[1]
        assert https.startswith(config.csms.base_url) and signer.check(UNSUBSCRIBE, token) == sid
        assert mailto.endswith(token)
        text = msg.get_body(("plain",)).get_content()
        html = msg.get_body(("html",)).get_content()
        if rcpt in expected_topics:
            assert f"You are subscribed to {expected_topics[rcpt]}." in text
        assert f"This message was sent to {rcpt}" in text and rcpt in html
        assert f"/u/{token}" in text and f"/u/{token}" in html
        assert ".NET clients: log in again." in text


@pytest.mark.parametrize("language", ["en", "es"])
def test_each_copy_reads_exactly_as_rendered_for_its_recipient_and_needs_no_dot_stuffing(language):
    # The body is encoded once and spliced: what a subscriber's mail program shows must still be
    # exactly the notice rendered for them, whatever the text (a line that is a dot, lines that
    # start with one, long lines, accents, HTML specials in a topic name).
    body = ("Línea con acentos: año, acción, ñandú.\n\n.\n\n.NET clients and ..double dots\n\n"
            + "A long paragraph without breaks " * 20 + "\n\nTrailing space \n\n<b>not html</b> & co.")
    view = NoticeView(number=67800042, title="Avisos & notas", type="INFORMATION", body=body,
                      topics=["ACE", "Tom & Jerry's <list>"], language=language,
                      published_at=utcnow())
    sender = Sender(domain="ace-support.example", from_address="csms@ace-support.example",
                    request_address="csms-request@ace-support.example",
                    bounce_address="csms-bounces@ace-support.example", base_url="https://csms.example")
    signer = Signer(b"a-test-secret-of-enough-length")
    template = MessageTemplate(view, sender, signer, 3600.0)
    topics = "ACE, Tom & Jerry's <list>"
    return_path, raw = template.build("o'neil&co@importer.example", 77, topics)
    assert DOT_SAFE and not raw.startswith(b".") and b"\r\n." not in raw
    assert all(len(line) <= 76 for line in raw.split(b"\r\n\r\n", 1)[1].split(b"\r\n"))
    message = message_from_bytes(raw, policy=policy.default)
    token = signer.make(UNSUBSCRIBE, 77, 3600.0)
    unsubscribe = f"https://csms.example/u/{token}"
    expected = render_for(view, "o'neil&co@importer.example", topics, unsubscribe, unsubscribe + "?manage=1")
    text, html = (part.get_content() for part in message.iter_parts())
    # Tokens carry their expiry in seconds: the one in the message may be a second older.
    text = re.sub(r"/u/[A-Za-z0-9_.-]+", f"/u/{token}", text)
    html = re.sub(r"/u/[A-Za-z0-9_.-]+", f"/u/{token}", html)
    assert text.replace("\r\n", "\n").rstrip("\n") == expected.text.replace("\r\n", "\n").rstrip("\n")
    assert html.replace("\r\n", "\n").rstrip("\n") == expected.html.replace("\r\n", "\n").rstrip("\n")
    assert message["To"].addresses[0].addr_spec == "o'neil&co@importer.example"
    assert signer.parse_verp(return_path) == (77, 67800042)
    assert signer.check(UNSUBSCRIBE, message["List-Unsubscribe"].split("/u/")[1].rstrip(">")) == 77


def test_subscriber_data_cannot_inject_headers_or_recipients(engine, sessions, config_factory, smtp_capture):
    db_url = engine.url.render_as_string(hide_password=False)
    config = relay_config(config_factory, db_url, smtp_capture.port)
    evil_topic = "ACE\r\nBcc: spy@evil.example"
    ids = subscribe(sessions, [("ok@importer.example", ["ACE", evil_topic], "en")])
    with transaction(sessions) as s:   # an address no import would accept, written behind its back
        s.execute(insert(Subscriber), [{"email": "x@importer.example\r\nBcc: spy@evil.example", "language": "en",
                                        "status": "active", "created_at": utcnow(), "updated_at": utcnow()}])
        bad_id = s.scalar(select(Subscriber.id).where(Subscriber.email.like("x@%")))
        topic_id = s.scalar(select(Topic.id).where(Topic.name == "ACE"))
        s.add(Subscription(subscriber_id=bad_id, topic_id=topic_id))
    notice_id = start(sessions, ["ACE", evil_topic])

    result = asyncio.run(publish(context(config, engine), notice_id))

    got = smtp_capture.handler.wait_for(1)
    assert [m.rcpt_tos for m in got] == [["ok@importer.example"]]
    msg = got[0].message
    assert msg["Bcc"] is None and "spy@evil.example" not in str(msg["To"])
    assert "spy@evil.example" in msg.get_body(("plain",)).get_content()   # only as text, in the body
    assert (result.sent, result.failed, result.pending) == (1, 1, 0)
    assert deliveries(sessions, notice_id)[bad_id].status == FAILED
    assert ids["ok@importer.example"] in deliveries(sessions, notice_id)


def test_who_leaves_or_is_disabled_after_publishing_started_is_not_sent_it(engine, sessions, config_factory,
                                                                          smtp_capture):
    config = relay_config(config_factory, engine.url.render_as_string(hide_password=False), smtp_capture.port)
    ids = subscribe(sessions, [("stays@importer.example", ["ACE"], "en"), ("bounced@importer.example", ["ACE"], "en"),
                               ("left@importer.example", ["ACE", "Export"], "en")])
    notice_id = start(sessions, ["ACE"])
    with transaction(sessions) as s:   # after planning, before sending
        s.get(Subscriber, ids["bounced@importer.example"]).status = "disabled"
        ace = s.scalar(select(Topic.id).where(Topic.name == "ACE"))
        s.delete(s.scalars(select(Subscription).where(Subscription.subscriber_id == ids["left@importer.example"],
                                                      Subscription.topic_id == ace)).one())

    result = asyncio.run(publish(context(config, engine), notice_id))

    assert [m.rcpt_tos for m in smtp_capture.handler.wait_for(1)] == [["stays@importer.example"]]
    assert (result.sent, result.failed, result.pending) == (1, 2, 0)
    with sessions() as s:
        assert s.get(Notice, notice_id).status == DONE
        assert not s.scalars(select(BounceEvent)).all()   # leaving is not bouncing


# --- 2. throttling relay: slower, never skipped; 5xx: failed, counted -----------------------


class ThrottlingHandler(CaptureHandler):
    """Answers 450 to some recipients for their first tries, and 550 to one, always."""

    def __init__(self, soft: dict[str, int], hard: dict[str, str]) -> None:
        super().__init__(rcpt_errors=hard)
        self.soft = soft
        self.tries: collections.Counter = collections.Counter()

    async def handle_RCPT(self, server, session, envelope, address, options):
        self.tries[address] += 1
        if self.tries[address] <= self.soft.get(address, 0):
            return "450 4.2.1 mailbox busy, try later"
        return await super().handle_RCPT(server, session, envelope, address, options)


def test_4xx_slows_the_publish_but_everyone_gets_it_and_5xx_fails_for_good(engine, sessions, config_factory):
    emails = [f"user{i}@importer.example" for i in range(30)]
    handler = ThrottlingHandler(soft={emails[3]: 3, emails[10]: 1}, hard={emails[7]: "550 5.1.1 no such user"})
    handler.data_errors.extend(["451 4.3.0 relay busy"] * 6)   # the relay throttles for a while
    server = SmtpCapture()
    server.handler = handler
    server.controller = Controller(handler, hostname="127.0.0.1", port=server.port)
    server.start()
    try:
        db_url = engine.url.render_as_string(hide_password=False)
        config = relay_config(config_factory, db_url, server.port)
        ids = subscribe(sessions, [(e, ["ACE"], "en") for e in emails])
        notice_id = start(sessions, ["ACE"])

        result = asyncio.run(asyncio.wait_for(publish(context(config, engine), notice_id), 90))
    finally:
        server.stop()

    got = by_rcpt(handler.messages)
    assert set(got) == set(emails) - {emails[7]} and set(got.values()) == {1}
    assert (result.sent, result.failed, result.pending) == (29, 1, 0)
    rows = deliveries(sessions, notice_id)
    assert rows[ids[emails[7]]].status == FAILED and rows[ids[emails[7]]].last_error.startswith("550")
    assert rows[ids[emails[3]]].status == DELIVERY_SENT and rows[ids[emails[3]]].attempts == 4
    assert sum(r.attempts for r in rows.values()) >= 30 + 3 + 1 + 6   # every 4xx was tried again
    with sessions() as s:
        assert s.get(Notice, notice_id).status == DONE
        assert service.counts(s, notice_id) == {"sent": 29, "failed": 1, "pending": 0}
        bounce = s.scalars(select(BounceEvent)).one()
        assert (bounce.subscriber_id, bounce.kind, bounce.source) == (ids[emails[7]], "hard", "smtp")


def test_a_recipient_deferred_past_give_up_hours_fails_instead_of_pending_forever(engine, sessions, config_factory):
    handler = ThrottlingHandler(soft={"slow@importer.example": 10_000}, hard={})
    server = SmtpCapture()
    server.handler = handler
    server.controller = Controller(handler, hostname="127.0.0.1", port=server.port)
    server.start()
    try:
        config = relay_config(config_factory, engine.url.render_as_string(hide_password=False), server.port,
                              give_up_hours=0.5 / 3600)
        subscribe(sessions, [("slow@importer.example", ["ACE"], "en"), ("fine@importer.example", ["ACE"], "en")])
        notice_id = start(sessions, ["ACE"])
        result = asyncio.run(asyncio.wait_for(publish(context(config, engine), notice_id), 20))
    finally:
        server.stop()
    assert [m.rcpt_tos for m in handler.messages] == [["fine@importer.example"]]
    assert (result.sent, result.failed, result.pending) == (1, 1, 0)
    assert handler.tries["slow@importer.example"] >= 2
    with sessions() as s:
        assert s.get(Notice, notice_id).status == DONE
        assert not s.scalars(select(BounceEvent)).all()   # a 4xx is never counted as a hard bounce


def test_stop_pauses_with_deliveries_pending_and_a_second_call_resumes(engine, sessions, config_factory,
                                                                        smtp_capture):
    config = relay_config(config_factory, engine.url.render_as_string(hide_password=False), smtp_capture.port,
                          rate_per_second=40.0, connections=1)
    emails = [f"user{i}@importer.example" for i in range(40)]
    subscribe(sessions, [(e, ["ACE"], "en") for e in emails])
    notice_id = start(sessions, ["ACE"])
    ctx = context(config, engine)

    async def stop_after(count: int) -> Progress:
        stop = asyncio.Event()
        return await publish(ctx, notice_id, stop=stop,
                             progress=lambda p: stop.set() if p.sent >= count else None)

    first = asyncio.run(stop_after(5))
    assert first.pending > 0 and first.sent + first.pending == 40
    with sessions() as s:
        assert s.get(Notice, notice_id).status == PUBLISHING and s.get(Notice, notice_id).lease_owner is None
    second = asyncio.run(publish(ctx, notice_id))
    assert (second.sent, second.pending) == (40, 0)
    got = by_rcpt(smtp_capture.handler.wait_for(40))
    assert set(got) == set(emails) and set(got.values()) == {1}


def test_no_relay_spools_every_message_and_counts_it_sent(engine, sessions, config_factory):
    config = config_factory(engine.url.render_as_string(hide_password=False), csms=FAST)
    assert config.outbound.relay_host == ""
    ids = subscribe(sessions, [(f"user{i}@importer.example", ["ACE"], "en") for i in range(12)])
    notice_id = start(sessions, ["ACE"])
    result = asyncio.run(publish(context(config, engine), notice_id))
    with sessions() as s:
        number = s.get(Notice, notice_id).number
    files = sorted((config.path(config.outbound.spool_dir) / "csms" / str(number)).glob("*.eml"))
    assert (result.sent, result.pending) == (12, 0) and len(files) == 12
    recipients = {message_from_bytes(f.read_bytes(), policy=policy.default)["To"].addresses[0].addr_spec
                  for f in files}
    assert recipients == set(ids)


# --- 3. several sender processes; kill -9 mid-publish -------------------------------------

CHILD = """
import asyncio, json, sys
from daemon.config import config_from_dict
from daemon.context import make_context
from daemon.notices.fanout import publish
args = json.loads(sys.argv[1])
ctx = make_context(config_from_dict(args["config"], base_dir=args["base_dir"]))
asyncio.run(publish(ctx, args["notice_id"]))
"""


def raw_config(tmp_path: Path, db_url: str, port: int, **csms: Any) -> dict:
    """A config as a dict (a publisher in another process reads the same one)."""
    (tmp_path / "csms.secret").write_text("a-test-secret-of-enough-length\n")
    return {"database": {"url": db_url}, "daemon": {"state_dir": str(tmp_path / "var")},
            # The gated relay holds the first replies until both processes are connected.
            "outbound": {"relay_host": "127.0.0.1", "relay_port": port, "timeout": 120.0},
            "csms": {**FAST, "secret_file": str(tmp_path / "csms.secret"), **csms}}


def start_publisher(raw: dict, tmp_path: Path, notice_id: int) -> subprocess.Popen[bytes]:
    """``publish`` in a process of its own (and its own process group, with the senders it spawns)."""
    return subprocess.Popen([sys.executable, "-c", CHILD,
                             json.dumps({"config": raw, "base_dir": str(tmp_path), "notice_id": notice_id})],
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, start_new_session=True)


def journal_pids(tmp_path: Path) -> set[int]:
    """The processes whose fan-out journal exists: each has had a message accepted by the relay."""
    folder = tmp_path / "var" / "csms-journal"
    return {int(p.name.rpartition(":")[2]) for p in folder.iterdir()} if folder.is_dir() else set()


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_two_sender_processes_share_a_notice_and_each_subscriber_gets_it_once(engine, sessions, config_factory,
                                                                               gated_capture):
    # Given a notice to 150 subscribers, claimed 10 at a time by two sender processes sharing 4 connections
    # (a timeout and a lease far longer than the relay holds the first replies),
    config = config_factory(engine.url.render_as_string(hide_password=False),
                            outbound={"relay_host": "127.0.0.1", "relay_port": gated_capture.port, "timeout": 120.0},
                            csms={**FAST, "fanout_processes": 2, "connections": 4, "chunk_size": 10,
                                  "lease_seconds": 30.0})
    emails = [f"user{i}@importer.example" for i in range(150)]
    subscribe(sessions, [(e, ["ACE"], "en") for e in emails])
    notice_id = start(sessions, ["ACE"])
    result = asyncio.run(publish(context(config, engine), notice_id))
    # each subscriber received it exactly once,
    got = by_rcpt(gated_capture.handler.wait_for(len(emails)))
    assert set(got) == set(emails) and set(got.values()) == {1}
    assert (result.sent, result.failed, result.pending) == (150, 0, 0)
    # over the connections of both processes (2 each: one process alone never opens a third),
    assert len(gated_capture.handler.greeted) >= 3 and len(set(gated_capture.handler.peers)) >= 3
    # and the notice is done, nothing left claimed.
    with sessions() as s:
        assert s.get(Notice, notice_id).status == DONE
        assert not s.scalars(select(Delivery).where(Delivery.claim_owner.is_not(None))).all()


def test_kill_9_of_a_sender_process_loses_nothing_and_resends_at_most_its_in_flight(
        engine, sessions, gated_capture, tmp_path):
    # Given a publisher whose second sender process is sending (2 connections each, throttled),
    db_url = engine.url.render_as_string(hide_password=False)
    raw = raw_config(tmp_path, db_url, gated_capture.port, fanout_processes=2, connections=4, chunk_size=10,
                     rate_per_second=40.0, lease_seconds=30.0)
    emails = [f"user{i}@importer.example" for i in range(400)]
    subscribe(sessions, [(e, ["ACE"], "en") for e in emails])
    notice_id = start(sessions, ["ACE"])
    publisher = start_publisher(raw, tmp_path, notice_id)
    try:
        wait_until(lambda: journal_pids(tmp_path) - {publisher.pid} or publisher.poll() is not None, 120,
                   "the spawned sender to have a message accepted")
        assert publisher.poll() is None, "the publisher ended before its second sender sent anything"
        # when that sender is killed with SIGKILL in the middle of the notice,
        victim = (journal_pids(tmp_path) - {publisher.pid}).pop()
        os.kill(victim, signal.SIGKILL)
        # the publisher takes its deliveries back at once (not after the 30 s lease) and finishes.
        assert publisher.wait(180) == 0
    finally:
        if publisher.poll() is None:
            os.killpg(publisher.pid, signal.SIGKILL)
            publisher.wait(10)
    got = by_rcpt(gated_capture.handler.wait_for(len(emails)))
    assert set(got) == set(emails)
    # Resent at most: the message in flight on each of the killed sender's 2 connections.
    assert sum(got.values()) - len(emails) <= 2
    with sessions() as s:
        assert s.get(Notice, notice_id).status == DONE
        assert service.counts(s, notice_id) == {"sent": 400, "failed": 0, "pending": 0}


def test_kill_9_mid_publish_then_restart_everyone_gets_it_duplicates_at_most_in_flight(
        engine, sessions, config_factory, smtp_capture, tmp_path):
    # Given a publisher (two sender processes, 4 connections in all) that has sent part of a notice,
    db_url = engine.url.render_as_string(hide_password=False)
    raw = raw_config(tmp_path, db_url, smtp_capture.port, fanout_processes=2, connections=4, chunk_size=10,
                     rate_per_second=60.0, lease_seconds=30.0)
    config = config_from_dict(raw, base_dir=str(tmp_path))
    emails = [f"user{i}@importer.example" for i in range(200)]
    subscribe(sessions, [(e, ["ACE"], "en") for e in emails])
    notice_id = start(sessions, ["ACE"])
    publisher = start_publisher(raw, tmp_path, notice_id)
    try:
        arrived = smtp_capture.handler.wait_for(25, timeout=120)
        assert len(arrived) >= 25 and publisher.poll() is None, "the publisher never got going"
    finally:
        # when it is killed with SIGKILL, its senders too,
        os.killpg(publisher.pid, signal.SIGKILL)
        publisher.wait(10)
    with sessions() as s:
        assert s.get(Notice, notice_id).status == PUBLISHING
        assert service.counts(s, notice_id)["pending"] > 0, "killed too late to test anything"

    # and started again: the dead processes' claims come back at once (their journals say what
    # the relay had accepted), and this run finishes the job.
    result = asyncio.run(publish(context(config, engine), notice_id))
    assert (result.sent, result.failed, result.pending) == (len(emails), 0, 0)
    got = by_rcpt(smtp_capture.handler.wait_for(len(emails)))
    assert set(got) == set(emails)
    # Resent at most: the message in flight on each connection of the killed publisher.
    assert sum(got.values()) - len(emails) <= 4
    with sessions() as s:
        assert s.get(Notice, notice_id).status == DONE
    assert not journal_pids(tmp_path), "the dead processes' journals were taken over and removed"


# --- 4. the SMTP pool itself -----------------------------------------------------------------


class PipeliningHandler(CaptureHandler):
    """The capturing handler, on a server that also advertises PIPELINING and notes each session."""

    def __init__(self) -> None:
        super().__init__()
        self.peers: list = []

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        return [*responses[:-1], "250-PIPELINING", responses[-1]]

    async def handle_DATA(self, server, session, envelope):
        self.peers.append(session.peer)
        return await super().handle_DATA(server, session, envelope)


@pytest.fixture
def pipelining_capture():
    server = SmtpCapture()
    server.handler = PipeliningHandler()
    server.controller = Controller(server.handler, hostname="127.0.0.1", port=server.port)
    server.start()
    yield server
    server.stop()


class GatedHandler(PipeliningHandler):
    """Holds every DATA reply until ``sessions`` distinct connections have greeted it: a publisher
    cannot finish on its own connections before its other sender process has joined in."""

    def __init__(self, sessions: int) -> None:
        super().__init__()
        self.needed = sessions
        self.greeted: set = set()
        self.gate: asyncio.Event | None = None

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        self.greeted.add(session.peer)
        if self.gate is None:
            self.gate = asyncio.Event()
        if len(self.greeted) >= self.needed:
            self.gate.set()
        return await super().handle_EHLO(server, session, envelope, hostname, responses)

    async def handle_DATA(self, server, session, envelope):
        if self.gate is None:
            self.gate = asyncio.Event()
        try:
            async with asyncio.timeout(90):
                await self.gate.wait()
        except TimeoutError:
            pass   # the test's own assertions say what went wrong
        return await super().handle_DATA(server, session, envelope)


@pytest.fixture
def gated_capture():
    """A capturing server that answers DATA only once 3 connections are open (two processes' worth)."""
    server = SmtpCapture()
    server.handler = GatedHandler(3)
    server.controller = Controller(server.handler, hostname="127.0.0.1", port=server.port)
    server.start()
    yield server
    server.stop()


TRICKY = (b"From: csms@ace-support.example\r\nTo: jo@importer.example\r\nSubject: dots\r\n\r\n"
          b".leading dot\r\n..two dots\r\n.\r\nmiddle\r\n. \r\nlast line\r\n")


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelining", "lockstep"])
def test_pool_delivers_intact_over_reused_connections(pipelining_capture, pipelining):
    async def main():
        async with SmtpPool("127.0.0.1", pipelining_capture.port, connections=2, timeout=5,
                            pipelining=pipelining) as pool:
            results = await asyncio.gather(*(pool.send("b@ace-support.example", [f"r{i}@importer.example"], TRICKY)
                                             for i in range(12)))
            return results, pool.stats["connections"]

    results, opened = asyncio.run(main())
    assert {r.status for r in results} == {SENT}
    got = pipelining_capture.handler.wait_for(12)
    assert all(m.data == TRICKY for m in got)     # dot-stuffed on the way, unstuffed by the server
    assert sorted(r for m in got for r in m.rcpt_tos) == sorted(f"r{i}@importer.example" for i in range(12))
    assert opened == 2 and len(set(pipelining_capture.handler.peers)) == 2   # 12 messages, 2 sessions


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelining", "lockstep"])
def test_a_channel_sends_a_series_over_one_session_each_envelope_ahead(pipelining_capture, pipelining):
    async def main():
        async with SmtpPool("127.0.0.1", pipelining_capture.port, connections=1, timeout=5,
                            pipelining=pipelining) as pool:
            accepted: list[int] = []
            results = []
            async with pool.channel() as channel:
                for i in range(6):
                    then = ("b@ace-support.example", [f"r{i + 1}@importer.example"]) if i < 5 else None
                    results.append(await channel.send("b@ace-support.example", [f"r{i}@importer.example"],
                                                      TRICKY, lambda i=i: accepted.append(i), then=then))
            return results, accepted, pool.stats["connections"]

    results, accepted, opened = asyncio.run(asyncio.wait_for(main(), 30))
    assert [r.status for r in results] == [SENT] * 6 and accepted == list(range(6))
    got = pipelining_capture.handler.wait_for(6)
    assert [m.rcpt_tos for m in got] == [[f"r{i}@importer.example"] for i in range(6)]
    assert all(m.data == TRICKY for m in got) and opened == 1


def test_an_envelope_sent_ahead_for_a_message_that_does_not_follow_delivers_nothing(pipelining_capture):
    async def main():
        async with SmtpPool("127.0.0.1", pipelining_capture.port, connections=1, timeout=5) as pool:
            async with pool.channel() as channel:
                first = await channel.send("b@ace-support.example", ["a@importer.example"], TRICKY,
                                           then=("b@ace-support.example", ["never@importer.example"]))
                other = await channel.send("b@ace-support.example", ["c@importer.example"], TRICKY)
            return first, other, pool.stats["connections"]

    first, other, opened = asyncio.run(asyncio.wait_for(main(), 30))
    assert first.status == SENT and other.status == SENT and opened == 2   # the announced session was dropped
    got = pipelining_capture.handler.wait_for(2)
    time.sleep(0.3)
    assert [m.rcpt_tos for m in pipelining_capture.handler.messages] == [["a@importer.example"],
                                                                         ["c@importer.example"]]
    assert all(m.data == TRICKY for m in got)


def test_pool_reports_refusals_per_recipient(smtp_capture):
    smtp_capture.handler.rcpt_errors["gone@importer.example"] = "550 5.1.1 no such user"
    smtp_capture.handler.data_errors.append("452 4.3.1 insufficient storage")

    async def main():
        async with SmtpPool("127.0.0.1", smtp_capture.port, connections=1, timeout=5) as pool:
            return [await pool.send("b@ace-support.example", [r], TRICKY)
                    for r in ("a@importer.example", "gone@importer.example", "a@importer.example")]

    first, gone, again = asyncio.run(main())
    assert (first.status, first.code) == (TEMPORARY, 452)
    assert (gone.status, gone.code) == (PERMANENT, 550)
    assert again.status == SENT and len(smtp_capture.handler.wait_for(1)) == 1


class ScriptedRelay:
    """A raw SMTP server that advertises PIPELINING and notes whether the client used it (the
    RCPT arrived before MAIL was answered); on cue it misbehaves: ``drop`` closes the connection
    in the middle of the message, ``silent`` never answers its final dot."""

    def __init__(self, mode: str = "ok") -> None:
        self.mode = mode
        self.pipelined: list[bool] = []
        self.messages: list[bytes] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> ScriptedRelay:
        self.server = await asyncio.start_server(self.session, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 scripted ESMTP\r\n")
        try:
            while line := await reader.readline():
                verb = line[:4].upper()
                if verb == b"EHLO":
                    writer.write(b"250-scripted\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
                elif verb == b"MAIL":
                    try:   # a pipelining client has sent its RCPT already; a lockstep one waits for us
                        early = await asyncio.wait_for(reader.readline(), 0.3)
                    except TimeoutError:
                        early = b""
                    self.pipelined.append(early.upper().startswith(b"RCPT"))
                    writer.write(b"250 ok\r\n" * (2 if early else 1))
                elif verb == b"DATA":
                    writer.write(b"354 go ahead\r\n")
                    await writer.drain()
                    if self.mode == "drop":
                        await reader.readline()
                        writer.transport.abort()
                        return
                    if self.mode == "silent":
                        await asyncio.sleep(30)
                    lines = []
                    while (content := await reader.readline()) not in (b".\r\n", b""):
                        lines.append(content)
                    self.messages.append(b"".join(lines))
                    writer.write(b"250 2.0.0 queued\r\n")
                    if self.mode == "one-per-session":   # as relays do with sessions idle too long
                        await writer.drain()
                        break
                elif verb == b"QUIT":
                    writer.write(b"221 bye\r\n")
                    break
                else:
                    writer.write(b"250 ok\r\n")
        finally:
            writer.close()


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelining", "lockstep"])
def test_pool_pipelines_the_envelope_only_when_allowed(pipelining):
    async def main():
        async with ScriptedRelay() as relay:
            async with SmtpPool("127.0.0.1", relay.port, connections=1, timeout=5, pipelining=pipelining) as pool:
                results = [await pool.send("b@ace-support.example", ["jo@importer.example"], TRICKY)
                           for _ in range(2)]
            return results, relay

    results, relay = asyncio.run(asyncio.wait_for(main(), 15))
    assert [r.status for r in results] == [SENT, SENT]
    assert relay.pipelined == [pipelining, pipelining]
    # On the wire, dot-stuffed: each line that starts with a dot gets one more (RFC 5321 4.5.2).
    head = TRICKY.split(b"\r\n\r\n", 1)[0]
    assert relay.messages[0] == head + b"\r\n\r\n" + (b"..leading dot\r\n...two dots\r\n..\r\nmiddle\r\n"
                                                     b".. \r\nlast line\r\n")


def test_a_session_the_relay_closed_while_idle_is_replaced_without_failing_the_message():
    async def main():
        async with ScriptedRelay("one-per-session") as relay:
            async with SmtpPool("127.0.0.1", relay.port, connections=1, timeout=5) as pool:
                results = []
                for _ in range(3):
                    results.append(await pool.send("b@ace-support.example", ["jo@importer.example"], TRICKY))
                    await asyncio.sleep(0.05)   # the relay's close reaches us while the session is idle
                return results, relay, pool.stats["connections"]

    results, relay, opened = asyncio.run(asyncio.wait_for(main(), 15))
    assert [r.status for r in results] == [SENT, SENT, SENT]
    assert len(relay.messages) == 3 and opened == 3


@pytest.mark.parametrize("mode", ["drop", "silent"])
def test_a_relay_that_drops_or_goes_silent_mid_message_gives_temporary_not_a_hang(mode):
    async def main():
        async with ScriptedRelay(mode) as relay:
            async with SmtpPool("127.0.0.1", relay.port, connections=1, timeout=1.0) as pool:
                started = time.monotonic()
                result = await pool.send("b@ace-support.example", ["jo@importer.example"], TRICKY)
                return result, time.monotonic() - started

    result, seconds = asyncio.run(asyncio.wait_for(main(), 15))
    assert result.status == TEMPORARY and seconds < 3


def test_a_relay_that_is_down_gives_temporary_quickly():
    async def main():
        async with SmtpPool("127.0.0.1", free_port(), connections=1, timeout=2.0) as pool:
            return await pool.send("b@ace-support.example", ["jo@importer.example"], TRICKY)

    assert asyncio.run(asyncio.wait_for(main(), 10)).status == TEMPORARY


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (openssl), and its key."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True, timeout=30)
    return cert, key


@pytest.mark.parametrize("tls", ["starttls", "implicit"])
def test_pool_speaks_tls_as_configured_and_verifies_the_relay(certificate, tls):
    cert, key = certificate
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    handler = CaptureHandler()
    tls_option = {"tls_context": server_ctx, "require_starttls": True} if tls == "starttls" \
        else {"ssl_context": server_ctx}
    controller = Controller(handler, hostname="127.0.0.1", port=free_port(), **tls_option)
    controller.start()

    async def send(context: ssl.SSLContext):
        async with SmtpPool("127.0.0.1", controller.port, connections=1, timeout=5, tls=tls,
                            ssl_context=context) as pool:
            return await pool.send("b@ace-support.example", ["jo@importer.example"], TRICKY)

    try:
        trusted = asyncio.run(send(tls_context(ca_file=str(cert))))
        untrusted = asyncio.run(send(tls_context()))   # the system's CAs do not know this relay
    finally:
        controller.stop()
    assert trusted.status == SENT and handler.wait_for(1)[0].data == TRICKY
    assert untrusted.status == TEMPORARY and "CERTIFICATE_VERIFY_FAILED" in untrusted.message
    assert len(handler.messages) == 1


def test_starttls_required_but_not_offered_sends_nothing_in_plaintext(smtp_capture):
    async def main():
        async with SmtpPool("127.0.0.1", smtp_capture.port, connections=1, timeout=5, tls="starttls") as pool:
            return await pool.send("b@ace-support.example", ["jo@importer.example"], TRICKY)

    result = asyncio.run(main())
    assert (result.status, result.code) == (TEMPORARY, 530) and smtp_capture.messages == []


def test_rate_limiter_spaces_messages_and_holds_at_the_hourly_cap():
    async def timed(limiter: RateLimiter, count: int, within: float) -> int:
        done = 0

        async def take() -> None:
            nonlocal done
            for _ in range(count):
                await limiter.acquire()
                done += 1

        try:
            await asyncio.wait_for(take(), within)
        except TimeoutError:
            pass
        return done

    started = time.monotonic()
    assert asyncio.run(timed(RateLimiter(per_second=50), 26, 5.0)) == 26
    assert time.monotonic() - started >= 0.4   # 26 at 50/s: at least half a second, bar the first burst
    assert asyncio.run(timed(RateLimiter(hourly_cap=3), 5, 0.5)) == 3   # the 4th waits for the hour to slide
    limiter = RateLimiter(per_second=100)
    limiter.slow_down()
    assert limiter.rate == 50
    limiter.slow_down()   # a burst of refusals is one signal
    assert limiter.rate == 50
    for _ in range(100):
        limiter.speed_up()
    assert limiter.rate == 100
