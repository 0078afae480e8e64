"""Responders: the screening predicate, sender verification (forged
Authentication-Results, display-name and lookalike spoofing, someone else's
UserID), the policy, safe rendering (template and header injection),
tickets and follow-ups, the per-recipient cap, users import, the triage queue
CLI and ``acedesk triage --json`` -- on SQLite and PostgreSQL.

Helpers here are shared by ``test_responders_e2e.py`` and ``test_outbox.py``.
"""

from __future__ import annotations

import dataclasses
import json
from email import message_from_bytes, policy
from pathlib import Path

import pytest
from sqlalchemy import func, select

from classifiers.language import detect_language
from daemon.config import PipelineConfig
from daemon.context import AppContext
from daemon.intake.parse import parse_message
from daemon.stages.parse import make_stage as make_parse_stage
from daemon.stages.respond import make_stage as make_respond_stage
from daemon.intake.store import NewMessage, insert_messages
from daemon.worker import Stage, drain
from models.core import CLASSIFIED, DONE, PARSED, SCREENED, InboundMessage
from models.outbox import OutboxMessage
from models.responders import AutoReplyLog, ResponseRecord, Ticket, TicketMessage, TriageItem, User
from models.session import make_sessionmaker, transaction
from responders.msgid import check_message_id, make_message_id
from responders.render import Renderer, build_reply
from responders.screen import DROP, NO_REPLY, OK, ScreenContext, screen
from responders.service import DeskInfo, Responder
from responders.settings import ResponderConfig
from responders.users import parse_users_csv, upsert_users
from responders.verify import Directory

DESK = "helpdesk@ace-support.example"
TRUSTED = "mx.ace-support.example"
SECRET = b"0123456789abcdef0123456789abcdef"

USERS_CSV = """user_id,email,name,role,identifier,account_owner_email,language
ALICE01,alice@broker.example,Alice Broker,broker,K4M,owner@broker.example,en
BOB02,bob@carrier.example,Bob Carrier,carrier,ABCD,bob@carrier.example,en
CARLA03,carla@importadora.example,Carla Importadora,importer,12-3456789,carla@importadora.example,es
"""

# What the stub classifier says for a subject keyword (the real model is the classifier's work).
LABELS = {
    "password": ("password_reset", 0.95),
    "contraseña": ("password_reset", 0.95),
    "locked": ("account_locked", 0.95),
    "aesdirect": ("export_aesdirect", 0.93),
    "refund": ("ach_refund", 0.91),
    "vague": ("account_setup", 0.30),
    "hello": ("other", 0.80),
}


def mail(subject: str = "Forgot my password", body: str = "I forgot my ACE password, please help.",
         sender: str = "alice@broker.example", name: str = "Alice Broker", ar: str | None = "pass",
         authserv: str = TRUSTED, extra: str = "", msgid: str | None = None, to: str = DESK) -> bytes:
    """Return a help-desk message as our border left it: ``ar`` adds its Authentication-Results
    (pass/fail/None) above the border's Received line; ``extra`` headers come below it, with the message."""
    domain = sender.rpartition("@")[2]
    head = ""
    if ar:
        head += f"Authentication-Results: {authserv}; dmarc={ar} header.from={domain}; spf={ar} smtp.mailfrom={sender}\r\n"
    head += (f"Received: from relay.{domain} (relay.{domain} [192.0.2.25])\r\n\tby {TRUSTED} (Postfix) with ESMTPS "
             "id 4Q1; Sun, 22 Nov 2026 08:00:01 +0000\r\n")
    head += extra
    msgid = msgid or f"<{abs(hash((subject, body, sender, extra, ar, authserv)))}@{domain}>"
    head += (f"From: {name} <{sender}>\r\nTo: {to}\r\nSubject: {subject}\r\n"
             f"Date: Sun, 22 Nov 2026 08:00:00 +0000\r\nMessage-ID: {msgid}\r\n"
             "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n")
    return (head + body + "\r\n").encode()


def stub_classify(session, rows) -> None:
    """Set what the classifier would (label, confidence, auto, language), from subject keywords."""
    from models.parsed import ParsedMessage

    for row in rows:
        msg = ParsedMessage.from_dict(row.parsed)
        label, conf = next(((lab, c) for key, (lab, c) in LABELS.items() if key in msg.subject.lower()),
                           ("other", 0.5))
        row.label, row.confidence, row.auto = label, conf, conf >= 0.6
        row.language = detect_language(msg.classifier_text,
                                       default="es" if row.desk.startswith("ayuda") else "en")
        row.state = CLASSIFIED


def stages(ctx: AppContext) -> list[Stage]:
    """The pipeline table's stages, with the stub classifier in place of the model."""
    respond = make_respond_stage(ctx)
    return [make_parse_stage(ctx), Stage("classify-stub", PARSED, stub_classify), respond,
            dataclasses.replace(respond, consumes=SCREENED)]


def import_users(sessions, text: str = USERS_CSV) -> None:
    rows, errors = parse_users_csv(text)
    assert not errors
    with transaction(sessions) as s:
        upsert_users(s, [r for _, r in rows])


def ingest(sessions, *raws: bytes, desk: str = DESK) -> None:
    with transaction(sessions) as s:
        insert_messages(s, [NewMessage(desk, "cli", raw) for raw in raws])


def make_ctx(config, engine) -> AppContext:
    return AppContext(config=config, engine=engine, sessions=make_sessionmaker(engine), instance="test")


def responder(**cfg) -> Responder:
    return Responder(cfg=ResponderConfig(**cfg), desk=DeskInfo(DESK, frozenset({DESK, "ayuda@ace-support.example"}),
                                                              frozenset({"ayuda@ace-support.example"}),
                                                              "csms-request@ace-support.example"),
                     secret=SECRET)


DIRECTORY = Directory(users=tuple(r for _, r in parse_users_csv(USERS_CSV)[0]),
                      domains=frozenset({"broker.example", "carrier.example", "importadora.example"}))


def triage(raw: bytes, label: str = "password_reset", confidence: float = 0.95, directory: Directory = DIRECTORY,
           language: str | None = "en") -> dict:
    """Dry-run one message against the test directory (no database)."""
    r = responder()
    msg = parse_message(raw)

    class _Fixed:
        pass
    from responders import service
    original = service.load_directory
    try:
        return _dry(r, msg, label, confidence, directory, language)
    finally:
        service.load_directory = original


def _dry(r: Responder, msg, label, confidence, directory, language) -> dict:
    from responders.service import plan, render

    p = plan(r, msg, label=label, confidence=confidence, auto=confidence >= 0.6, language=language or "en",
             directory=directory, recent_autoreplies=0, followup=False)
    out = {"screen": p.screen.reason, "verification": p.verification.to_dict(), "action": p.decision.to_dict()}
    if p.decision.template and p.decision.to:
        reply = render(r, msg, p, "ACE-2026-000001")
        out["reply"] = reply
    return out


# --- screening: one predicate ------------------------------------------------------------------

SCREEN_CTX = ScreenContext(own_addresses=frozenset({DESK, "csms@ace-support.example"}),
                           domain="ace-support.example", secret=SECRET)


@pytest.mark.parametrize("extra, sender, return_path, verdict, reason", [
    ("", "alice@broker.example", None, OK, None),
    ("Auto-Submitted: no\r\n", "alice@broker.example", None, OK, None),
    ("Auto-Submitted: auto-replied (vacation)\r\n", "alice@broker.example", None, DROP, "auto_submitted:auto-replied"),
    ("Auto-Submitted: auto-generated\r\n", "alice@broker.example", None, DROP, "auto_submitted:auto-generated"),
    ("X-Autoreply: yes\r\n", "alice@broker.example", None, DROP, "x_autoreply"),
    ("X-Auto-Response-Suppress: All\r\n", "alice@broker.example", None, DROP, "x_auto_response_suppress"),
    ("Precedence: bulk\r\n", "alice@broker.example", None, DROP, "precedence:bulk"),
    ("Precedence: auto_reply\r\n", "alice@broker.example", None, DROP, "precedence:auto_reply"),
    ("List-Id: <trade.lists.example>\r\n", "alice@broker.example", None, DROP, "mailing_list"),
    ("List-Unsubscribe: <mailto:u@lists.example>\r\n", "alice@broker.example", None, DROP, "mailing_list"),
    ("", "alice@broker.example", "", DROP, "null_return_path"),
    ("", "MAILER-DAEMON@mx.broker.example", None, DROP, "mailer_daemon"),
    ("", "postmaster@broker.example", None, DROP, "mailer_daemon"),
    ("", DESK, None, DROP, "own_address"),
])
def test_screen_recognises_automatic_mail_and_records_why(extra, sender, return_path, verdict, reason):
    msg = parse_message(mail(sender=sender, extra=extra), return_path)
    result = screen(msg, SCREEN_CTX)
    assert result.verdict == verdict
    assert result.reason == reason


def test_screen_delivery_report_is_dropped():
    raw = (b"From: MAILER-DAEMON@mx.example\r\nTo: helpdesk@ace-support.example\r\nSubject: Undelivered\r\n"
           b"Message-ID: <dsn1@mx.example>\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: multipart/report; report-type=delivery-status; boundary=XX\r\n\r\n"
           b"--XX\r\nContent-Type: text/plain\r\n\r\nfailed\r\n--XX\r\nContent-Type: message/delivery-status\r\n\r\n"
           b"Reporting-MTA: dns; mx.example\r\n\r\nFinal-Recipient: rfc822; x@y\r\nAction: failed\r\nStatus: 5.1.1\r\n"
           b"--XX--\r\n")
    result = screen(parse_message(raw, "mailer-daemon@mx.example"), SCREEN_CTX)
    assert result.verdict == DROP and "delivery_report" in result.reasons


def test_screen_replies_to_our_signed_ids_and_the_cap():
    ours = make_message_id(SECRET, "ACE-2026-000007", "alice@broker.example", "ace-support.example")
    reply = parse_message(mail(extra=f"In-Reply-To: {ours}\r\nReferences: {ours}\r\n"))
    result = screen(reply, SCREEN_CTX)
    assert result.verdict == NO_REPLY and result.reasons == ("reply_to_our_autoreply",)
    assert result.our_ticket == "ACE-2026-000007"
    # The same ID from someone else does not verify: no threading into Alice's ticket.
    other = parse_message(mail(sender="mallory@evil.example", extra=f"In-Reply-To: {ours}\r\n"))
    assert screen(other, SCREEN_CTX).our_ticket is None
    assert check_message_id(b"another-secret-entirely-00000000", ours, ["alice@broker.example"]) is None
    # Our own message coming back is dropped.
    echo = parse_message(mail(msgid=ours))
    assert screen(echo, SCREEN_CTX).verdict == DROP
    capped = ScreenContext(SCREEN_CTX.own_addresses, SCREEN_CTX.domain, SECRET, recent_autoreplies=5, autoreply_max=5)
    assert screen(parse_message(mail()), capped).reasons == ("rate_limited",)


# --- verification ----------------------------------------------------------------------------


def test_verified_sender_gets_the_account_answer_at_the_address_on_file():
    out = triage(mail())
    assert out["verification"]["status"] == "verified" and out["verification"]["user_id"] == "ALICE01"
    assert out["action"]["kind"] == "reply" and out["action"]["template"] == "password_reset"
    assert out["action"]["to"] == "alice@broker.example"
    assert "Forgot Your Password?" in out["reply"].text and "Challenge Questions" in out["reply"].text
    assert out["reply"].text.startswith("Hello Alice Broker,")


@pytest.mark.parametrize("raw, why", [
    (mail(ar=None), "no_usable_authentication_results"),
    (mail(authserv="mx.evil.example"), "no_usable_authentication_results"),
    # A trusted-looking header that came with the message (below our border's line): a forgery.
    (mail(ar=None, extra="Authentication-Results: mx.relay.example; none\r\n"
                          f"Authentication-Results: {TRUSTED}; dmarc=pass header.from=broker.example\r\n"),
     "forged_authentication_results"),
    # Ours says fail; a forged pass below our border's line claiming our id: ignored.
    (mail(ar="fail", extra=f"Authentication-Results: {TRUSTED}; dmarc=pass header.from=broker.example\r\n"),
     "forged_authentication_results"),
])
def test_forged_authentication_results_never_verify(raw, why):
    out = triage(raw)
    assert out["verification"]["status"] == "unauthenticated"
    assert any(why in r for r in out["verification"]["reasons"])
    assert out["action"]["template"] == "security_neutral"
    assert "Challenge Questions" not in out["reply"].text and "Alice" not in out["reply"].text


def test_display_name_spoofing_is_impersonation():
    out = triage(mail(sender="mallory@evil.example", name='"alice@broker.example"', ar="pass"))
    v = out["verification"]
    assert v["status"] == "unknown" and v["impersonation"]
    assert out["action"]["kind"] == "triage" and out["action"]["security"]
    assert out["action"]["template"] == "security_neutral"
    assert out["action"]["to"] == "mallory@evil.example"


def test_lookalike_domain_and_reply_to_never_verify():
    out = triage(mail(sender="alice@br0ker.example", ar="pass",
                      extra="Reply-To: alice@broker.example\r\n"))
    v = out["verification"]
    assert v["status"] == "unknown" and v["impersonation"]
    assert any("lookalike" in r for r in v["reasons"])
    assert out["action"]["to"] == "alice@br0ker.example"   # never the Reply-To
    out = triage(mail(ar="pass", extra="Reply-To: mallory@evil.example\r\n"))
    assert out["action"]["to"] == "alice@broker.example"


def test_someone_elses_user_id_is_a_mismatch():
    raw = mail(sender="bob@carrier.example", name="Bob", body="Please unlock UserID ALICE01, it is locked.",
               subject="Account locked")
    out = triage(raw, label="account_locked")
    assert out["verification"]["status"] == "mismatch"
    assert out["action"]["kind"] == "triage" and out["action"]["security"]
    assert out["action"]["template"] == "security_neutral" and out["action"]["to"] == "bob@carrier.example"
    assert "ALICE01" not in out["reply"].text
    # Another user's identifier (Alice's filer code) is a mismatch too; one's own is fine.
    assert triage(mail(sender="bob@carrier.example", body="Our filer code is K4M"))["verification"]["status"] \
        == "mismatch"
    assert triage(mail(body="Our filer code is K4M, UserID ALICE01"))["verification"]["status"] == "verified"


def test_unknown_sender_gets_general_guidance_but_nothing_about_accounts():
    out = triage(mail(sender="dan@new.example", subject="AESDirect error", body="AES error"), label="export_aesdirect")
    assert out["verification"]["status"] == "unknown"
    assert out["action"]["kind"] == "reply" and out["action"]["template"] == "export_aesdirect"
    assert "(800) 549-0595" in out["reply"].text
    out = triage(mail(sender="dan@new.example"), label="password_reset")
    assert out["action"]["kind"] == "ticket" and out["action"]["template"] == "security_neutral"


def test_low_confidence_goes_to_triage_and_drop_for_screened():
    out = triage(mail(), label="password_reset", confidence=0.3)
    assert out["action"]["kind"] == "triage" and out["action"]["template"] == "ticket_ack"
    out = triage(mail(extra="Auto-Submitted: auto-replied\r\n"))
    assert out["action"]["kind"] == "drop" and out["screen"] == "auto_submitted:auto-replied"


# --- rendering safety ---------------------------------------------------------------------


def test_template_injection_stays_literal_and_html_is_escaped():
    raw = mail(subject="AESDirect {{ 7*7 }} <script>x</script>", body="{{ 7*7 }} {% for x in y %}")
    out = triage(raw, label="export_aesdirect")
    reply = out["reply"]
    assert "{{ 7*7 }}" in reply.text and "AESDirect 49" not in reply.text
    assert "&lt;script&gt;" in reply.html and "<script>" not in reply.html
    parsed = message_from_bytes(reply.raw, policy=policy.default)
    assert parsed["Subject"] == "Re: AESDirect {{ 7*7 }} <script>x</script> [ACE-2026-000001]"


def test_header_injection_is_impossible():
    reply = build_reply(Renderer(), template="ticket_ack", language="en", to="alice@broker.example",
                        from_address=DESK, from_name="ACE\r\nBcc: x@evil.example", subject="hi\r\nBcc: victim@evil.example",
                        ticket="ACE-2026-000002", secret=SECRET, in_reply_to="<a@b>\r\nBcc: v@evil.example",
                        references=["<ok@x>", "<bad@x>\nBcc: y@evil.example"],
                        context={"name": "", "subject": "x\r\nBcc: z", "csms_address": "", "target_hours": "4"})
    head = reply.raw.split(b"\r\n\r\n", 1)[0]
    assert b"\r\nBcc:" not in head and b"\nBcc:" not in head
    parsed = message_from_bytes(reply.raw, policy=policy.default)
    assert parsed["Bcc"] is None
    assert parsed["Subject"] == "hi Bcc: victim@evil.example"
    assert parsed["In-Reply-To"] is None and parsed["References"] == "<ok@x>"
    with pytest.raises(Exception):
        build_reply(Renderer(), template="ticket_ack", language="en", to="a@b.example\r\nBcc: c@d", from_address=DESK,
                    from_name="x", subject="s", ticket="T", secret=SECRET, in_reply_to=None, references=[],
                    context={"name": "", "subject": "", "csms_address": "", "target_hours": "4"})
    # CR/LF smuggled through an encoded word in a real message ends on one line too.
    raw = mail(subject="=?utf-8?q?AESDirect=0D=0ABcc=3A_victim=40evil=2Eexample?=")
    out = triage(raw, label="export_aesdirect")
    assert b"\r\nBcc:" not in out["reply"].raw.split(b"\r\n\r\n", 1)[0]


def test_reply_headers_thread_and_mark_automatic():
    raw = mail(extra="References: <older@broker.example>\r\n", msgid="<orig-1@broker.example>")
    reply = triage(raw)["reply"]
    m = message_from_bytes(reply.raw, policy=policy.default)
    assert m["In-Reply-To"] == "<orig-1@broker.example>"
    assert m["References"] == "<older@broker.example> <orig-1@broker.example>"
    assert m["Auto-Submitted"] == "auto-replied" and m["X-Auto-Response-Suppress"] == "All"
    assert m["Subject"] == "Re: Forgot my password [ACE-2026-000001]"
    assert check_message_id(SECRET, m["Message-ID"], ["alice@broker.example"]).ticket == "ACE-2026-000001"
    assert m.get_body(("html",)) is not None and m.get_body(("plain",)) is not None


def test_every_label_has_templates_in_both_languages_faithful_to_the_seeds():
    from classifiers.labels import LABELS as ALL

    r = Renderer()
    ctx = {"name": "", "subject": "s", "csms_address": "csms-request@ace-support.example", "target_hours": "4",
           "ticket": "ACE-2026-000003"}
    texts = {}
    for lang in ("en", "es"):
        for name in (*ALL, "ticket_ack", "security_neutral"):
            text, html = r.bodies(name, lang, ctx)
            assert "ACE-2026-000003" in text and "<html" in html
            texts[(lang, name)] = text
        assert "24" in texts[(lang, "ticket_ack")]
    en = texts
    assert "Proxy Account Owner" in en[("en", "account_locked")] and "Proxy Account Owner" in en[("es", "account_locked")]
    assert "(800) 549-0595" in en[("en", "export_aesdirect")] and "(800) 549-0595" in en[("es", "export_aesdirect")]
    assert "System Control Officer (SCO)" in en[("en", "pga_access")]
    assert "vendor" in en[("en", "third_party_software")] and "proveedor" in en[("es", "third_party_software")]
    assert "Availability Dashboard" in en[("en", "system_status")] and "Outages Guidelines" in en[("es", "system_status")]
    # The links themselves are knowledge articles now (responders.articles; test_duties).
    assert "ACH Refunds FAQs" in en[("en", "ach_refund")]
    assert "4811" in en[("en", "notify_party")] and "4811" in en[("es", "notify_party")]
    assert "Saturday 10 PM to Sunday 5 AM ET" in en[("en", "other")]
    assert "sábado a las 10 p. m. al domingo a las 5 a. m." in en[("es", "other")]
    steps = en[("en", "password_reset")]
    assert all(f"{i}. " in steps for i in range(1, 6)) and "case-sensitive" in steps


# --- the stage over the database --------------------------------------------------------------


def test_stage_writes_ticket_outbox_and_record_atomically_once(sessions, engine, config_factory):
    config = config_factory(str(engine.url.render_as_string(hide_password=False)))
    ctx = make_ctx(config, engine)
    import_users(sessions)
    ingest(sessions, mail(), mail(subject="hello", body="thanks!", sender="dan@new.example", ar=None),
           mail(subject="AESDirect", sender="dan@new.example", ar=None, body="AES error"),
           mail(subject="Out of office", extra="Auto-Submitted: auto-replied\r\n"))
    drain(sessions, stages(ctx), PipelineConfig())
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(InboundMessage).where(InboundMessage.state == DONE)) == 4
        out = list(s.scalars(select(OutboxMessage).order_by(OutboxMessage.id)))
        assert [o.template for o in out] == ["password_reset", "export_aesdirect"]
        records = {r.action for r in s.scalars(select(ResponseRecord))}
        assert records == {"reply", "triage", "drop"}
        dropped = s.scalars(select(ResponseRecord).where(ResponseRecord.action == "drop")).one()
        assert dropped.screen == "auto_submitted:auto-replied"
        tickets = list(s.scalars(select(Ticket).order_by(Ticket.id)))
        assert len(tickets) == 3 and all(t.number.startswith("ACE-2026-") or t.number.startswith("ACE-")
                                         for t in tickets)
        assert tickets[0].status == "answered" and tickets[0].verification == "verified"
        assert s.scalar(select(func.count()).select_from(TriageItem)) == 1
    # Nothing is answered twice: the rows are done, and the outbox key is unique.
    drain(sessions, stages(ctx), PipelineConfig())
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(OutboxMessage)) == 2


def test_follow_ups_thread_into_their_ticket(sessions, engine, config_factory):
    config = config_factory(engine.url.render_as_string(hide_password=False))
    ctx = make_ctx(config, engine)
    import_users(sessions)
    ingest(sessions, mail(msgid="<first@broker.example>"))
    drain(sessions, stages(ctx), PipelineConfig())
    with sessions() as s:
        first = s.scalars(select(OutboxMessage)).one()
        number = s.scalars(select(Ticket)).one().number
    # By In-Reply-To our signed ID, and by the number in the subject: same ticket, no new answer.
    ingest(sessions, mail(subject="Re: Forgot my password", body="Still cannot log in.",
                          extra=f"In-Reply-To: {first.message_id}\r\n"),
           mail(subject=f"password again [{number}]", body="any news?"),
           # Someone else quoting the number gets a ticket of their own, flagged for security.
           mail(subject=f"password [{number}]", sender="dan@new.example", ar=None, body="me too"))
    drain(sessions, stages(ctx), PipelineConfig())
    with sessions() as s:
        tickets = list(s.scalars(select(Ticket).order_by(Ticket.id)))
        assert len(tickets) == 2 and tickets[0].status == "open"
        assert s.scalar(select(func.count()).select_from(TicketMessage)
                        .where(TicketMessage.ticket_id == tickets[0].id, TicketMessage.direction == "in")) == 3
        follow = list(s.scalars(select(TriageItem).where(TriageItem.reason == "followup")))
        assert len(follow) == 2
        dans = s.scalars(select(TriageItem).where(TriageItem.ticket_id == tickets[1].id)).one()
        assert dans.security and tickets[1].requester == "dan@new.example"
        record = s.scalars(select(ResponseRecord).where(ResponseRecord.ticket_id == tickets[1].id)).one()
        assert f"quotes ticket {number} of another requester" in " ".join(record.reasons or [])
        # Nothing about alice's case goes to dan: at most the reply that discloses nothing.
        to_dan = list(s.scalars(select(OutboxMessage).where(OutboxMessage.ticket_id == tickets[1].id)))
        assert all(o.template == "security_neutral" for o in to_dan)


def test_per_recipient_cap_stops_storms(sessions, engine, config_factory):
    config = config_factory(engine.url.render_as_string(hide_password=False), responders={"autoreply_max": 2})
    ctx = make_ctx(config, engine)
    ingest(sessions, *[mail(subject=f"AESDirect {i}", sender="loop@robot.example", ar=None) for i in range(5)])
    drain(sessions, stages(ctx), PipelineConfig())
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(OutboxMessage)) == 2
        assert s.scalar(select(func.count()).select_from(AutoReplyLog)) == 2
        capped = list(s.scalars(select(ResponseRecord).where(ResponseRecord.screen == "rate_limited")))
        assert len(capped) == 3 and all(r.action == "ticket" for r in capped)


def test_priority_raised_for_urgent_verified(sessions, engine, config_factory):
    config = config_factory(engine.url.render_as_string(hide_password=False))
    ctx = make_ctx(config, engine)
    import_users(sessions)
    ingest(sessions, mail(subject="URGENT password", body="urgent: cargo waiting"),
           mail(subject="urgent password", sender="dan@new.example", ar=None))
    drain(sessions, stages(ctx), PipelineConfig())
    with sessions() as s:
        prio = {t.requester: t.priority for t in s.scalars(select(Ticket))}
    assert prio == {"alice@broker.example": "high", "dan@new.example": "normal"}


# --- CLI: users import, queue, triage --json ---------------------------------------------------


def _cli(tmp_path: Path, db_url: str, *args: str, capsys=None) -> tuple[int, str, str]:
    from daemon.cli.main import main

    cfg = tmp_path / "config.toml"
    if not cfg.exists():
        cfg.write_text(f'[database]\nurl = "{db_url}"\n[daemon]\nstate_dir = "{tmp_path}/var"\n'
                       f'[outbound]\nspool_dir = "{tmp_path}/spool"\n')
    code = main(["--config", str(cfg), *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_users_import_updates_never_duplicates_and_reports_bad_lines(tmp_path, engine, sessions, capsys):
    url = engine.url.render_as_string(hide_password=False)
    f = tmp_path / "users.csv"
    f.write_text(USERS_CSV)
    assert _cli(tmp_path, url, "users", "import", str(f), capsys=capsys)[0] == 0
    f.write_text(USERS_CSV.replace("Alice Broker", "Alice B. Broker")
                 + "DAN04,not-an-address,Dan,importer,,,en\nBOB02,x@y.example,dup,,,,en\nEVE05,eve@e.example,Eve,,,,fr\n")
    code, out, err = _cli(tmp_path, url, "users", "import", str(f), capsys=capsys)
    assert code == 1
    assert "1 updated" in out and "3 rejected" in out
    assert ":5:" in err and "not an e-mail" in err and ":6:" in err and "repeats line 3" in err and ":7:" in err
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(User)) == 3
        assert s.scalars(select(User).where(User.user_id == "ALICE01")).one().name == "Alice B. Broker"


def test_queue_cli_list_show_relabel_approve_reply_close(tmp_path, engine, sessions, capsys, config_factory):
    url = engine.url.render_as_string(hide_password=False)
    ctx = make_ctx(config_factory(url), engine)
    import_users(sessions)
    ingest(sessions, mail(subject="vague question", body="How do I get started?"),
           mail(subject="hello", sender="dan@new.example", ar=None, body="thanks"))
    drain(sessions, stages(ctx), PipelineConfig())
    code, out, _ = _cli(tmp_path, url, "queue", "list", "--json", capsys=capsys)
    items = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and len(items) == 2
    first, second = items[0]["id"], items[1]["id"]
    code, out, _ = _cli(tmp_path, url, "queue", "show", str(first), capsys=capsys)
    assert code == 0 and "ACE-" in out and "verification" in out
    code, out, _ = _cli(tmp_path, url, "queue", "relabel", str(first), "account_setup", capsys=capsys)
    assert code == 0
    code, out, _ = _cli(tmp_path, url, "queue", "approve", str(first), capsys=capsys)
    assert code == 0 and "account_setup" in out
    code, out, err = _cli(tmp_path, url, "queue", "approve", str(first), capsys=capsys)
    assert code == 2 and "already approved" in err
    code, out, _ = _cli(tmp_path, url, "queue", "reply", str(second), "--text", "You are welcome {{ 7*7 }}",
                        capsys=capsys)
    assert code == 0
    with sessions() as s:
        analyst = s.scalars(select(OutboxMessage).where(OutboxMessage.inbound_message_id.is_(None))
                            .order_by(OutboxMessage.id)).all()
        assert [o.template for o in analyst] == ["account_setup", "analyst_reply"]
        sent = message_from_bytes(analyst[1].raw, policy=policy.default)
        assert "You are welcome {{ 7*7 }}" in sent.get_body(("plain",)).get_content()
        assert sent["Auto-Submitted"] is None
        from models.classification import LabelCorrection
        assert s.scalar(select(func.count()).select_from(LabelCorrection)) == 1
    code, out, _ = _cli(tmp_path, url, "queue", "close", str(second), "--note", "done", capsys=capsys)
    assert code == 0
    code, out, _ = _cli(tmp_path, url, "queue", "list", capsys=capsys)
    assert "empty" in out


def test_triage_json_is_a_dry_run(tmp_path, engine, sessions, capsys):
    url = engine.url.render_as_string(hide_password=False)
    import_users(sessions)
    good = tmp_path / "good.eml"
    good.write_bytes(mail(subject="AESDirect {{ 7*7 }}", body="AES error {{ 7*7 }}"))
    bad = tmp_path / "bad.eml"
    bad.write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 600)
    ooo = tmp_path / "ooo.eml"
    ooo.write_bytes(mail(extra="Auto-Submitted: auto-replied\r\n"))
    code, out, _ = _cli(tmp_path, url, "triage", "--json", str(good), str(bad), str(ooo), capsys=capsys)
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["file"] for line in lines] == [str(good), str(bad), str(ooo)]
    for line in lines:
        assert {"file", "label", "confidence", "language", "screen", "verification", "action"} <= set(line)
        assert {"kind", "template", "to"} <= set(line["action"])
    assert lines[1]["action"]["kind"] == "quarantine" and lines[1]["action"]["reason"]
    assert lines[2]["action"]["kind"] == "drop" and lines[2]["screen"] == "auto_submitted:auto-replied"
    assert lines[0]["verification"]["status"] == "verified"
    if lines[0]["action"]["kind"] == "reply":
        assert {"to", "subject", "text"} <= set(lines[0]["reply"])
        assert "{{ 7*7 }}" in lines[0]["reply"]["subject"]
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(Ticket)) == 0
        assert s.scalar(select(func.count()).select_from(OutboxMessage)) == 0
    assert not (tmp_path / "var" / "responders.secret").exists()


def test_a_broken_policy_table_is_a_config_error(tmp_path):
    from daemon.config import ConfigError, config_from_dict
    from daemon.stages.respond import make_responder

    for rule, what in (({"action": "answer"}, "action"), ({"action": "reply", "labels": ["pasword"]}, "label"),
                       ({"action": "reply", "template": "nope"}, "template")):
        # Refused when the config loads (action, labels) or when the responder is built (templates).
        with pytest.raises(ConfigError, match=what):
            make_responder(config_from_dict({"daemon": {"state_dir": str(tmp_path)},
                                             "responders": {"rules": [rule]}}, base_dir=str(tmp_path)))
