"""Benchmark of IMAP intake: 10,000 messages pulled from a private Dovecot into the database.

Run by hand (not by pytest), from the repository root:

    .venv/bin/python bench/ingest.py [--messages 10000] [--batch-size 500] [--rounds 3] [--one-connection]

It starts a private Dovecot like the test fixture, fills a mailbox per run with
realistic messages of a few KB (MULTIAPPEND, several connections), then measures

* a bare imapclient fetch of the mailbox (``UID FETCH BODY.PEEK[]`` in batches,
  nothing stored, nothing moved): what the server and the client library can do;
* the watcher's burst mode (``ImapWatcher.fetch_new``) into a fresh SQLite
  database, and into PostgreSQL when ``ACEDESK_TEST_DATABASE_URL`` is set:
  fetch, store (batches fetched while the database is busy share a
  transaction), MOVE to the processed folder on a second IMAP connection (the
  mover) while fetching goes on; ``--one-connection`` measures the fallback
  that moves on the fetch connection instead.

Each round uses a fresh mailbox and measures the bare fetch right before the
ingest, so the ratio compares like with like on a machine whose load varies;
the JSON reports medians over the rounds.  Progress goes to stderr; the last
line on stdout is one JSON object of figures.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from imapclient import IMAPClient  # noqa: E402
from sqlalchemy import func, select  # noqa: E402

from daemon.config import config_from_dict  # noqa: E402
from daemon.context import AppContext  # noqa: E402
from daemon.imap.watcher import ImapWatcher  # noqa: E402
from models.core import InboundMessage  # noqa: E402
from models.migrate import upgrade  # noqa: E402
from models.session import make_engine, make_sessionmaker  # noqa: E402
from bench.common import drop_schema, fill, postgres_schema, progress  # noqa: E402
from tests.servers import Dovecot, find_dovecot, free_port  # noqa: E402

def message(n: int, run: str) -> bytes:
    """Return a realistic help-desk message of 2-6 KB, unique per ``n``."""
    paragraphs = 3 + n % 9
    body = "\r\n\r\n".join(
        f"Paragraph {p}: our ACE portal account for filer code F{n % 997:03d} shows entry "
        f"{n:08d}-{p} as pending. The ABI status query returns no release and the carrier "
        "SCAC ABCD cannot file the in-bond. Please advise what we should correct before the "
        "vessel arrives; our broker says the bond is active and the surety code is 123."
        for p in range(paragraphs))
    return (f"From: Trade User {n} <user{n}@importer{n % 50}.example>\r\n"
            "To: helpdesk@ace-support.example\r\n"
            f"Subject: ACE entry {n:08d} pending release\r\n"
            "Date: Sun, 22 Nov 2026 08:00:00 +0000\r\n"
            f"Message-ID: <{n}.{run}@importer{n % 50}.example>\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
            "Content-Transfer-Encoding: 8bit\r\n\r\n"
            f"Hello,\r\n\r\n{body}\r\n\r\nRegards,\r\nTrade User {n}\r\n").encode()


def warm(server: Dovecot, user: str) -> int:
    """SELECT once so Dovecot builds its index before anything is timed; return the count."""
    client = server.client(user)
    try:
        return int(client.select_folder("INBOX")[b"EXISTS"])
    finally:
        client.logout()


def bare_fetch(server: Dovecot, user: str, batch_size: int) -> tuple[int, float]:
    """Fetch every message with plain imapclient (no DB, no MOVE); return (count, msgs/s)."""
    client = IMAPClient("127.0.0.1", port=server.port, ssl=False, timeout=60)
    client.login(user, server.password)
    started = time.perf_counter()
    client.select_folder("INBOX", readonly=True)
    uids = client.search(["ALL"])
    fetched = 0
    for start in range(0, len(uids), batch_size):
        response = client.fetch(uids[start:start + batch_size], [b"BODY.PEEK[]"])
        fetched += sum(1 for data in response.values() if data.get(b"BODY[]"))
    elapsed = time.perf_counter() - started
    client.logout()
    return fetched, fetched / elapsed


def ingest(server: Dovecot, user: str, db_url: str, workdir: Path, batch_size: int,
           use_mover: bool = True) -> tuple[int, float, float]:
    """Run the watcher's burst mode into ``db_url``; return (rows stored, msgs/s, CPU ms a message).

    The CPU is this process's, every thread's (fetch, database, mover): what the
    machine's load cannot distort, unlike msgs/s.
    """
    pw = workdir / "imap.pw"
    pw.write_text(server.password)
    config = config_from_dict({
        "database": {"url": db_url},
        "imap": {"mailboxes": [{"name": user, "host": "127.0.0.1", "port": server.port, "tls": "none",
                                "username": user, "password_file": str(pw), "batch_size": batch_size}]},
    }, base_dir=str(workdir))
    engine = make_engine(db_url, base_dir=str(workdir))
    upgrade(engine)
    ctx = AppContext(config=config, engine=engine, sessions=make_sessionmaker(engine), instance="bench")
    watcher = ImapWatcher(ctx, config.imap.mailboxes[0], use_mover=use_mover)
    started, cpu = time.perf_counter(), time.process_time()
    stored = watcher.fetch_new()
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    with ctx.sessions() as session:
        rows = session.scalar(select(func.count()).select_from(InboundMessage))
    engine.dispose()
    if rows != stored:
        raise SystemExit(f"bench: {stored} reported stored but {rows} rows in the database")
    return stored, stored / elapsed, 1000 * cpu / max(stored, 1)


#: Given a round number, a database URL for it and how to clean it up afterwards.
UrlFor = Callable[[int], tuple[str, Callable[[], None]]]


def run_backend(server: Dovecot, name: str, url_for: UrlFor, workdir: Path,
                args: argparse.Namespace) -> dict[str, Any]:
    """Fill, bare-fetch and ingest ``args.rounds`` times; return the median figures of one backend."""
    bares, rates, ratios, cpus = [], [], [], []
    for n in range(1, args.rounds + 1):
        user = server.new_user(f"bench-{name}-")
        rate = fill(server, user, args.messages, message)
        if warm(server, user) != args.messages:
            raise SystemExit(f"bench: {user} does not hold {args.messages} messages")
        progress(f"[{name} {n}/{args.rounds}] appended {args.messages} messages ({rate:,.0f} msgs/s)")
        count, bare = bare_fetch(server, user, args.batch_size)
        progress(f"[{name} {n}/{args.rounds}] bare imapclient fetch: {count} messages, {bare:,.0f} msgs/s "
                 f"(BODY.PEEK[] in batches of {args.batch_size}, nothing stored or moved)")
        url, cleanup = url_for(n)
        try:
            stored, rate, cpu = ingest(server, user, url, workdir / f"{name}{n}", args.batch_size,
                                  use_mover=not args.one_connection)
        finally:
            cleanup()
        progress(f"[{name} {n}/{args.rounds}] watcher -> {name}: {stored} stored and moved, "
                 f"{rate:,.0f} msgs/s ({rate / bare:.2f} of the bare fetch), {cpu:.3f} CPU ms a message")
        bares.append(bare)
        rates.append(rate)
        ratios.append(rate / bare)
        cpus.append(cpu)
    return {"cpu_ms_per_msg": round(statistics.median(cpus), 3), "bare": statistics.median(bares), "rate": statistics.median(rates),
            "ratio": statistics.median(ratios), "ratios": [round(r, 2) for r in ratios]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3,
                        help="fresh mailbox, bare fetch, then ingest, this many times; medians are reported")
    parser.add_argument("--one-connection", action="store_true",
                        help="move on the fetch connection (no mover), as for a server that limits connections")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    binary = find_dovecot()
    if binary is None:
        raise SystemExit("bench: Dovecot is not installed (apt-get install dovecot-imapd)")
    root = Path(tempfile.mkdtemp(prefix="acedesk-bench-dovecot-"))
    workdir = Path(tempfile.mkdtemp(prefix="acedesk-bench-"))
    server = Dovecot(root=root, port=free_port(), binary=binary)
    server.start()
    figures: dict[str, object] = {"messages": args.messages, "batch_size": args.batch_size,
                                  "rounds": args.rounds, "mover": not args.one_connection,
                                  "load_average": round(os.getloadavg()[0], 2)}
    try:
        def sqlite_url(n: int) -> tuple[str, Callable[[], None]]:
            (workdir / f"sqlite{n}").mkdir()
            return f"sqlite:///{workdir / f'sqlite{n}' / 'bench.db'}", lambda: None

        lite = run_backend(server, "sqlite", sqlite_url, workdir, args)
        figures.update(msgs_per_s=round(lite["rate"]), bare_fetch_msgs_per_s=round(lite["bare"]),
                       ratio=round(lite["ratio"], 2), ratios=lite["ratios"], cpu_ms_per_msg=lite["cpu_ms_per_msg"])
        if os.environ.get("ACEDESK_TEST_DATABASE_URL"):
            def pg_url(n: int) -> tuple[str, Callable[[], None]]:
                (workdir / f"postgresql{n}").mkdir()
                base = os.environ["ACEDESK_TEST_DATABASE_URL"]
                url, schema = postgres_schema(base)
                return url, lambda: drop_schema(base, schema)

            pg = run_backend(server, "postgresql", pg_url, workdir, args)
            figures.update(postgresql_msgs_per_s=round(pg["rate"]),
                           postgresql_bare_fetch_msgs_per_s=round(pg["bare"]),
                           postgresql_ratio=round(pg["ratio"], 2), postgresql_ratios=pg["ratios"],
                           postgresql_cpu_ms_per_msg=pg["cpu_ms_per_msg"])
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
