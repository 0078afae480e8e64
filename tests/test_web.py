"""The web app without a browser: analyst accounts from the CLI, who may reach
what, CSRF, login rate limiting, single sign-on behind a trusted proxy,
/metrics parsed by Prometheus' own parser, /healthz and /readyz (also with the
database down), and ``acedesk report sla``."""

from __future__ import annotations

import http.client
import json
import re
from urllib.parse import urlencode

import pytest
from prometheus_client.parser import text_string_to_metric_families

from daemon.cli.main import main
from daemon.context import make_context
from daemon.notices.fanout import load_signer
from daemon.web.server import WebServer
from models.session import transaction
from tests.servers import BackgroundComponent, free_port, wait_for_port

PASSWORD = "correct-horse-battery"


class Client:
    """A tiny cookie-keeping HTTP client for the real server."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.cookies: dict[str, str] = {}
        #: The Set-Cookie line of the session cookie, lower-cased (its attributes).
        self.session_cookie = ""

    def request(self, method: str, path: str, form: dict | None = None,
                headers: dict | None = None) -> tuple[int, dict[str, str], str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            head = dict(headers or {})
            if self.cookies:
                head["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
            body = None
            if form is not None:
                body = urlencode(form, doseq=True)
                head["Content-Type"] = "application/x-www-form-urlencoded"
            conn.request(method, path, body=body, headers=head)
            response = conn.getresponse()
            for name, value in response.getheaders():
                if name.lower() == "set-cookie":
                    key, _, rest = value.partition("=")
                    if key == "acedesk_session":
                        self.session_cookie = value.lower()
                    val = rest.split(";", 1)[0]
                    if val in ('""', "") or "max-age=0" in value.lower():
                        self.cookies.pop(key, None)
                    else:
                        self.cookies[key] = val
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read().decode()
        finally:
            conn.close()

    def login(self, name: str, password: str = PASSWORD) -> int:
        status, _, page = self.request("GET", "/login")
        csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
        return self.request("POST", "/login", {"name": name, "password": password, "csrf": csrf, "next": "/queue"})[0]

    def csrf(self, path: str = "/queue") -> str:
        return re.search(r'name="csrf" value="([^"]+)"', self.request("GET", path)[2]).group(1)


def acedesk(cfg_path, *args: str) -> int:
    return main(["--config", str(cfg_path), *args])


@pytest.fixture
def site(tmp_path, sqlite_url, monkeypatch):
    """A migrated database with an admin, an analyst and a publisher, and the web server on a free port."""
    port = free_port()
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[database]\nurl = "{sqlite_url}"\n[daemon]\nstate_dir = "{tmp_path}/var"\n'
                   f'[web]\nlisten = "127.0.0.1:{port}"\nsso_header = "X-Remote-User"\nlogin_attempts = 3\n'
                   f'[csms]\nbase_url = "http://127.0.0.1:{port}"\n')
    assert acedesk(cfg, "db", "upgrade") == 0
    monkeypatch.setenv("ACEDESK_ANALYST_PASSWORD", PASSWORD)
    for name, role in (("ada", "admin"), ("ann", "analyst"), ("pat", "publisher")):
        assert acedesk(cfg, "analysts", "add", name, "--role", role) == 0
    from daemon.config import load_config
    config = load_config(cfg, env={})
    ctx = make_context(config)
    server = BackgroundComponent(WebServer(ctx, load_signer(config))).start()
    wait_for_port(port)
    yield cfg, port, ctx
    server.stop()
    ctx.dispose()
    assert server.error is None


def test_accounts_from_the_cli_and_who_reaches_what(site, capsys):
    cfg, port, ctx = site
    capsys.readouterr()
    assert acedesk(cfg, "analysts", "list") == 0
    listing = capsys.readouterr().out
    assert re.search(r"ada\s+admin\s+active", listing) and re.search(r"ann\s+analyst\s+active", listing)
    assert acedesk(cfg, "analysts", "add", "ann", "--role", "analyst") == 2  # exists already
    assert "exists already" in capsys.readouterr().err

    anonymous = Client(port)
    for path in ("/", "/queue", "/items/1", "/tickets", "/csms", "/csms/new", "/dashboard", "/csms/subscribers"):
        status, headers, _ = anonymous.request("GET", path)
        assert status == 303 and headers["location"].startswith("/login"), path
    assert anonymous.request("GET", "/login")[0] == 200
    assert anonymous.request("GET", "/archive/")[0] in (200, 404)  # public, empty before the first publish
    assert anonymous.request("GET", "/healthz")[0] == 200

    ann = Client(port)
    assert ann.login("ann") == 303
    assert "httponly" in ann.session_cookie and "samesite=strict" in ann.session_cookie \
        and "secure" in ann.session_cookie
    status, headers, page = ann.request("GET", "/queue")
    assert status == 200 and "Triage queue" in page
    assert "acedesk_session" in ann.cookies
    # A POST without the session's CSRF token is refused and changes nothing.
    assert ann.request("POST", "/logout", {})[0] == 403
    # An analyst cannot compose or publish CSMS notices.
    assert ann.request("GET", "/csms/new")[0] == 403
    status, _, text = ann.request("POST", "/csms/1/publish", {"csrf": ann.csrf()})
    assert status == 403 and "publisher" in text

    # Disabling an account signs it out at once.
    assert acedesk(cfg, "analysts", "disable", "ann") == 0
    assert ann.request("GET", "/queue")[0] == 303
    assert Client(port).login("ann") == 401
    assert acedesk(cfg, "analysts", "passwd", "pat") == 0
    with ctx.sessions() as session:
        from sqlalchemy import select

        from models.core import AuditEntry
        actions = list(session.scalars(select(AuditEntry.action).where(AuditEntry.action.like("analysts.%"))))
    assert actions.count("analysts.add") == 3 and "analysts.disable" in actions


def test_login_is_rate_limited_with_a_clear_message(site):
    cfg, port, ctx = site
    client = Client(port)
    for _ in range(3):
        assert client.login("pat", "wrong password!") == 401
    # Even the right password is refused for the rest of the window.
    status, _, _ = client.request("GET", "/login")
    csrf = client.cookies["acedesk_login"]
    status, headers, page = client.request("POST", "/login", {"name": "pat", "password": PASSWORD, "csrf": csrf})
    assert status == 429 and "Too many failed logins" in page and "Wait 15 minutes" in page
    # The limit is counted per name and per client address, in the database: a fresh browser
    # from the same address (every test client is 127.0.0.1) is refused too.
    ok = Client(port)
    status, _, page = ok.request("GET", "/login")
    csrf = ok.cookies["acedesk_login"]
    status, headers, _ = ok.request("POST", "/login", {"name": "ada", "password": PASSWORD, "csrf": csrf})
    assert status == 429


def test_single_sign_on_header_from_the_trusted_proxy(site):
    cfg, port, ctx = site
    proxy = Client(port)
    status, _, page = proxy.request("GET", "/queue", headers={"X-Remote-User": "pat"})
    assert status == 200 and "pat (publisher)" in page
    # A name that is not an analyst gets the login page, not an account.
    assert proxy.request("GET", "/queue", headers={"X-Remote-User": "mallory"})[0] == 303


def test_metrics_healthz_and_readyz(site, tmp_path):
    cfg, port, ctx = site
    client = Client(port)
    status, headers, text = client.request("GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in ("acedesk_messages", "acedesk_outbox_messages", "acedesk_csms_deliveries", "acedesk_triage_open",
                 "acedesk_model_info", "acedesk_stage_batch_seconds", "acedesk_imap_errors",
                 "acedesk_outbox_smtp_errors", "acedesk_backlog_oldest_seconds"):
        assert name in families, name
    assert client.request("GET", "/healthz")[0] == 200
    status, _, body = client.request("GET", "/readyz")
    assert status == 200 and json.loads(body)["ready"] is True


def test_readyz_fails_when_the_database_is_down(config_factory, tmp_path):
    # A database nobody listens on: the console still answers /healthz, and /readyz says why it is not ready.
    config = config_factory(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nothing")
    ctx = make_context(config)
    port = config.web.host_port()[1]
    server = BackgroundComponent(WebServer(ctx, load_signer(config))).start()
    try:
        wait_for_port(port)
        client = Client(port)
        assert client.request("GET", "/healthz")[0] == 200
        status, _, body = client.request("GET", "/readyz")
        answer = json.loads(body)
        assert status == 503 and answer["ready"] is False and "database unreachable" in answer["problems"][0]
    finally:
        server.stop()
        ctx.dispose()


def test_report_sla_prints_the_dashboards_figures(tmp_path, sqlite_url, capsys):
    import datetime as dt

    from models.base import utcnow
    from models.responders import Ticket

    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[database]\nurl = "{sqlite_url}"\n[daemon]\nstate_dir = "{tmp_path}/var"\n')
    assert acedesk(cfg, "db", "upgrade") == 0
    from daemon.config import load_config
    ctx = make_context(load_config(cfg, env={}))
    now = utcnow() - dt.timedelta(days=1)
    with transaction(ctx.sessions) as session:
        for i, (label, hours) in enumerate([("ach_refund", 1), ("ach_refund", 2), ("ach_refund", 6),
                                             ("pga_access", 3)]):
            session.add(Ticket(number=f"ACE-2026-{i:06d}", status="answered", label=label, requester="a@b.example",
                               created_at=now, due_at=now + dt.timedelta(hours=4),
                               first_response_at=now + dt.timedelta(hours=hours)))
    ctx.dispose()
    capsys.readouterr()
    since = (now - dt.timedelta(days=2)).strftime("%Y-%m-%d")
    assert acedesk(cfg, "report", "sla", "--since", since, "--format", "json") == 0
    figures = json.loads(capsys.readouterr().out)
    labels = {r["key"]: r for r in figures["by_label"]}
    assert labels["ach_refund"]["tickets"] == 3 and labels["ach_refund"]["within_target"] == 2
    assert abs(labels["ach_refund"]["share_within_target"] - 2 / 3) < 1e-9
    assert figures["overall"]["within_target"] == 3 and abs(figures["overall"]["mean_first_response_hours"] - 3) < 0.01
    assert acedesk(cfg, "report", "sla", "--since", since) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("scope,key,tickets") and any(line.startswith("label,pga_access,1,1,1,1.0") for line in lines)
    assert acedesk(cfg, "report", "sla", "--since", "yesterday") == 2


def test_watchdog_pings_only_while_the_pipeline_makes_progress_or_has_nothing_to_do(sqlite_url, config_factory):
    from daemon.app import PIPELINE_STALL, PipelineWorker, Supervisor

    ctx = make_context(config_factory(sqlite_url))
    worker = PipelineWorker(ctx, [])
    supervisor = Supervisor(ctx, [worker])
    assert supervisor.healthy()
    assert supervisor.healthy(worker.alive_at + PIPELINE_STALL - 1)
    assert not supervisor.healthy(worker.alive_at + PIPELINE_STALL + 1)
    ctx.dispose()


def _item(ctx, label: str, verification: str = "unknown") -> int:
    import datetime as dt

    from models.base import utcnow
    from models.responders import Ticket, TriageItem

    now = utcnow()
    with transaction(ctx.sessions) as session:
        ticket = Ticket(number=f"ACE-2026-{abs(hash(label)) % 10**6:06d}", status="open", label=label, language="en",
                        requester="jo@broker.example", user_id="JO1" if verification == "verified" else None,
                        verification=verification, subject="Refund question", created_at=now,
                        due_at=now + dt.timedelta(hours=4))
        session.add(ticket)
        session.flush()
        item = TriageItem(ticket_id=ticket.id, reason="policy", status="open", label=label, confidence=0.5,
                          created_at=now)
        session.add(item)
        session.flush()
        return item.id


def test_approve_note_close_reopen_are_the_domains_and_audited_under_the_analysts_name(site):
    from sqlalchemy import select

    from models.core import AuditEntry
    from models.outbox import OutboxMessage

    cfg, port, ctx = site
    refund = _item(ctx, "ach_refund")
    locked = _item(ctx, "account_locked")
    pat = Client(port)
    assert pat.login("pat") == 303
    status, _, page = pat.request("GET", f"/items/{refund}")
    assert status == 200 and "Approve: the ach_refund answer to jo@broker.example" in page
    status, _, page = pat.request("GET", f"/items/{locked}")
    assert "Approve is not possible: account_locked answers go only to verified users" in page
    csrf = pat.csrf(f"/items/{refund}")
    assert pat.request("POST", f"/items/{refund}/note", {"csrf": csrf, "text": "called the bank"})[0] == 303
    status, headers, _ = pat.request("POST", f"/items/{refund}/approve", {"csrf": csrf})
    assert status == 303 and "Approved" in headers["location"]
    status, headers, _ = pat.request("POST", f"/items/{refund}/approve", {"csrf": csrf})
    assert "Not+done" in headers["location"] and "already+approved" in headers["location"]
    assert pat.request("POST", f"/items/{locked}/close", {"csrf": csrf, "note": "not theirs"})[0] == 303
    assert pat.request("POST", f"/items/{locked}/reopen", {"csrf": csrf})[0] == 303
    status, _, page = pat.request("GET", f"/items/{refund}")
    assert "called the bank" in page and "Reopen" in page
    with ctx.sessions() as session:
        outbox = list(session.scalars(select(OutboxMessage)))
        audit = [(a.actor, a.action) for a in session.scalars(select(AuditEntry).where(AuditEntry.action.like("queue.%"))
                                                              .order_by(AuditEntry.id))]
    assert [o.rcpt_to for o in outbox] == [["jo@broker.example"]]
    assert audit == [("pat", "queue.note"), ("pat", "queue.approved"), ("pat", "queue.closed"), ("pat", "queue.reopen")]


def test_the_cli_acts_as_an_analyst_on_file_with_the_consoles_roles_and_audit_name(site, capsys, monkeypatch):
    from sqlalchemy import select

    from models.core import AuditEntry
    from models.csms import Notice
    from models.responders import TriageItem

    cfg, port, ctx = site
    item = str(_item(ctx, "ach_refund"))
    monkeypatch.delenv("ACEDESK_ANALYST", raising=False)
    monkeypatch.setenv("SUDO_USER", "nobody-on-file")
    pat = Client(port)
    assert pat.login("pat") == 303
    assert pat.request("POST", f"/items/{item}/note", {"csrf": pat.csrf(f"/items/{item}"),
                                                       "text": "from the console"})[0] == 303
    capsys.readouterr()
    # The same analyst from the shell is the same name in the audit log.
    assert acedesk(cfg, "queue", "note", item, "from the shell", "--as", "pat") == 0
    # A name that is no account, given or defaulted from the login name, is refused, naming it.
    assert acedesk(cfg, "queue", "claim", item, "--as", "mallory") == 2
    err = capsys.readouterr().err
    assert "no analyst account 'mallory'" in err and "Traceback" not in err
    assert acedesk(cfg, "queue", "claim", item) == 2
    assert "no analyst account 'nobody-on-file'" in capsys.readouterr().err
    # $ACEDESK_ANALYST names the account when --as does not.
    monkeypatch.setenv("ACEDESK_ANALYST", "ann")
    assert acedesk(cfg, "queue", "claim", item) == 0
    # The console's roles: an analyst cannot compose CSMS notices from the shell either.
    body = cfg.parent / "notice.md"
    body.write_text("The ACE Portal will be unavailable on Saturday.\n")
    assert acedesk(cfg, "csms", "create", "--title", "Maintenance", "--topic", "ACE Portal", "--body", str(body)) == 2
    assert "needs the publisher role; ann is analyst" in capsys.readouterr().err
    assert acedesk(cfg, "csms", "create", "--title", "Maintenance", "--topic", "ACE Portal", "--body", str(body),
                   "--as", "pat") == 0
    # A disabled account acts no more.
    assert acedesk(cfg, "analysts", "disable", "ann") == 0
    capsys.readouterr()
    assert acedesk(cfg, "queue", "note", item, "still here?") == 2
    assert "analyst ann is disabled" in capsys.readouterr().err
    with ctx.sessions() as session:
        audit = [(a.actor, a.action) for a in session.scalars(
            select(AuditEntry).where(AuditEntry.action.like("queue.%") | AuditEntry.action.like("csms.%"))
            .order_by(AuditEntry.id))]
        notices = [(n.title, n.author) for n in session.scalars(select(Notice))]
        assigned = session.get(TriageItem, int(item)).assigned_to
    assert audit == [("pat", "queue.note"), ("pat", "queue.note"), ("ann", "queue.assign"), ("pat", "csms.create")]
    assert notices == [("Maintenance", "pat")] and assigned == "ann"


def test_a_saved_draft_is_edited_from_the_cli_until_it_is_published(site, capsys, monkeypatch):
    from sqlalchemy import select

    from models.core import AuditEntry

    cfg, port, ctx = site
    monkeypatch.setenv("ACEDESK_ANALYST", "pat")
    subs = cfg.parent / "subs.csv"
    subs.write_text("email,topics,language\njo@broker.example,ACE Portal,en\ncarla@importadora.example,ACH Refunds,es\n")
    assert acedesk(cfg, "csms", "subscribers", "import", str(subs)) == 0
    body = cfg.parent / "notice.md"
    body.write_text("First words.\n")
    capsys.readouterr()
    assert acedesk(cfg, "csms", "create", "--title", "Draft title", "--topic", "ACE Portal", "--body", str(body)) == 0
    notice_id = re.search(r"notice (\d+) created: draft", capsys.readouterr().out).group(1)
    body.write_text("The **second** words.\n")
    assert acedesk(cfg, "csms", "edit", notice_id, "--title", "ACE Portal maintenance", "--topic", "ACE Portal",
                   "--topic", "ACH Refunds", "--body", str(body)) == 0
    assert "title, body, topics changed" in capsys.readouterr().out
    assert acedesk(cfg, "csms", "preview", notice_id) == 0
    shown = capsys.readouterr().out
    assert "ACE Portal maintenance" in shown and "second" in shown and "First words" not in shown
    # The confirmation counts the edited topics' subscribers; once published it can no longer change.
    assert acedesk(cfg, "csms", "publish", notice_id, "--yes", "--no-wait") == 0
    assert "Recipients: 2" in capsys.readouterr().out
    assert acedesk(cfg, "csms", "edit", notice_id, "--title", "Too late") == 2
    err = capsys.readouterr().err
    assert "a published notice can no longer be edited" in err and "Traceback" not in err
    # The console says the same.
    pat = Client(port)
    assert pat.login("pat") == 303
    status, headers, _ = pat.request("GET", f"/csms/{notice_id}/edit")
    assert status == 303 and "no+longer+be+edited" in headers["location"]
    with ctx.sessions() as session:
        edits = [(a.actor, a.detail["fields"]) for a in session.scalars(
            select(AuditEntry).where(AuditEntry.action == "csms.edit"))]
    assert edits == [("pat", ["title", "body", "topics"])]


def test_the_item_page_shows_the_top_labels_recorded_at_classification(site):
    from sqlalchemy import select, update

    from daemon.config import PipelineConfig
    from daemon.intake.store import NewMessage, insert_messages
    from daemon.pipeline import build_stages
    from daemon.worker import drain
    from models.core import InboundMessage
    from models.responders import TriageItem

    cfg, port, ctx = site
    raw = (b"From: Jo Broker <jo@broker.example>\r\nTo: helpdesk@ace-support.example\r\n"
           b"Subject: Where is my entry?\r\nMessage-ID: <top-1@broker.example>\r\n\r\n"
           b"Hello, I have a question about something unusual.\r\nThanks\r\n")
    with transaction(ctx.sessions) as session:
        insert_messages(session, [NewMessage(desk="helpdesk@ace-support.example", source="cli", raw=raw)])
    drain(ctx.sessions, build_stages(ctx), PipelineConfig())
    with ctx.sessions() as session:
        row = session.scalars(select(InboundMessage)).one()
        item = session.scalars(select(TriageItem)).one()
    # The classify stage kept its three likeliest labels, best first, the first being its answer.
    assert len(row.top_labels) == 3 and row.top_labels[0] == [row.label, row.confidence]
    assert [p for _, p in row.top_labels] == sorted((p for _, p in row.top_labels), reverse=True)
    # The page shows what was recorded, not a new prediction: change the record and the page follows.
    recorded = [["ach_refund", 0.42], ["account_locked", 0.31], ["other", 0.12]]
    with transaction(ctx.sessions) as session:
        session.execute(update(InboundMessage).values(top_labels=recorded))
    ann = Client(port)
    assert ann.login("ann") == 303
    status, _, page = ann.request("GET", f"/items/{item.id}")
    shown = re.findall(r"<li>(\w+) <small>([\d.]+)</small></li>", page.split('id="top-labels"')[1].split("</ol>")[0])
    assert status == 200 and shown == [("ach_refund", "0.42"), ("account_locked", "0.31"), ("other", "0.12")]
    # A message classified before the labels were kept says so instead of guessing.
    with transaction(ctx.sessions) as session:
        session.execute(update(InboundMessage).values(top_labels=None))
    status, _, page = ann.request("GET", f"/items/{item.id}")
    assert status == 200 and "were not recorded for this message" in page


def test_a_drafts_language_changes_but_an_original_and_its_spanish_version_stay_one_group(site, capsys,
                                                                                        monkeypatch):
    cfg, port, ctx = site
    monkeypatch.setenv("ACEDESK_ANALYST", "pat")
    body = cfg.parent / "notice.md"
    body.write_text("Words.\n")
    for args in (("--title", "Original"), ("--title", "Versión", "--language", "es", "--translation-of", "1"),
                 ("--title", "Alone")):
        assert acedesk(cfg, "csms", "create", "--topic", "ACE Portal", "--body", str(body), *args) == 0
    capsys.readouterr()
    assert acedesk(cfg, "csms", "edit", "3", "--language", "es") == 0
    assert "language changed" in capsys.readouterr().out
    assert acedesk(cfg, "csms", "edit", "2", "--language", "en") == 2
    assert "is the Spanish version of another notice" in capsys.readouterr().err
    assert acedesk(cfg, "csms", "edit", "1", "--language", "es") == 2
    assert "has a Spanish version" in capsys.readouterr().err
    with ctx.sessions() as session:
        from models.csms import Notice
        assert [session.get(Notice, i).language for i in (1, 2, 3)] == ["en", "es", "es"]
