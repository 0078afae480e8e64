"""The analysts' console in a real browser: Playwright driving Debian's
Chromium (``apt-get install chromium``; ``make test`` installs it when root)
against the real web server, outbox and CSMS scheduler, with aiosmtpd
capturing what goes out.  Under ``CI=true`` a missing browser is a failure.

Screenshots of each main page are saved under the test's output folder
(``$ACEDESK_SCREENSHOTS`` when set, else the test's ``tmp_path``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from sqlalchemy import select

from csms import subscribers
from daemon.delivery import outbox
from daemon.intake.store import NewMessage, insert_messages
from daemon.notices import scheduler
from daemon.notices.fanout import load_signer
from daemon.pipeline import build_stages
from daemon.config import PipelineConfig
from daemon.context import make_context
from daemon.web.accounts import add_analyst
from daemon.web.server import WebServer
from daemon.worker import drain
from models.classification import LabelCorrection
from models.migrate import upgrade
from models.responders import TriageItem
from models.session import transaction
from tests.servers import BackgroundComponent, Together, free_port, missing_service, wait_for_port

CHROMIUM = "/usr/bin/chromium"

try:
    from playwright.sync_api import expect
except ImportError:  # the fixture says what to install
    expect = None
PASSWORD = "correct-horse-battery"
DESK = "helpdesk@ace-support.example"

PLAIN = (f"From: Jo Broker <jo@broker.example>\r\nTo: {DESK}\r\nSubject: Where is my entry?\r\n"
         "Message-ID: <plain-1@broker.example>\r\nDate: Sat, 05 Dec 2026 09:00:00 -0500\r\n\r\n"
         "Hello, I have a question about something unusual.\r\nThanks\r\n").encode()
HOSTILE = (f"From: Eve <eve@evil.example>\r\nTo: {DESK}\r\nSubject: Invoice attached\r\n"
           "Message-ID: <hostile-1@evil.example>\r\nDate: Sat, 05 Dec 2026 09:05:00 -0500\r\nMIME-Version: 1.0\r\n"
           'Content-Type: multipart/mixed; boundary="M"\r\n\r\n--M\r\n'
           'Content-Type: multipart/alternative; boundary="A"\r\n\r\n--A\r\nContent-Type: text/plain\r\n\r\n'
           "See the invoice. My SSN is 123-45-6789.\r\n--A\r\nContent-Type: text/html\r\n\r\n"
           "<html><body><p>See the <b>invoice</b>.</p><script>alert('script ran')</script>"
           "<img src=\"x\" onerror=\"alert('onerror ran')\">"
           "<img src=\"http://tracker.example/pixel.gif?u=1\"></body></html>\r\n--A--\r\n"
           "--M\r\nContent-Type: text/html; name=\"invoice.html\"\r\n"
           "Content-Disposition: attachment; filename=\"invoice.html\"\r\n\r\n"
           "<script>alert('attachment ran')</script>\r\n--M--\r\n").encode()


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing_service("Playwright for Python", "pip install playwright (the 'test' extra)")
    if not os.path.exists(CHROMIUM):
        missing_service("Chromium", "apt-get install chromium (make test installs it when run as root)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"] if os.geteuid() == 0 else [])
        yield b
        b.close()


@pytest.fixture
def desk(tmp_path, sqlite_url, config_factory, smtp_capture):
    """A desk with two messages in the queue, three subscribers, three analysts, and the web
    server, outbox and CSMS scheduler running."""
    port = free_port()
    config = config_factory(sqlite_url, web={"listen": f"127.0.0.1:{port}"},
                            csms={"base_url": f"http://127.0.0.1:{port}", "scheduler_interval": 0.2},
                            outbound={"relay_host": "127.0.0.1", "relay_port": smtp_capture.port,
                                      "retry_min": 0.2})
    ctx = make_context(config)
    upgrade(ctx.engine)
    scheduler.ensure_default_topics(ctx)
    with transaction(ctx.sessions) as session:
        insert_messages(session, [NewMessage(desk=DESK, source="cli", raw=PLAIN),
                                  NewMessage(desk=DESK, source="cli", raw=HOSTILE)])
        for name, role in (("ada", "admin"), ("ann", "analyst"), ("pat", "publisher")):
            add_analyst(session, name, role, PASSWORD)
        subscribers.subscribe(session, "jo@broker.example", ["ACE Portal"], "en")
        subscribers.subscribe(session, "carla@importadora.example", ["ACE Portal", "ACH Refunds"], "es")
    drain(ctx.sessions, build_stages(ctx), PipelineConfig())
    daemon = BackgroundComponent(Together(*outbox.make_components(ctx), *scheduler.make_components(ctx),
                                          WebServer(ctx, load_signer(config)))).start()
    wait_for_port(port)
    shots = Path(os.environ.get("ACEDESK_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    yield f"http://127.0.0.1:{port}", ctx, shots
    daemon.stop()
    ctx.dispose()
    assert daemon.error is None


def login(page, base: str, name: str) -> None:
    page.goto(f"{base}/login")
    page.fill("input[name=name]", name)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r"/queue"))


def test_an_analyst_works_the_queue_and_a_publisher_sends_a_notice(browser, desk, smtp_capture):
    base, ctx, shots = desk
    context = browser.new_context()
    context.set_default_timeout(10_000)
    page = context.new_page()
    alerts: list[str] = []
    remote: list[str] = []
    page.on("dialog", lambda d: (alerts.append(d.message), d.dismiss()))
    context.on("request", lambda r: remote.append(r.url) if "tracker.example" in r.url else None)

    # Logged out: nothing but the login page.
    for path in ("/queue", "/items/1", "/tickets", "/csms", "/dashboard"):
        page.goto(base + path)
        assert "/login" in page.url, path
    page.screenshot(path=str(shots / "login.png"))

    login(page, base, "ada")
    assert page.locator("table.queue tbody tr").count() == 2
    page.screenshot(path=str(shots / "queue.png"), full_page=True)

    # A hostile HTML message: shown, but nothing in it runs or loads.
    page.click("text=Invoice attached")
    # Wait for the item page itself: content() read mid-navigation is empty.
    expect(page.locator("main")).to_contain_text("***-**-6789")
    assert "123-45-6789" not in page.content()
    page.click("summary:has-text('Original HTML')")
    frame = page.frame_locator("iframe[title='Original HTML of the message']")
    assert "invoice" in frame.locator("body").inner_text()
    assert frame.locator("script").count() == 0
    with page.expect_download() as download:
        page.click("a:has-text('invoice.html')")
    assert download.value.suggested_filename == "invoice.html"
    page.screenshot(path=str(shots / "message.png"), full_page=True)

    # Relabel: the correction shows, and is kept for training.
    page.select_option("select[name=label]", "ach_refund")
    page.click("button:has-text('Relabel')")
    assert "Label corrected from" in page.inner_text(".flash")
    assert page.inner_text("#current-label") == "ach_refund"

    # Work the other item to a reply captured by the relay.
    page.goto(base + "/queue")
    page.click("text=Where is my entry?")
    page.click("button:has-text('Assign to me')")
    assert "Assigned to ada" in page.inner_text(".flash")
    page.fill("textarea[name=text] >> nth=0", "Your entry was accepted this morning.")
    page.click("button:has-text('Send reply')")
    assert "Reply queued to jo@broker.example" in page.inner_text(".flash")
    reply = smtp_capture.handler.wait_for(1, timeout=20)[0]
    assert reply.rcpt_tos == ["jo@broker.example"] and reply.message["Auto-Submitted"] is None
    assert "Your entry was accepted this morning." in reply.message.get_body(("plain",)).get_content()
    page.screenshot(path=str(shots / "item-replied.png"), full_page=True)

    # A POST without the CSRF token is refused.
    status = page.evaluate("""async () => (await fetch('/items/1/close', {method: 'POST',
        headers: {'Content-Type': 'application/x-www-form-urlencoded'}, body: 'note=x'})).status""")
    assert status == 403

    page.goto(base + "/tickets?q=jo%40broker.example")
    assert page.locator("table.tickets tbody tr").count() == 1
    page.screenshot(path=str(shots / "tickets.png"), full_page=True)
    page.goto(base + "/dashboard")
    assert page.locator("svg.chart").count() == 3
    page.screenshot(path=str(shots / "dashboard.png"), full_page=True)

    # Compose with a live preview, confirm with the recipient count, publish, watch it go out.
    page.goto(base + "/csms/new")
    page.fill("input[name=title]", "ACE Portal maintenance window")
    page.check("input[name=topic][value='ACE Portal']")
    page.fill("textarea[name=body]", "The **ACE Portal** will be unavailable.\n\n* Saturday 10 PM ET")
    expect(page.locator("#preview-text")).to_contain_text("will be unavailable")
    assert "<strong>ACE Portal</strong>" in page.get_attribute("#preview-html", "srcdoc")
    page.screenshot(path=str(shots / "csms-compose.png"), full_page=True)
    page.click("button:has-text('Save')")
    page.click("text=Publish now")
    assert page.inner_text("#recipients") == "2"
    page.screenshot(path=str(shots / "csms-confirm.png"), full_page=True)
    page.click("button:has-text('Publish to 2 subscriber(s)')")
    expect(page.locator("[data-count=sent]")).to_have_text("2", timeout=20_000)
    page.screenshot(path=str(shots / "csms-progress.png"), full_page=True)
    notices = smtp_capture.handler.wait_for(3, timeout=20)[1:]
    by_rcpt = {m.rcpt_tos[0]: m.message for m in notices}
    assert set(by_rcpt) == {"jo@broker.example", "carla@importadora.example"}
    assert alerts == [] and remote == []

    # An analyst may look at CSMS but cannot publish.
    analyst = browser.new_context()
    ann = analyst.new_page()
    login(ann, base, "ann")
    assert ann.goto(base + "/csms/new").status == 403
    ann.goto(base + "/csms/1")
    assert ann.locator("text=Publish now").count() == 0
    analyst.close()

    # A subscriber's links, no login: preferences in Spanish, and one-click unsubscribe.
    public = browser.new_context()
    sub = public.new_page()
    carla = by_rcpt["carla@importadora.example"]
    manage = re.search(r"(http://\S+/u/\S+\?manage=1)", carla.get_body(("plain",)).get_content()).group(1)
    sub.goto(manage)
    assert sub.inner_text("h1") == "Sus preferencias de CSMS"
    sub.uncheck("input[value='ACH Refunds']")
    sub.click("button:has-text('Guardar')")
    assert "ahora recibe avisos CSMS sobre: ACE Portal" in sub.inner_text("main")
    sub.screenshot(path=str(shots / "preferences-es.png"), full_page=True)
    jo = by_rcpt["jo@broker.example"]
    link = re.search(r"<(http://[^>]+)>", jo["List-Unsubscribe"]).group(1)
    sub.goto(link)
    sub.click("button:has-text('Unsubscribe')")
    assert "jo@broker.example will receive no more CSMS notices" in sub.inner_text("main")
    public.close()
    context.close()

    with ctx.sessions() as session:
        corrections = list(session.scalars(select(LabelCorrection.label)))
        resolved = {i.resolution for i in session.scalars(select(TriageItem))}
    assert corrections == ["ach_refund"] and "replied" in resolved
    # Every main page has its screenshot (the folder may be shared with other tests: ACEDESK_SCREENSHOTS).
    assert {"login.png", "queue.png", "message.png", "item-replied.png", "tickets.png", "dashboard.png",
            "csms-compose.png", "csms-confirm.png", "csms-progress.png", "preferences-es.png"} <= \
        {p.name for p in shots.glob("*.png")}


def test_a_publisher_edits_a_saved_draft_with_the_preview_then_publishes_it(browser, desk, smtp_capture):
    from models.core import AuditEntry
    from models.csms import Notice

    base, ctx, shots = desk
    context = browser.new_context()
    context.set_default_timeout(10_000)
    page = context.new_page()
    login(page, base, "pat")
    page.goto(base + "/csms/new")
    page.fill("input[name=title]", "Draft title")
    page.check("input[name=topic][value='ACH Refunds']")
    page.fill("textarea[name=body]", "First words.")
    page.click("button:has-text('Save')")
    expect(page.locator(".flash")).to_have_text("Draft saved.")
    notice_id = int(re.search(r"/csms/(\d+)", page.url).group(1))

    # Open the saved draft: its fields are there; edit them and watch the preview follow.
    page.click("a:has-text('Edit')")
    expect(page.locator("h1")).to_have_text(f"Edit notice {notice_id}")
    assert page.input_value("input[name=title]") == "Draft title"
    assert page.input_value("textarea[name=body]") == "First words."
    page.fill("input[name=title]", "ACE Portal maintenance window")
    page.check("input[name=topic][value='ACE Portal']")
    page.fill("textarea[name=body]", "The **ACE Portal** will be unavailable on Saturday.")
    expect(page.locator("#preview-text")).to_contain_text("ACE Portal maintenance window")
    expect(page.locator("#preview-text")).to_contain_text("will be unavailable on Saturday")
    assert "<strong>ACE Portal</strong>" in page.get_attribute("#preview-html", "srcdoc")
    page.screenshot(path=str(shots / "csms-edit.png"), full_page=True)
    page.click("button:has-text('Save')")
    expect(page.locator(".flash")).to_have_text("Draft saved.")
    expect(page.locator("h1")).to_contain_text("ACE Portal maintenance window")
    assert "First words" not in page.inner_text("main")

    # Published with the confirmation's count (jo reads ACE Portal, carla both topics) ...
    page.click("text=Publish now")
    assert page.inner_text("#recipients") == "2"
    page.click("button:has-text('Publish to 2 subscriber(s)')")
    expect(page.locator("[data-count=sent]")).to_have_text("2", timeout=20_000)
    sent = smtp_capture.handler.wait_for(2, timeout=20)
    assert {m.rcpt_tos[0] for m in sent} == {"jo@broker.example", "carla@importadora.example"}
    assert all("ACE Portal maintenance window" in m.message["Subject"] for m in sent)
    # ... it can no longer be edited, and the console says so.
    assert page.locator("a:has-text('Edit')").count() == 0
    page.goto(f"{base}/csms/{notice_id}/edit")
    expect(page.locator(".flash")).to_contain_text("a published notice can no longer be edited")
    assert page.locator("textarea[name=body]").count() == 0
    context.close()
    with ctx.sessions() as session:
        notice = session.get(Notice, notice_id)
        edits = list(session.scalars(select(AuditEntry).where(AuditEntry.action == "csms.edit")))
    assert notice.title == "ACE Portal maintenance window" and notice.topics == ["ACE Portal", "ACH Refunds"]
    assert [(e.actor, e.detail["fields"]) for e in edits] == [("pat", ["title", "body", "topics"])]
