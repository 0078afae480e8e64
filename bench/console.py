"""Benchmark: the console's queue page and dashboard with 100,000 queue items.

    .venv/bin/python bench/console.py [--items 100000] [--requests 40] [--database-url URL]

It creates a database (a fresh SQLite file; with ``--database-url`` a fresh
schema in that PostgreSQL database, dropped afterwards), fills it with
``--items`` open triage items, each with its ticket, inbound message and
decision record spread over 28 days, starts the web server in this process,
logs in, and times ``--requests`` GETs each of: the queue's first page, the
queue filtered by label and language, a deep page (keyset paging after the
middle item), and the 28-day dashboard.  The last line is one JSON object
with, per page, the first request (which computes the cached counts and
figures) and p50/p95 milliseconds of the rest (target: p95 <= 200 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import http.client
import json
import random
import re
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import insert, select  # noqa: E402

from bench.common import drop_schema, postgres_schema, progress  # noqa: E402
from classifiers.labels import LABELS  # noqa: E402
from daemon.config import config_from_dict  # noqa: E402
from daemon.context import make_context  # noqa: E402
from daemon.notices.fanout import load_signer  # noqa: E402
from daemon.web.accounts import add_analyst  # noqa: E402
from daemon.web.server import WebServer  # noqa: E402
from models.base import utcnow  # noqa: E402
from models.core import DONE, InboundMessage  # noqa: E402
from models.migrate import upgrade  # noqa: E402
from models.responders import ResponseRecord, Ticket, TicketMessage, TriageItem  # noqa: E402
from models.session import transaction  # noqa: E402
from tests.servers import free_port, wait_for_port  # noqa: E402

PASSWORD = "bench-password-1"
CHUNK = 5000


def fill(ctx, items: int) -> float:  # type: ignore[no-untyped-def]
    rng = random.Random(7)
    now = utcnow()
    started = time.perf_counter()
    verifications = ["verified", "unknown", "unauthenticated", "mismatch"]
    for base in range(0, items, CHUNK):
        n = min(CHUNK, items - base)
        messages, tickets, history, triage, records = [], [], [], [], []
        for i in range(base, base + n):
            ident = i + 1
            created = now - dt.timedelta(minutes=rng.randint(0, 28 * 24 * 60))
            label = rng.choice(LABELS)
            language = "es" if rng.random() < 0.2 else "en"
            verification = rng.choice(verifications)
            raw = f"From: u{i}@broker.example\r\nSubject: question {i}\r\n\r\nbody {i}\r\n".encode()
            messages.append(dict(id=ident, desk="helpdesk@ace-support.example", source="cli", raw=raw, size=len(raw),
                                 sha256=f"{i:064x}", message_id=f"<{i}@broker.example>", received_at=created,
                                 state=DONE, attempts=0, label=label, confidence=rng.random(), auto=False,
                                 language=language, updated_at=created))
            responded = created + dt.timedelta(hours=rng.expovariate(1 / 2.5)) if rng.random() < 0.6 else None
            tickets.append(dict(id=ident, number=f"ACE-2026-{ident:06d}", status="open", priority=rng.choice(
                ["normal"] * 9 + ["high"]), label=label, language=language, requester=f"u{i}@broker.example",
                verification=verification, subject=f"question {i}", security=rng.random() < 0.03,
                created_at=created, due_at=created + dt.timedelta(hours=4), first_response_at=responded,
                updated_at=created))
            history.append(dict(ticket_id=ident, direction="in", inbound_message_id=ident, author=f"u{i}@broker.example",
                                text=f"body {i}", created_at=created))
            triage.append(dict(ticket_id=ident, inbound_message_id=ident, reason="policy", security=False,
                               status="open", label=label, confidence=rng.random(), created_at=created))
            records.append(dict(inbound_message_id=ident, verification=verification,
                                action="reply" if rng.random() < 0.5 else "triage", created_at=created))
        with transaction(ctx.sessions) as session:
            for model, rows in ((InboundMessage, messages), (Ticket, tickets), (TicketMessage, history),
                                (TriageItem, triage), (ResponseRecord, records)):
                session.execute(insert(model), rows)
        progress(f"filled {base + n}/{items}")
    return time.perf_counter() - started


class Server:
    def __init__(self, ctx) -> None:  # type: ignore[no-untyped-def]
        self.component = WebServer(ctx, load_signer(ctx.config))
        self.loop = asyncio.new_event_loop()
        self.stop = asyncio.Event()
        self.thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.component.run(self.stop))

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(10)


def request(port: int, path: str, cookie: str = "", form: dict | None = None) -> tuple[int, dict, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Cookie": cookie} if cookie else {}
    body = None
    if form is not None:
        body = urlencode(form)
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    conn.request("POST" if form is not None else "GET", path, body=body, headers=headers)
    response = conn.getresponse()
    headers = {k.lower(): v for k, v in response.getheaders()}
    headers["set-cookie"] = "; ".join(c for c in response.msg.get_all("set-cookie") or []
                                      if "acedesk_session=" in c) or headers.get("set-cookie", "")
    result = response.status, headers, response.read().decode()
    conn.close()
    return result


def login(port: int) -> str:
    _, headers, page = request(port, "/login")
    pre = headers["set-cookie"].split(";")[0]
    csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    status, headers, _ = request(port, "/login", pre, {"name": "bench", "password": PASSWORD, "csrf": csrf})
    assert status == 303, status
    return headers["set-cookie"].split(";")[0]


def timed(port: int, cookie: str, path: str, count: int) -> dict[str, float]:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        status, _, page = request(port, path, cookie)
        times.append((time.perf_counter() - started) * 1000)
        assert status == 200, (path, status, page[:200])
    times.sort()
    return {"p50_ms": round(statistics.median(times), 1), "p95_ms": round(times[int(len(times) * 0.95) - 1], 1),
            "max_ms": round(times[-1], 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--database-url", default="", help="PostgreSQL URL (default: a fresh SQLite file)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="acedesk-bench-console-"))
    schema = ""
    db_url = f"sqlite:///{tmp}/bench.db"
    if args.database_url:
        db_url, schema = postgres_schema(args.database_url)
    port = free_port()
    config = config_from_dict({"database": {"url": db_url}, "daemon": {"state_dir": str(tmp / "var")},
                               "web": {"listen": f"127.0.0.1:{port}", "secure_cookies": False}}, base_dir=str(tmp))
    ctx = make_context(config)
    server = None
    try:
        upgrade(ctx.engine)
        with transaction(ctx.sessions) as session:
            add_analyst(session, "bench", "admin", PASSWORD)
        seconds = fill(ctx, args.items)
        progress(f"{args.items} queue items in {seconds:.1f} s")
        with ctx.engine.connect() as conn:
            if schema:
                # What autovacuum does shortly after a bulk load.
                conn.exec_driver_sql("ANALYZE")
            else:
                # As a long-running install would be: the write-ahead log folded into the database.
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
            conn.commit()
        with ctx.sessions() as session:
            middle = session.execute(select(Ticket.due_at, TriageItem.id).join(Ticket, Ticket.id == TriageItem.ticket_id)
                                     .order_by(Ticket.due_at, TriageItem.id).offset(args.items // 2).limit(1)).one()
        server = Server(ctx)
        server.start()
        wait_for_port(port, 30)
        cookie = login(port)
        pages = {
            "queue": "/queue",
            "queue_filtered": "/queue?" + urlencode({"label": "ach_refund", "language": "es"}),
            "queue_deep_page": "/queue?" + urlencode({"after": f"{middle[0].isoformat()}_{middle[1]}"}),
            "dashboard": "/dashboard?days=28",
        }
        figures: dict[str, object] = {"items": args.items, "database": "postgresql" if schema else "sqlite",
                                      "fill_seconds": round(seconds, 1)}
        for name, path in pages.items():
            started = time.perf_counter()
            request(port, path, cookie)  # the first: templates compiled, counts and figures computed
            first = round((time.perf_counter() - started) * 1000, 1)
            figures[name] = {"first_ms": first, **timed(port, cookie, path, args.requests)}
            progress(f"{name}: {figures[name]}")
    finally:
        if server is not None:
            server.close()
        ctx.dispose()
        if schema:
            drop_schema(args.database_url, schema)
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
