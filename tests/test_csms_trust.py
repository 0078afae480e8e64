"""CSMS as a communications officer, a Spanish-speaking subscriber and a
mailbox provider would try it, against real servers (aiosmtpd capture, the
daemon's own HTTP endpoint): the guard rails of publishing; a notice with a
Spanish translation reaching each subscriber once, in their language; the
preferences page changing topics and language (CSRF-safe); subscribing by a
command in the body, in both languages; DKIM signatures over the one-click
headers verified by dkimpy; a non-DSN bounce counted; an ARF complaint
unsubscribing; rotated-out secrets still accepted and forged tokens refused;
the Atom feed's links answered; and the subscriber roster commands."""

from __future__ import annotations

import re
import subprocess
from email import message_from_bytes, policy
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import undefer

from csms import dkim as csms_dkim
from csms import service, subscribers
from csms.tokens import CONFIRM, UNSUBSCRIBE, BadToken, Signer
from daemon.cli.main import main
from daemon.notices import keys
from daemon.notices import scheduler as csms_runner
from daemon.notices.fanout import load_signer
from daemon.web.server import WebServer
from daemon.web.server import make_components as web_components
from daemon.notices.keys import KeyRing
from models.base import utcnow
from models.csms import UNSUBSCRIBED, BounceEvent, Notice
from models.outbox import OutboxMessage
from tests.servers import BackgroundComponent, Together, wait_for_port
from tests.test_csms import (
    REQUEST, add_notice, context, csms_config, ingest, notice, one_click, request_mail, run_stages, subscriber,
    topics_of, wait_until, web,
)


@pytest.fixture(scope="module")
def dkim_key_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("dkim") / "csms.key"
    subprocess.run(["openssl", "genrsa", "-out", str(path), "2048"], check=True, capture_output=True)
    return path


# --- guard rails, through the command line --------------------------------------------------


def test_guard_rails_of_publishing(sqlite_url, tmp_path, capsys, monkeypatch, smtp_capture):
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[database]\nurl = "{sqlite_url}"\n[daemon]\nstate_dir = "{tmp_path}/var"\n'
                   f'[outbound]\nrelay_host = "127.0.0.1"\nrelay_port = {smtp_capture.port}\n'
                   '[csms]\nbase_url = "https://csms.example.gov"\n')
    monkeypatch.setenv("ACEDESK_CONFIG", str(cfg))

    def acedesk(*args: str) -> tuple[int, str, str]:
        code = main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    assert acedesk("db", "upgrade")[0] == 0
    body = tmp_path / "body.md"
    body.write_text("The call is **today**. <script>alert(1)</script> <b onclick=\"x()\">Bring</b> questions.\n")
    common = ("csms", "create", "--title", "ACH call", "--topic", "ACH Refunds", "--body", str(body))
    # A mistyped year is refused, saying how late it would be.
    code, _, err = acedesk(*common, "--at", "2025-12-03 09:00")
    assert code == 2 and "is in the past" in err and "days ago" in err and "--late-ok" in err
    # Nobody subscribed: publishing is refused before any number is used.
    code, out, _ = acedesk(*common)
    draft = int(re.search(r"notice (\d+) created: draft", out).group(1))
    code, _, err = acedesk("csms", "publish", str(draft), "--yes")
    assert code == 2 and "nobody would receive" in err and "no number was used" in err
    # Preview works on a draft by id, names what the sanitiser removes, and carries the scheduled date.
    assert acedesk("csms", "schedule", str(draft), "--at", "2031-01-06 09:00")[0] == 0
    code, out, err = acedesk("csms", "preview", str(draft))
    assert code == 0 and f"draft {draft}" in err and "Monday, January 6, 2031" in out
    assert "<script> element and its content" in err and "onclick attribute on <b>" in err
    assert "Additional Information\nPrograms Affected:" in out  # the heading holds the programs
    # --with-translation holds a notice until its translation exists.
    csv_file = tmp_path / "subs.csv"
    csv_file.write_text("email,topics,language\njo@broker.example,ACH Refunds,en\ncarla@importadora.example,"
                        "ACH Refunds,es\nluis@aduana.example,ACH Refunds,es\n")
    assert acedesk("csms", "subscribers", "import", str(csv_file))[0] == 0
    code, out, _ = acedesk(*common, "--with-translation")
    held = int(re.search(r"notice (\d+) created: draft \(held until its translation exists\)", out).group(1))
    code, _, err = acedesk("csms", "publish", str(held), "--yes")
    assert code == 2 and "held until its translation exists" in err
    body.write_text("La llamada es **hoy**.\n")
    code, out, _ = acedesk("csms", "create", "--title", "Llamada ACH", "--topic", "ACH Refunds", "--body",
                           str(body), "--language", "es", "--translation-of", str(held))
    es = int(re.search(r"notice (\d+) created", out).group(1))
    # The plan: the number each version takes, the topics, the recipients per language; then it goes.
    code, out, err = acedesk("csms", "publish", str(held), "--yes")
    assert code == 0, err
    assert f"Publish CSMS #67800001 (English, notice {held})" in out
    assert f"with CSMS #67800002 (Spanish, notice {es})" in out
    assert "Topics: ACH Refunds" in out and "Recipients: 3 (1 in English, 2 in Spanish)" in out
    got = {c.rcpt_tos[0]: c.message for c in smtp_capture.messages}
    assert sorted(got) == ["carla@importadora.example", "jo@broker.example", "luis@aduana.example"]
    assert got["carla@importadora.example"]["Subject"] == "CSMS# 67800002 - Llamada ACH"
    assert got["jo@broker.example"]["Subject"] == "CSMS# 67800001 - ACH call"
    code, out, _ = acedesk("csms", "show", str(es), "--json")
    assert '"status": "done"' in out and '"number": 67800002' in out
    # The roster: list, show with history, export, remove.
    code, out, _ = acedesk("csms", "subscribers", "list", "--topic", "ach refunds")
    assert re.search(r"carla@importadora.example\s+active\s+es\s+ACH Refunds", out) and "3 subscriber(s)" in out
    code, out, _ = acedesk("csms", "subscribers", "show", "Carla@Importadora.example")
    assert "state:     active" in out and "language:  es" in out and "last notice sent: CSMS #67800002" in out
    code, out, _ = acedesk("csms", "subscribers", "export")
    assert out.splitlines()[0] == "email,topics,language,state,created_at,hard_bounces"
    assert "luis@aduana.example,ACH Refunds,es,active," in out
    assert acedesk("csms", "subscribers", "remove", "luis@aduana.example")[0] == 2  # asks first
    code, out, _ = acedesk("csms", "subscribers", "remove", "luis@aduana.example", "--yes")
    assert code == 0 and "removed" in out
    code, _, err = acedesk("csms", "subscribers", "show", "luis@aduana.example")
    assert code == 2 and "no subscriber" in err


def test_a_translation_reaches_each_subscriber_once_in_their_language(db_url, config_factory, smtp_capture):
    config = csms_config(config_factory, db_url, smtp_capture.port)
    ctx = context(config)
    with transaction_(ctx) as session:
        for address, lang in (("jo@broker.example", "en"), ("carla@importadora.example", "es"),
                              ("ana@carrier.example", "es")):
            subscribers.subscribe(session, address, ["ACE"], lang)
        original = service.create_notice(session, title="ACE outage", type="INFORMATION", body="ACE is down.",
                                         topics=["ACE"], hold_for_translation=True, scheduled_at=utcnow())
    # Held: due, but not started while the translation is missing.
    assert csms_runner.start_due(ctx) == [] and notice(ctx, original.id).status == "scheduled"
    with transaction_(ctx) as session:
        translation = service.create_notice(session, title="Interrupción de ACE", type="INFORMATION",
                                            body="ACE no funciona.", topics=["ACE"], language="es",
                                            translation_of=session.get(Notice, original.id))
    assert csms_runner.start_due(ctx) == [original.id]  # with its translation: one row per subscriber
    with transaction_(ctx) as session:
        # Ana switches to English after publishing started: her version is chosen when her turn comes.
        subscribers.subscribe(session, "ana@carrier.example", ["ACE"], "en")
    daemon = BackgroundComponent(Together(*csms_runner.make_components(ctx))).start()
    try:
        wait_until(lambda: notice(ctx, original.id).status == "done", what="the notice to go out")
        assert notice(ctx, translation.id).status == "done"
        # A second translation published on its own reaches nobody twice: refused, no number used.
        with transaction_(ctx) as session:
            late = service.create_notice(session, title="Otra", type="INFORMATION", body="x", topics=["ACE"],
                                         language="es", translation_of=session.get(Notice, original.id))
            late_id = late.id
        with pytest.raises(service.CsmsError, match="nobody would receive"):
            with transaction_(ctx) as session:
                service.start_publish(session, session.get(Notice, late_id), utcnow(), number_start=1)
    finally:
        daemon.stop()
        ctx.dispose()
    got = sorted((c.rcpt_tos[0], c.message["Content-Language"], c.message["Subject"]) for c in smtp_capture.messages)
    es_number, en_number = notice(ctx, translation.id).number, notice(ctx, original.id).number
    assert got == [("ana@carrier.example", "en", f"CSMS# {en_number} - ACE outage"),
                   ("carla@importadora.example", "es", f"CSMS# {es_number} - Interrupción de ACE"),
                   ("jo@broker.example", "en", f"CSMS# {en_number} - ACE outage")]
    with ctx.sessions() as session:
        assert service.counts_by_language(session, original.id) == {"en": 2, "es": 1}


def service_sweeps(ctx) -> bool:
    """True once the scheduler has created the configured topics (its first sweep ran)."""
    with ctx.sessions() as session:
        return "Trade Policy" in service.topic_names(session)


def transaction_(ctx):
    from models.session import transaction

    return transaction(ctx.sessions)


# --- the preferences page, in both languages --------------------------------------------------


def test_preferences_page_changes_topics_and_language_and_refuses_forgeries(sqlite_url, config_factory):
    config = csms_config(config_factory, sqlite_url)
    ctx = context(config)
    with transaction_(ctx) as session:
        sid = subscribers.subscribe(session, "carla@importadora.example", ["ACE"], "es").id
    token = load_signer(config).make(UNSUBSCRIBE, sid, 3600)
    base = config.csms.base_url
    server = BackgroundComponent(WebServer(ctx, KeyRing(config))).start()
    try:
        wait_for_port(config.web.host_port()[1])
        # The page is in her language, links to the other, and a GET changes nothing.
        status, page = web("GET", f"{base}/u/{token}?manage=1")
        assert status == 200 and 'lang="es"' in page and "Temas sobre los que carla@importadora.example" in page
        assert 'value="ACE" checked' in page and 'value="es" checked' in page and "English version" in page
        assert web("GET", f"{base}/u/{token}?manage=1&lang=en")[1].count("Topics carla@importadora.example") == 1
        csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        # A forged form (no CSRF field, or posted cross-site) changes nothing.
        status, page = web("POST", f"{base}/u/{token}", b"action=update&topic=Manifest&language=en", form)
        assert status == 403 and "No se cambió nada" in page
        status, _ = web("POST", f"{base}/u/{token}", f"action=update&topic=Manifest&csrf={csrf}".encode(),
                        {**form, "Sec-Fetch-Site": "cross-site"})
        assert status == 403 and topics_of(ctx, "carla@importadora.example") == ["ACE"]
        # Her choice: two topics, in English; the answer comes in English.
        status, page = web("POST", f"{base}/u/{token}",
                           f"action=update&topic=Manifest&topic=ACE+Portal&language=en&csrf={csrf}".encode(), form)
        assert status == 200 and "now receives CSMS notices about: ACE Portal, Manifest, in English" in page
        assert topics_of(ctx, "carla@importadora.example") == ["ACE Portal", "Manifest"]
        assert subscriber(ctx, "carla@importadora.example").language == "en"
        # Or leave everything.
        status, page = one_click(f"{base}/u/{token}")
        assert status == 200 and "will receive no more CSMS notices" in page
        # A bad link says so in the visitor's language.
        status, page = web("GET", f"{base}/u/{token[:-3]}AAA?lang=es")
        assert status == 400 and "fue alterado" in page and "No se cambió nada" in page
    finally:
        server.stop()
        ctx.dispose()
    assert subscriber(ctx, "carla@importadora.example").status == UNSUBSCRIBED


# --- mail commands in the body, both languages; DKIM on control mail ------------------------------


def test_subscribe_by_a_body_command_in_both_languages_signed(sqlite_url, config_factory, dkim_key_file):
    config = csms_config(config_factory, sqlite_url, dkim_key_file=str(dkim_key_file))
    ctx = context(config)
    ingest(ctx, request_mail("subscribe", sender="jo@broker.example", body="ACE\r\nACH Refunds\r\n\r\nThanks, Jo"))
    ingest(ctx, request_mail("Hola", sender="carla@importadora.example", body="suscribir\r\nCargo Release; ACE\r\n"))
    ingest(ctx, request_mail("", sender="dan@carrier.example", body="ayuda\r\n"))
    run_stages(ctx)
    with ctx.sessions() as session:
        rows = list(session.scalars(select(OutboxMessage).order_by(OutboxMessage.id)
                                    .options(undefer(OutboxMessage.raw))))
    record = keys.dkim_key(config).public_record()
    to_jo, to_carla, to_dan = (message_from_bytes(r.raw, policy=policy.default) for r in rows)
    assert "ACE" in to_jo.get_content() and "ACH Refunds" in to_jo.get_content()
    assert to_carla["Subject"].startswith("CSMS: confirmar ") and "Cargo Release" in to_carla.get_content()
    assert to_dan["Subject"] == "CSMS: cómo suscribirse" and "Partner Government Agencies" in to_dan.get_content()
    assert all(csms_dkim.verify(r.raw, record) for r in rows)
    # Confirming by the link subscribes Carla to what she named.
    token = re.search(r"confirmar (\S+)$", to_carla["Subject"]).group(1)
    ingest(ctx, request_mail(f"Re: {to_carla['Subject']}", sender="carla@importadora.example"))
    run_stages(ctx)
    assert topics_of(ctx, "carla@importadora.example") == ["ACE", "Cargo Release"] and token
    assert subscriber(ctx, "carla@importadora.example").language == "es"
    ctx.dispose()


# --- deliverability ---------------------------------------------------------------------------


def test_notices_are_dkim_signed_over_the_one_click_headers(sqlite_url, config_factory, smtp_capture, dkim_key_file):
    config = csms_config(config_factory, sqlite_url, smtp_capture.port, dkim_key_file=str(dkim_key_file),
                         dkim_selector="csms2026")
    ctx = context(config)
    with transaction_(ctx) as session:
        subscribers.subscribe(session, "jo@broker.example", ["ACE"], "en")
        subscribers.subscribe(session, "carla@importadora.example", ["ACE"], "es")
    add_notice(ctx, "Signed notice", ["ACE"], at=utcnow())
    daemon = BackgroundComponent(Together(*csms_runner.make_components(ctx))).start()
    try:
        got = smtp_capture.handler.wait_for(2)
    finally:
        daemon.stop()
        ctx.dispose()
    record = keys.dkim_key(config).public_record()
    for captured in got:
        raw = captured.data  # the bytes as the relay received them
        signature = captured.message["DKIM-Signature"]
        tags = dict(t.strip().split("=", 1) for t in re.sub(r"\s+", " ", str(signature)).split(";") if "=" in t)
        signed = tags["h"].replace(" ", "").split(":")
        assert {"from", "subject", "list-unsubscribe", "list-unsubscribe-post", "list-id"} <= set(signed)
        assert tags["d"] == "ace-support.example" and tags["s"] == "csms2026"
        assert csms_dkim.verify(raw, record)  # dkimpy, the key served to it directly (no DNS)
        # Changing the one-click header breaks the signature: it really covers it.
        tampered = raw.replace(b"List-Unsubscribe-Post: List-Unsubscribe=One-Click",
                               b"List-Unsubscribe-Post: List-Unsubscribe=Two-Clicks")
        assert not csms_dkim.verify(tampered, record)


NON_DSN_BOUNCE = (
    "From: MAILER-DAEMON@mx.example.org\r\nTo: {to}\r\nSubject: failure notice\r\n"
    "Message-ID: <qmail-{n}@mx.example.org>\r\n\r\n"
    "Hi. This is the qmail-send program at mx.example.org.\r\n"
    "I'm afraid I wasn't able to deliver your message to the following addresses.\r\n"
    "This is a permanent error; I've given up. Sorry it didn't work out.\r\n\r\n"
    "<{rcpt}>:\r\nSorry, no mailbox here by that name. (#5.1.1)\r\n\r\n"
    "--- Below this line is a copy of the message.\r\n\r\nSubject: CSMS# 1 - x\r\n\r\nhello\r\n")

ARF = (
    "From: feedback@fbl.mailbox.example\r\nTo: {to}\r\nSubject: Abuse report\r\n"
    "Message-ID: <arf-{n}@fbl.mailbox.example>\r\nMIME-Version: 1.0\r\n"
    'Content-Type: multipart/report; report-type=feedback-report; boundary="R"\r\n\r\n'
    "--R\r\nContent-Type: text/plain\r\n\r\nA user marked this message as spam.\r\n"
    "--R\r\nContent-Type: message/feedback-report\r\n\r\n"
    "Feedback-Type: abuse\r\nUser-Agent: ExampleFBL/1.0\r\nVersion: 1\r\nOriginal-Rcpt-To: redacted@example\r\n\r\n"
    "--R\r\nContent-Type: message/rfc822\r\n\r\n"
    "From: CBP CSMS <csms@ace-support.example>\r\nTo: redacted\r\nSubject: CSMS# 67800001 - x\r\n"
    "List-Unsubscribe: <mailto:csms-request@ace-support.example?subject=unsubscribe%20{token}>,\r\n"
    " <https://csms.example.gov/u/{token}>\r\n\r\nbody\r\n--R--\r\n")


def test_non_dsn_bounces_count_and_arf_complaints_unsubscribe(sqlite_url, config_factory):
    config = csms_config(config_factory, sqlite_url, bounce_threshold=2)
    ctx = context(config)
    with transaction_(ctx) as session:
        ana = subscribers.subscribe(session, "ana@carrier.example", ["ACE"], "en").id
        bob = subscribers.subscribe(session, "bob@carrier.example", ["ACE", "Manifest"], "en").id
    signer = load_signer(config)
    for n in range(2):
        verp = signer.verp_local("csms-bounces", ana, 67800001 + n) + "@ace-support.example"
        ingest(ctx, NON_DSN_BOUNCE.format(to=verp, rcpt="ana@carrier.example", n=n).encode(), verp, envelope_from="")
    # A complaint names Bob by the signed token in the reported copy; a forged one names nobody.
    token = signer.make(UNSUBSCRIBE, bob, 3600)
    ingest(ctx, ARF.format(to="csms-bounces@ace-support.example", token=token, n=1).encode(),
           "csms-bounces@ace-support.example", envelope_from="")
    forged = Signer(b"someone-elses-secret-0123456789").make(UNSUBSCRIBE, ana, 3600)
    ingest(ctx, ARF.format(to=REQUEST, token=forged, n=2).encode(), REQUEST, envelope_from="")
    run_stages(ctx)
    with ctx.sessions() as session:
        events = list(session.execute(select(BounceEvent.subscriber_id, BounceEvent.kind, BounceEvent.source)
                                      .order_by(BounceEvent.id)))
    assert events == [(ana, "hard", "nondsn"), (ana, "hard", "nondsn"), (bob, "complaint", "arf")]
    assert subscriber(ctx, "ana@carrier.example").status == "disabled"
    assert subscriber(ctx, "bob@carrier.example").status == UNSUBSCRIBED
    ctx.dispose()


# --- secrets: rotation keeps old links working; forgeries fail -------------------------------------


def test_rotated_out_secret_still_accepted_forged_refused(sqlite_url, config_factory, capsys, tmp_path):
    config = csms_config(config_factory, sqlite_url)
    ctx = context(config)
    with transaction_(ctx) as session:
        sid = subscribers.subscribe(session, "ana@carrier.example", ["ACE"], "en").id
    before = load_signer(config)
    old_link = before.make(UNSUBSCRIBE, sid, 3600)
    old_verp = before.verp_local("csms-bounces", sid, 67800001) + "@ace-support.example"
    path, new_kid, kept = keys.rotate(config, keep=1)
    after = load_signer(config)
    assert after.kid == new_kid != before.kid and kept == [before.kid] and path == keys.secret_path(config)
    assert after.check(UNSUBSCRIBE, old_link) == sid and after.parse_verp(old_verp) == (sid, 67800001)
    new_link = after.make(UNSUBSCRIBE, sid, 3600)
    with pytest.raises(BadToken, match="forged"):
        before.check(UNSUBSCRIBE, new_link)  # an instance that never saw the new secret
    payload, mac = new_link.split(".")
    with pytest.raises(BadToken, match="forged"):
        after.check(UNSUBSCRIBE, f"{payload}.{mac[::-1]}")
    with pytest.raises(BadToken, match="another purpose"):
        after.check(CONFIRM, new_link)
    # Rotating again with --keep 1 drops the oldest: its links stop working.
    keys.rotate(config, keep=1)
    with pytest.raises(BadToken):
        load_signer(config).check(UNSUBSCRIBE, old_link)
    # The command line, and PostgreSQL refusing an unconfigured secret.
    from daemon.config import ConfigError, config_from_dict
    pg = config_from_dict({"database": {"url": "postgresql+psycopg://x@127.0.0.1/none"},
                           "daemon": {"state_dir": str(tmp_path / "pg")}}, base_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="required with PostgreSQL"):
        keys.load_signer(pg)
    ctx.dispose()


# --- the archive is served where its links point ---------------------------------------------


def test_archive_and_atom_links_are_served_with_search(sqlite_url, config_factory, smtp_capture):
    config = csms_config(config_factory, sqlite_url, smtp_capture.port)
    ctx = context(config)
    with transaction_(ctx) as session:
        subscribers.subscribe(session, "jo@broker.example", ["ACE"], "en")
        subscribers.subscribe(session, "carla@importadora.example", ["ACE"], "es")
        original = service.create_notice(session, title="ACE maintenance window", type="INFORMATION",
                                         body="The **Portal** is down on Sunday for upgrades.", topics=["ACE"],
                                         scheduled_at=utcnow())
        service.create_notice(session, title="Mantenimiento de ACE", type="INFORMATION", language="es",
                              body="El Portal no estará disponible el domingo.", topics=["ACE"],
                              translation_of=original)
    daemon = BackgroundComponent(Together(*csms_runner.make_components(ctx), *web_components(ctx))).start()
    try:
        smtp_capture.handler.wait_for(2)
        wait_for_port(config.web.host_port()[1])
        base = config.csms.base_url + "/archive"
        wait_until(lambda: web("GET", base + "/atom.xml")[0] == 200, what="the feed")
        status, feed = web("GET", base + "/atom.xml")
        links = re.findall(r'<link[^>]*href="([^"]+)"', feed)
        assert len(links) == 4 and all(link.startswith(base + "/") for link in links)
        for link in links:
            assert web("GET", link)[0] == 200, link
        status, page = web("GET", base + "/")
        assert status == 200 and "Mantenimiento de ACE" in page and "ACE maintenance window" in page
        number = notice(ctx, original.id).number
        for query, expect in ((str(number), "ACE maintenance window"), ("domingo", "Mantenimiento de ACE"),
                              ("upgrades sunday", "ACE maintenance window")):
            status, page = web("GET", f"{base}/search?q={query.replace(' ', '+')}")
            assert status == 200 and expect in page and "1 notice(s) found" in page, query
        assert web("GET", base + "/../csms.secret")[0] == 404
    finally:
        daemon.stop()
        ctx.dispose()
