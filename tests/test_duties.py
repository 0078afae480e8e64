"""The desk's own duties, as a user of the desk would notice them, on SQLite
and PostgreSQL: knowledge-article links in every label's replies (both
languages) and gone once retired; a suspended account's password request
gets no account help; an outage burst makes one incident (one alert, one
CSMS draft, answers naming it, one follow-up each on close) while a trickle
makes none; desk hours move the 4-hour target past the closed window on
both DST weekends and replies say when analysts are back; a ticket near its
target escalates once, and the digest reaches a real SMTP server."""

from __future__ import annotations

import datetime as dt
import re
from email import message_from_bytes, policy
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select, update

from classifiers.labels import LABELS
from daemon.cli.main import main
from daemon.config import ConfigError, PipelineConfig, config_from_dict
from daemon.delivery.outbox import drain_outbox
from daemon.duties import sweep_once
from daemon.stages.parse import make_stage as make_parse_stage
from daemon.stages.respond import make_responder, make_stage as make_respond_stage
from daemon.worker import Stage, drain
from models.core import CLASSIFIED, PARSED, AuditEntry, InboundMessage
from models.csms import DRAFT, Notice
from models.duties import Incident, IncidentReport
from models.outbox import OutboxMessage
from models.parsed import ParsedMessage
from models.responders import ResponseRecord, Ticket, TriageItem
from models.session import transaction
from responders import report
from responders.articles import load_library, parse_articles_csv, seed_shipped, shipped_articles
from responders.hours import DeskHours
from responders.service import dry_run, duty_context, plan, render, respond_rows
from tests.test_responders import DIRECTORY, import_users, ingest, mail, make_ctx
from daemon.intake.parse import parse_message
from tests.test_web import Client, site  # noqa: F401  (the console fixture)
from tests.test_web import acedesk as acedesk_cli

ET = ZoneInfo("America/New_York")
ONCALL = "oncall@ace-support.example"

# What the stub classifier says for a subject keyword (the model itself is the classifier's work).
STUB = {"down": ("system_status", 0.95), "caído": ("system_status", 0.95), "password": ("password_reset", 0.95),
        "refund": ("ach_refund", 0.91), "question": ("account_setup", 0.3)}


def classify_stub(session, rows) -> None:
    for row in rows:
        subject = ParsedMessage.from_dict(row.parsed).subject.lower()
        row.label, row.confidence = next(((lab, c) for key, (lab, c) in STUB.items() if key in subject),
                                         ("other", 0.5))
        row.auto = row.confidence >= 0.6
        row.language = "es" if "caído" in subject else "en"
        row.state = CLASSIFIED


def pipeline(ctx, responder=None) -> list[Stage]:
    respond = make_respond_stage(ctx) if responder is None else \
        Stage("respond", CLASSIFIED, lambda s, rows: respond_rows(s, responder, rows))
    return [make_parse_stage(ctx), Stage("classify-stub", PARSED, classify_stub), respond]


def url_of(engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def on_file(sessions, monkeypatch, name: str, role: str = "analyst") -> None:
    """An analyst account the command line then acts as (``$ACEDESK_ANALYST``)."""
    from models.analysts import Analyst

    with transaction(sessions) as s:
        s.add(Analyst(name=name, role=role, password_hash="", disabled=False))
    monkeypatch.setenv("ACEDESK_ANALYST", name)


def cli(tmp_path: Path, engine, *argv: str) -> int:
    config = tmp_path / "cli.toml"
    if not config.exists():
        config.write_text(f'[database]\nurl = "{url_of(engine)}"\n[daemon]\nstate_dir = "{tmp_path / "var"}"\n'
                          f'[outbound]\nspool_dir = "{tmp_path / "spool"}"\n')
    return main(["--config", str(config), *argv])


def arrived(sessions, start: dt.datetime, step: dt.timedelta) -> None:
    """Give the waiting messages arrival times ``start``, ``start + step``, ... in id order."""
    with transaction(sessions) as s:
        ids = list(s.scalars(select(InboundMessage.id).where(InboundMessage.state == "new")
                             .order_by(InboundMessage.id)))
        for i, mid in enumerate(ids):
            s.execute(update(InboundMessage).where(InboundMessage.id == mid).values(received_at=start + i * step))


def replies(sessions, template: str | None = None) -> list:
    with sessions() as s:
        query = select(OutboxMessage).order_by(OutboxMessage.id)
        if template:
            query = query.where(OutboxMessage.template == template)
        return [message_from_bytes(o.raw, policy=policy.default) for o in s.scalars(query)]


def text_of(message) -> str:
    return message.get_body(("plain",)).get_content()


def html_of(message) -> str:
    return message.get_body(("html",)).get_content()


# --- desk hours ---------------------------------------------------------------------------


@pytest.mark.parametrize("arrival, due, back", [
    # An ordinary weekend, then both DST weekends (March: spring forward; November: fall back).
    (dt.datetime(2026, 12, 5, 23, 0), dt.datetime(2026, 12, 6, 9, 0), "Sunday, December 6 at 5:00 AM ET"),
    (dt.datetime(2026, 3, 7, 23, 0), dt.datetime(2026, 3, 8, 9, 0), "Sunday, March 8 at 5:00 AM ET"),
    (dt.datetime(2026, 10, 31, 23, 0), dt.datetime(2026, 11, 1, 9, 0), "Sunday, November 1 at 5:00 AM ET"),
    # Before the window: the clock runs until 10 PM, stops, and goes on at 5 AM.
    (dt.datetime(2026, 12, 5, 20, 0), dt.datetime(2026, 12, 6, 7, 0), None),
    # Inside the week: four plain hours.
    (dt.datetime(2026, 12, 2, 10, 0), dt.datetime(2026, 12, 2, 14, 0), None),
])
def test_the_four_hour_clock_stops_while_the_desk_is_closed(arrival, due, back):
    hours = DeskHours()
    at = arrival.replace(tzinfo=ET)
    assert hours.due(at, 4).astimezone(ET).replace(tzinfo=None) == due
    assert hours.open_hours_between(at, hours.due(at, 4)) == pytest.approx(4.0)
    reopens = hours.reopens_at(at)
    assert (hours.describe_time(reopens) if reopens else None) == back


def test_the_queue_does_not_call_a_ticket_late_while_the_desk_was_closed():
    from responders.tickets import clock

    hours = DeskHours()
    arrived_at = dt.datetime(2026, 12, 5, 23, 0, tzinfo=ET)
    due = hours.due(arrived_at, 4)
    sunday_3am, sunday_10am = arrived_at + dt.timedelta(hours=4), arrived_at + dt.timedelta(hours=11)
    assert not clock(arrived_at, None, None, sunday_3am, 4.0, due).overdue
    assert clock(arrived_at, None, None, sunday_10am, 4.0, due).overdue


def test_hours_are_configurable_and_checked():
    cfg = config_from_dict({"hours": {"closed": [{"start": "Fri 20:00", "end": "Mon 06:00"}]}})
    hours = DeskHours(cfg.hours)
    friday = dt.datetime(2026, 12, 4, 21, 0, tzinfo=ET)
    assert hours.due(friday, 4).astimezone(ET) == dt.datetime(2026, 12, 7, 10, 0, tzinfo=ET)
    assert "Friday 8 PM to Monday 6 AM ET" in hours.describe_hours("en")
    with pytest.raises(ConfigError, match=r"Sat 25:00.*weekday and a 24-hour time"):
        config_from_dict({"hours": {"closed": [{"start": "Sat 25:00", "end": "Sun 05:00"}]}})
    with pytest.raises(ConfigError, match="Mars/Olympus"):
        config_from_dict({"hours": {"timezone": "Mars/Olympus"}})
    with pytest.raises(ConfigError, match="not a taxonomy label"):
        config_from_dict({"incidents": {"label": "outage"}})


@pytest.mark.parametrize("arrival, back", [
    (dt.datetime(2027, 3, 13, 23, 0), "Sunday, March 14 at 5:00 AM ET"),
    (dt.datetime(2026, 10, 31, 23, 0), "el domingo 1 de noviembre a las 5 a. m. (hora del Este)"),
])
def test_a_message_on_saturday_night_is_due_sunday_9am_and_told_when_analysts_are_back(
        arrival, back, sessions, engine, config_factory):
    ctx = make_ctx(config_factory(url_of(engine)), engine)
    at = arrival.replace(tzinfo=ET)
    responder = make_responder(ctx.config)
    responder.clock = lambda: at.astimezone(dt.timezone.utc)
    subject = "ACE está caído" if "domingo" in back else "ACE is down"
    ingest(sessions, mail(subject=subject, body="ACE no procesa." if "domingo" in back else "Not processing.",
                          sender="dan@new.example", ar=None))
    arrived(sessions, at.astimezone(dt.timezone.utc), dt.timedelta(0))
    drain(sessions, pipeline(ctx, responder), PipelineConfig())
    with sessions() as s:
        ticket = s.scalars(select(Ticket)).one()
        assert ticket.due_at.astimezone(ET) == (at + dt.timedelta(days=1)).replace(hour=9, minute=0)
    (reply,) = replies(sessions)
    assert back in text_of(reply) and back in html_of(reply)


# --- knowledge articles -----------------------------------------------------------------------


def test_every_label_links_its_articles_in_both_languages_and_a_retired_one_disappears(
        sessions, engine, config_factory, tmp_path, capsys, monkeypatch):
    ctx = make_ctx(config_factory(url_of(engine)), engine)
    responder = make_responder(ctx.config)
    with transaction(sessions) as s:
        assert seed_shipped(s) == len(shipped_articles())
        assert seed_shipped(s) == 0
    with sessions() as s:
        library = load_library(s)
    now = dt.datetime(2026, 12, 2, 15, 0, tzinfo=dt.timezone.utc)
    answered = [label for label in LABELS if label != "other"]
    for label in answered:
        for language in ("en", "es"):
            articles = library.for_label(label, language)
            assert articles, f"no shipped article for {label}"
            assert all(a.language == language for a in articles)
            msg = parse_message(mail(subject="x", sender="alice@broker.example"))
            p = plan(responder, msg, label=label, confidence=0.99, auto=True, language=language,
                     directory=DIRECTORY, recent_autoreplies=0, followup=False)
            reply = render(responder, msg, p, "ACE-2026-000001",
                           duty_context(responder, library, p.decision.template, label, language, now))
            for a in articles:
                assert a.url in reply.text and a.title in reply.text, (label, language)
                assert f'href="{a.url}"' in reply.html
            assert ("Related articles" if language == "en" else "Artículos relacionados") in reply.text

    # Through the daemon's stage: an ACH refund answer links the FAQ ... until it is retired.
    faq = library.get("ach-refunds-faq", "en")
    ingest(sessions, mail(subject="ACH refund enrollment", sender="dan@new.example", ar=None, body="How?"))
    drain(sessions, pipeline(ctx), PipelineConfig())
    assert faq.url in text_of(replies(sessions)[-1])
    on_file(sessions, monkeypatch, "kms-editor", "admin")
    assert cli(tmp_path, engine, "articles", "retire", "ach-refunds-faq", "--as", "kms-editor") == 0
    ingest(sessions, mail(subject="ACH refund question", sender="eve@new.example", ar=None, body="Bank?"))
    drain(sessions, pipeline(ctx), PipelineConfig())
    last = text_of(replies(sessions)[-1])
    assert faq.url not in last and library.get("ach-refund-training", "en").url in last
    capsys.readouterr()
    assert cli(tmp_path, engine, "articles", "list", "--label", "ach_refund", "--language", "en") == 0
    assert "ach-refunds-faq" not in capsys.readouterr().out

    # An analyst adds an article to a reply by hand (an unknown key is refused, nothing sent).
    ingest(sessions, mail(subject="a question", sender="fay@new.example", ar=None, body="Where do I start?"))
    drain(sessions, pipeline(ctx), PipelineConfig())
    with sessions() as s:
        item = s.scalars(select(TriageItem)).one()
    assert cli(tmp_path, engine, "queue", "reply", str(item.id), "--text", "See the guide below.",
               "--article", "no-such-article") == 2
    assert cli(tmp_path, engine, "queue", "reply", str(item.id), "--text", "See the guide below.",
               "--article", "ach-refund-training") == 0
    analyst = text_of(replies(sessions)[-1])
    assert "See the guide below." in analyst and library.get("ach-refund-training", "en").url in analyst
    assert library.get("importer-account-application", "en").url in analyst  # the label's own (account_setup)

    # Import: a new article for a label, one bad row reported with its line, the good rows kept.
    csv_file = tmp_path / "kms.csv"
    csv_file.write_text("key,language,title,url,labels,last_reviewed\n"
                        "refund-webinar,en,ACH Refund Webinar,https://www.cbp.gov/refund-webinar,ach_refund,2026-12-01\n"
                        "broken,en,Broken,javascript:alert(1),ach_refund,\n")
    assert cli(tmp_path, engine, "articles", "import", str(csv_file)) == 1
    err = capsys.readouterr().err
    assert "kms.csv:3: url" in err
    with sessions() as s:
        assert load_library(s).get("refund-webinar") is not None and load_library(s).get("broken") is None
    rows, errors = parse_articles_csv("key,language,title,url,labels\nx,fr,T,https://a.example,other\n")
    assert not rows and "language" in errors[0].message


# --- account status -------------------------------------------------------------------------------


def test_a_suspended_account_gets_no_account_help_until_restored(sessions, engine, config_factory, tmp_path,
                                                                  capsys, monkeypatch):
    ctx = make_ctx(config_factory(url_of(engine)), engine)
    import_users(sessions)
    on_file(sessions, monkeypatch, "security-officer")
    assert cli(tmp_path, engine, "users", "inactivate", "ALICE01", "--suspend", "--reason",
               "OIT cybersecurity ticket 4411", "--as", "security-officer") == 0
    assert cli(tmp_path, engine, "users", "inactivate", "NOBODY", "--reason", "x") == 2
    # A verified password request from the address on file: security triage, a reply that says nothing.
    ingest(sessions, mail(msgid="<susp-1@broker.example>"))
    drain(sessions, pipeline(ctx), PipelineConfig())
    with sessions() as s:
        item = s.scalars(select(TriageItem)).one()
        assert item.security and s.get(Ticket, item.ticket_id).security
        entry = s.scalars(select(AuditEntry).where(AuditEntry.action == "user.suspended")).one()
        assert entry.actor == "security-officer" and entry.detail["reason"] == "OIT cybersecurity ticket 4411"
    (reply,) = replies(sessions)
    body = text_of(reply)
    with sessions() as s:
        assert s.scalars(select(OutboxMessage)).one().template == "security_neutral"
        record = s.scalars(select(ResponseRecord)).one()
        assert any(r.startswith("account_status: the account is suspended") for r in record.reasons)
    assert "Alice" not in body and "suspend" not in body.lower() and "ALICE01" not in body
    # Nor does an analyst hand it out by approving the item.
    assert cli(tmp_path, engine, "queue", "approve", str(item.id)) == 2
    assert cli(tmp_path, engine, "queue", "reply", str(item.id), "--template", "password_reset") == 2
    assert "suspended" in capsys.readouterr().err
    assert cli(tmp_path, engine, "users", "status", "alice01") == 0
    out = capsys.readouterr().out
    assert "suspended" in out and "security-officer" in out

    # Restored: the same request gets the account answer, to the address on file.
    assert cli(tmp_path, engine, "users", "restore", "ALICE01", "--reason", "cleared") == 0
    ingest(sessions, mail(msgid="<susp-2@broker.example>", body="I forgot my ACE password again."))
    drain(sessions, pipeline(ctx), PipelineConfig())
    with sessions() as s:
        last = s.scalars(select(OutboxMessage).order_by(OutboxMessage.id.desc())).first()
        assert last.template == "password_reset" and last.rcpt_to == ["alice@broker.example"]


# --- outage surges ----------------------------------------------------------------------------------


def outage_reports(n: int) -> list[bytes]:
    # 20 people, some writing twice; one in Spanish.
    return [mail(subject="ACE está caído" if i == 23 else f"ACE is down ({i})", body="ACE not processing entries.",
                 sender=f"user{i % 20}@trade{i % 20}.example", ar=None, msgid=f"<out-{i}@trade.example>")
            for i in range(n)]


def test_an_outage_burst_opens_one_incident_and_a_trickle_none(sessions, engine, config_factory, tmp_path, capsys,
                                                                monkeypatch):
    config = config_factory(url_of(engine), incidents={"oncall_address": ONCALL})
    ctx = make_ctx(config, engine)
    # A normal trickle first: 40 reports over a day (the baseline) make no incident.
    ingest(sessions, *[mail(subject=f"ACE is down? {i}", sender=f"t{i}@trickle.example", ar=None,
                            body="slow", msgid=f"<tr-{i}@trickle.example>") for i in range(40)])
    start = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.timezone.utc)
    arrived(sessions, start, dt.timedelta(minutes=36))
    drain(sessions, pipeline(ctx), PipelineConfig(batch_size=10))
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(Incident)) == 0
        assert s.scalar(select(func.count()).select_from(Ticket)) == 40

    # The burst: 40 reports in 5 minutes, processed in batches of 10 as they come.
    ingest(sessions, *outage_reports(40))
    arrived(sessions, start + dt.timedelta(days=1), dt.timedelta(seconds=7.5))
    drain(sessions, pipeline(ctx), PipelineConfig(batch_size=10))
    with sessions() as s:
        incident = s.scalars(select(Incident)).one()
        assert incident.status == "open" and incident.trigger["reports"] >= 15
        assert s.scalar(select(func.count()).select_from(IncidentReport)
                        .where(IncidentReport.incident_id == incident.id)) == 40
        alerts = list(s.scalars(select(OutboxMessage).where(OutboxMessage.template == "incident_alert")))
        assert len(alerts) == 1 and alerts[0].rcpt_to == [ONCALL]
        notice = s.scalars(select(Notice)).one()
        assert (notice.status, notice.type, notice.topics) == (DRAFT, "INFORMATION", ["ACE"])
        assert incident.csms_notice_id == notice.id
        # The first batch became tickets before the burst was visible; the rest did not.
        assert s.scalar(select(func.count()).select_from(Ticket)) == 40 + 10
        number = incident.number
    known = replies(sessions, "outage_known")
    assert len(known) == 30
    assert all(number in m["Subject"] and number in text_of(m) for m in known)
    assert all("https://www.cbp.gov/trade/automated/ace-availability-dashboard" in text_of(m) for m in known)
    assert any("Sabemos que ACE tiene problemas" in text_of(m) for m in known)

    # The dry run (acedesk triage --json) says the same, and writes nothing.
    with sessions() as s:
        outbox_before = s.scalar(select(func.count()).select_from(OutboxMessage))
        dry = dry_run(s, make_responder(config), parse_message(mail(subject="ACE down", ar=None, sender="g@h.example")),
                      label="system_status", confidence=0.95, auto=True, language="en",
                      desk_address="helpdesk@ace-support.example")
        s.rollback()
        assert s.scalar(select(func.count()).select_from(OutboxMessage)) == outbox_before
    assert dry["action"]["incident"] == number and dry["action"]["template"] == "outage_known"
    assert number in dry["reply"]["subject"] and number in dry["reply"]["text"]

    # Closing sends one follow-up to each address attached (20 people), once.
    on_file(sessions, monkeypatch, "war-room")
    assert cli(tmp_path, engine, "incidents", "close", number, "--resolution", "ACE is processing again.",
               "--as", "war-room") == 0
    assert cli(tmp_path, engine, "incidents", "close", number) == 2
    resolved = replies(sessions, "outage_resolved")
    assert len(resolved) == 20 and len({m["To"] for m in resolved}) == 20
    assert all("ACE is processing again." in text_of(m) for m in resolved)
    with sessions() as s:
        assert s.scalars(select(Incident)).one().open_key is None
    # After the incident, reports are tickets again (until the next burst).
    ingest(sessions, mail(subject="ACE is down again?", sender="late@trade.example", ar=None, body="?"))
    drain(sessions, pipeline(ctx), PipelineConfig())
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(Ticket)) == 51


# --- escalation -------------------------------------------------------------------------------------


def test_a_ticket_near_its_target_escalates_once_and_the_digest_is_delivered(
        sessions, engine, config_factory, smtp_capture):
    config = config_factory(url_of(engine), escalation={"margin_minutes": 30, "address": "leads@ace-support.example"},
                            outbound={"relay_host": "127.0.0.1", "relay_port": smtp_capture.port,
                                      "retry_min": 0.05, "timeout": 5.0})
    ctx = make_ctx(config, engine)
    ingest(sessions, mail(subject="a question", sender="dan@new.example", ar=None, body="How do I enrol?"),
           mail(subject="another question", sender="eve@new.example", ar=None, body="And me?"))
    drain(sessions, pipeline(ctx), PipelineConfig())
    now = dt.datetime.now(dt.timezone.utc)
    with transaction(sessions) as s:
        near, far = s.scalars(select(Ticket).order_by(Ticket.id)).all()
        near.due_at, far.due_at = now + dt.timedelta(minutes=10), now + dt.timedelta(hours=3)
        number = near.number
    drain_outbox(sessions, config)  # the acknowledgements
    smtp_capture.handler.wait_for(2)
    responder = make_responder(config)
    assert sweep_once(ctx, responder) == 1
    assert sweep_once(ctx, responder) == 0
    with sessions() as s:
        near = s.scalars(select(Ticket).where(Ticket.number == number)).one()
        assert near.priority == "high" and near.escalated_to == "leads@ace-support.example"
        # The SLA report counts it (overall and for its label).
        figures = report.sla(s, now - dt.timedelta(days=1), now + dt.timedelta(days=1), 4.0)
        assert figures.overall.escalated == 1 and sum(r.escalated for r in figures.by_label) == 1
    assert drain_outbox(sessions, config) == 1
    got = smtp_capture.handler.wait_for(3)
    digest = got[-1]
    assert digest.rcpt_tos == ["leads@ace-support.example"]
    assert number in digest.message["Subject"] and number in text_of(digest.message)
    assert digest.message["Auto-Submitted"] == "auto-generated"


# --- the console page for admins ----------------------------------------------------------------


def test_admins_see_and_retire_articles_in_the_console(site):  # noqa: F811
    cfg, port, ctx = site
    ann = Client(port)
    assert ann.login("ann") == 303
    assert ann.request("GET", "/articles")[0] == 403          # analysts do not manage the KMS
    ada = Client(port)
    assert ada.login("ada") == 303
    status, _, page = ada.request("GET", "/articles?label=system_status")
    assert status == 200 and "ACE Availability Dashboard" in page and "ACH" not in page
    assert ada.request("POST", "/articles/outages-guidelines/retire", {})[0] == 403   # no CSRF token
    status, headers, _ = ada.request("POST", "/articles/outages-guidelines/retire", {"csrf": ada.csrf("/articles")})
    assert status == 303 and "retired" in headers["location"]
    status, headers, _ = ada.request("POST", "/articles/import", {
        "csrf": ada.csrf("/articles"),
        "csv": "key,language,title,url,labels,last_reviewed\n"
               "status-faq,en,ACE status FAQ,https://www.cbp.gov/status-faq,system_status,2026-12-04\n"})
    assert status == 303 and "1+article" in headers["location"]
    with ctx.sessions() as s:
        library = load_library(s)
        assert library.get("outages-guidelines") is None and library.get("status-faq") is not None
        assert s.scalars(select(AuditEntry).where(AuditEntry.action == "article.retire")).one().actor == "ada"
    # Incidents: any analyst sees them and closes one (the follow-ups are the CLI test's subject).
    assert acedesk_cli(cfg, "analysts", "add", "war-room") == 0
    assert acedesk_cli(cfg, "incidents", "open", "--title", "ACE Portal down", "--as", "war-room") == 0
    status, _, page = ann.request("GET", "/incidents")
    assert status == 200 and "ACE Portal down" in page and "opened by war-room" in page
    number = re.search(r"(INC-\d{4}-\d{4})", page).group(1)
    status, headers, _ = ann.request("POST", f"/incidents/{number}/close",
                                     {"csrf": ann.csrf("/incidents"), "resolution": "fixed", "follow_up": "yes"})
    assert status == 303 and "closed" in headers["location"]
    assert ann.request("POST", f"/incidents/{number}/close", {"csrf": ann.csrf("/incidents")})[0] == 409
    with ctx.sessions() as s:
        assert s.scalars(select(Incident)).one().closed_by == "ann"
