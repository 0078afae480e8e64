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


# --- the seeds: where every address and article the desk sends comes from ---------------------

SEEDS = sorted((Path(__file__).parent / "data" / "seeds").glob("*.txt"))
URL = re.compile(r"(?:https?://|\bwww\.)[^\s\]<>\"')]+")


def bare(url: str) -> str:
    """``url`` without its scheme or trailing punctuation (seed 001 writes ``www.cbp.gov/ace.``)."""
    return re.sub(r"^https?://", "", url).rstrip(".,;:")


SEED_TEXT = "\n".join(p.read_text(encoding="utf-8") for p in SEEDS)
SEED_URLS = {bare(u) for u in URL.findall(SEED_TEXT)}


def words(text: str) -> set[str]:
    return set(re.findall(r"[\w-]+", text.lower()))


def test_every_article_and_address_the_desk_ships_comes_from_the_seeds():
    assert len(SEEDS) == 4 and "www.cbp.gov/ace" in SEED_URLS
    sentences = [words(s) for s in re.split(r"(?<=[.!?])\s+|\n", SEED_TEXT) if s.strip()]
    shipped = shipped_articles()
    for a in shipped:
        if a.url:
            assert bare(a.url) in SEED_URLS, f"{a.key} ({a.language}): {a.url} is in no seed"
        if a.language == "en":
            # The title is the seeds' name for it: all its words (a parenthetical aside apart) in one sentence.
            name = words(re.sub(r"\([^)]*\)", "", a.title))
            assert any(name <= s for s in sentences), f"{a.key}: {a.title!r} is not how a seed names it"
    # Each key ships in both languages, with the same address (or none) in each.
    by_key: dict[str, set] = {}
    for a in shipped:
        by_key.setdefault(a.key, set()).add((a.language, a.url))
    assert all({lang for lang, _ in v} == {"en", "es"} and len({u for _, u in v}) == 1 for v in by_key.values())
    # The seeds link the refund resources and www.cbp.gov/ace, and nothing else the desk points to.
    linked = {a.key for a in shipped if a.url}
    assert "ach-refunds-faq" in linked and "availability-dashboard" not in linked and "portal-account" not in linked
    # The templates' own text quotes no address the seeds do not give.
    templates = Path(__file__).parents[1] / "responders" / "templates"
    for path in templates.rglob("*.j2"):
        found = {bare(u) for u in URL.findall(path.read_text(encoding="utf-8")) if "{{" not in u}
        assert found <= SEED_URLS, f"{path.relative_to(templates)}: {found - SEED_URLS}"


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
                assert a.title in reply.text, (label, language)
                if a.url:
                    assert a.url in reply.text and f'href="{a.url}"' in reply.html, (label, language)
                else:  # cited by title, linking nowhere
                    assert re.search(rf"^- {re.escape(a.title)}\r?$", reply.text, re.M), (label, language)
            # Whatever address a reply carries (template text or article) is one the seeds give.
            assert set(map(bare, URL.findall(reply.text))) <= SEED_URLS, (label, language)
            assert ("Related articles" if language == "en" else "Artículos relacionados") in reply.text

    # Through the daemon's stage: an ACH refund answer links the FAQ ... until it is retired.
    faq = library.get("ach-refunds-faq", "en")
    ingest(sessions, mail(subject="ACH refund enrollment", sender="dan@new.example", ar=None, body="How?"))
    drain(sessions, pipeline(ctx), PipelineConfig())
    assert faq.url and faq.url in text_of(replies(sessions)[-1])
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
        notice, spanish = s.scalars(select(Notice).order_by(Notice.id)).all()
        assert (notice.status, notice.type, notice.topics, notice.language) == (DRAFT, "INFORMATION", ["ACE"], "en")
        assert incident.csms_notice_id == notice.id
        # Its Spanish version, for Spanish subscribers: a translation of it, in the seeds' wording.
        assert (spanish.status, spanish.type, spanish.topics, spanish.language, spanish.translation_of_id) == \
            (DRAFT, "INFORMATION", ["ACE"], "es", notice.id)
        assert "Check the ACE Availability Dashboard for real-time system status" in notice.body
        assert "ACE Outages Guidelines offer detailed information on how to handle and understand system " \
               "disruptions" in notice.body
        assert "Consulte el ACE Availability Dashboard (tablero de disponibilidad de ACE) para ver el estado del " \
               "sistema en tiempo real" in spanish.body
        assert "Las ACE Outages Guidelines (pautas ante interrupciones de ACE) ofrecen" in spanish.body
        assert f"CBP tiene conocimiento de que los usuarios de ACE tienen problemas con el sistema desde " \
               f"{DeskHours().describe_time(incident.opened_at, 'es')}." in spanish.body
        assert spanish.title == "Problemas del sistema ACE" and incident.number in spanish.body
        # The first batch became tickets before the burst was visible; the rest did not.
        assert s.scalar(select(func.count()).select_from(Ticket)) == 40 + 10
        number = incident.number
    known = replies(sessions, "outage_known")
    assert len(known) == 30
    assert all(number in m["Subject"] and number in text_of(m) for m in known)
    # The Dashboard is cited by name (the seeds give it no address), never by a guessed link.
    assert all("ACE Availability Dashboard" in text_of(m) and not URL.search(text_of(m))
               for m in known)
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


def test_the_outage_draft_reaches_each_subscriber_in_their_language(engine, sessions, smtp_capture, tmp_path, capsys,
                                                                   monkeypatch):
    config = tmp_path / "cli.toml"
    config.write_text(f'[database]\nurl = "{url_of(engine)}"\n[daemon]\nstate_dir = "{tmp_path / "var"}"\n'
                      f'[outbound]\nrelay_host = "127.0.0.1"\nrelay_port = {smtp_capture.port}\n'
                      f'[csms]\nsecret_file = "{tmp_path / "csms.secret"}"\n')
    (tmp_path / "csms.secret").write_text("a-test-secret-of-enough-length\n")
    subscribers = tmp_path / "subs.csv"
    subscribers.write_text("email,topics,language\njo@broker.example,ACE,en\ncarla@importadora.example,ACE,es\n")
    on_file(sessions, monkeypatch, "war-room", "publisher")
    assert cli(tmp_path, engine, "incidents", "open", "--title", "ACE Portal down") == 0
    number = re.search(r"incident (INC-\d{4}-\d{4}) opened", capsys.readouterr().out).group(1)
    assert cli(tmp_path, engine, "csms", "subscribers", "import", str(subscribers)) == 0
    capsys.readouterr()
    assert cli(tmp_path, engine, "incidents", "show", number) == 0
    out = capsys.readouterr().out
    english_id = int(re.search(r"CSMS draft: (\d+)", out).group(1))
    assert re.search(r"; es: \d+ \(acedesk csms preview \d+\)", out)
    assert cli(tmp_path, engine, "csms", "publish", str(english_id), "--yes") == 0
    got = {m.rcpt_tos[0]: m.message for m in smtp_capture.handler.wait_for(2)}
    assert set(got) == {"jo@broker.example", "carla@importadora.example"}
    jo, carla = text_of(got["jo@broker.example"]), text_of(got["carla@importadora.example"])
    assert "ACE System Issues: ACE Portal down" in got["jo@broker.example"]["Subject"]
    assert "Problemas del sistema ACE: ACE Portal down" in got["carla@importadora.example"]["Subject"]
    assert "CBP is aware that ACE users are experiencing system issues" in jo and "CBP tiene" not in jo
    assert "CBP tiene conocimiento de que los usuarios de ACE tienen problemas" in carla and "CBP is aware" not in carla


# --- escalation -------------------------------------------------------------------------------------


def test_a_ticket_near_its_target_escalates_once_to_the_desk_and_its_assignee(
        sessions, engine, config_factory, smtp_capture, tmp_path, monkeypatch):
    leads = "leads@ace-support.example"
    config = config_factory(url_of(engine), escalation={"margin_minutes": 30, "address": leads},
                            outbound={"relay_host": "127.0.0.1", "relay_port": smtp_capture.port,
                                      "retry_min": 0.05, "timeout": 5.0})
    ctx = make_ctx(config, engine)
    # Five questions the model is unsure of: five tickets, each with a triage item.
    ingest(sessions, *[mail(subject=f"a question {i}", sender=f"u{i}@new.example", ar=None, body=f"How {i}?",
                            msgid=f"<q-{i}@new.example>") for i in range(5)])
    drain(sessions, pipeline(ctx), PipelineConfig())
    acks = drain_outbox(sessions, config)
    smtp_capture.handler.wait_for(acks)
    # Analysts: ann and bob with an address on their account, cy without one.
    monkeypatch.setenv("ACEDESK_ANALYST_PASSWORD", "correct horse battery")
    on_file(sessions, monkeypatch, "lead", "admin")  # who the command line acts as
    assert cli(tmp_path, engine, "analysts", "add", "ann", "--email", "Ann.Lee@ace-support.example") == 0
    assert cli(tmp_path, engine, "analysts", "add", "bob") == 0
    assert cli(tmp_path, engine, "analysts", "email", "bob", "bob@ace-support.example") == 0
    assert cli(tmp_path, engine, "analysts", "add", "cy") == 0
    assert cli(tmp_path, engine, "analysts", "email", "cy", "not an address") == 2
    now = dt.datetime.now(dt.timezone.utc)
    with transaction(sessions) as s:
        tickets = s.scalars(select(Ticket).order_by(Ticket.id)).all()
        items = {i.ticket_id: i.id for i in s.scalars(select(TriageItem))}
        numbers = [t.number for t in tickets]
        # 0: ann's, overdue; 1: bob's; 2: cy's; 3: nobody's, urgent already; 4: ann's, hours to go.
        for t, minutes in zip(tickets, (-5, 10, 10, 20, 180)):
            t.due_at = now + dt.timedelta(minutes=minutes)
        tickets[3].priority = "high"
    for n, who in ((0, "Ann"), (1, "bob"), (2, "cy"), (4, "ann")):
        ticket_id = next(t.id for t in tickets if t.number == numbers[n])
        assert cli(tmp_path, engine, "queue", "assign", str(items[ticket_id]), who) == 0

    assert sweep_once(ctx, make_responder(config)) == 4
    # A restart: a new process with a new responder finds nothing left to escalate or to tell.
    restarted = make_ctx(config, engine)
    assert sweep_once(restarted, make_responder(config)) == 0
    assert drain_outbox(restarted.sessions, config) == 3
    assert drain_outbox(restarted.sessions, config) == 0
    digests = {m.rcpt_tos[0]: m.message for m in smtp_capture.handler.wait_for(acks + 3)[acks:]}
    assert set(digests) == {leads, "ann.lee@ace-support.example", "bob@ace-support.example"}
    for to, mine in ((leads, {0, 1, 2, 3}), ("ann.lee@ace-support.example", {0}), ("bob@ace-support.example", {1})):
        body = text_of(digests[to])
        assert digests[to]["Auto-Submitted"] == "auto-generated"
        assert {i for i, number in enumerate(numbers) if number in body} == mine, to
    ann = text_of(digests["ann.lee@ace-support.example"])
    assert "ann, these tickets assigned to you" in ann
    assert "(OVERDUE)" in ann and "assigned to you" in digests["ann.lee@ace-support.example"]["Subject"]
    desk = text_of(digests[leads])
    assert f"{numbers[3]} [URGENT]" in desk and f"{numbers[0]} [URGENT]" not in desk
    assert "with ann" in desk and "with cy" in desk
    with sessions() as s:
        escalated = {t.number: t for t in s.scalars(select(Ticket).where(Ticket.escalated_at.is_not(None)))}
        assert set(escalated) == set(numbers[:4]) and all(t.priority == "high" for t in escalated.values())
        assert escalated[numbers[0]].escalated_to == f"{leads}, ann.lee@ace-support.example"
        assert escalated[numbers[2]].escalated_to == leads
        # The SLA report counts each once (overall and per label).
        figures = report.sla(s, now - dt.timedelta(days=1), now + dt.timedelta(days=1), 4.0)
        assert figures.overall.escalated == 4 and sum(r.escalated for r in figures.by_label) == 4


def test_the_desk_digest_lists_the_war_rooms_open_incidents(sessions, engine, config_factory, tmp_path, monkeypatch):
    config = config_factory(url_of(engine), escalation={"margin_minutes": 30})
    ctx = make_ctx(config, engine)
    on_file(sessions, monkeypatch, "war-room")
    assert cli(tmp_path, engine, "incidents", "open", "--title", "ACE Portal down") == 0
    ingest(sessions, mail(subject="a question", sender="dan@new.example", ar=None, body="How do I enrol?"))
    drain(sessions, pipeline(ctx), PipelineConfig())
    with transaction(sessions) as s:
        s.scalars(select(Ticket)).one().due_at = dt.datetime.now(dt.timezone.utc)
    assert sweep_once(ctx, make_responder(config)) == 1
    (digest,) = replies(sessions, "escalation")
    assert re.search(r"War Room: open incidents\r?\n- INC-\d{4}-\d{4}: ACE Portal down, opened ", text_of(digest))


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
