"""Latency benchmark: mail offered at a steady rate to a Dovecot mailbox
watched with IDLE, to the reply accepted by an SMTP server (``smtp-sink``).

Run by hand (not by pytest), from the repository root:

    .venv/bin/python bench/latency.py [--rate 50] [--seconds 20] [--database URL] [--processes N]

It starts a private Dovecot and ``smtp-sink``, imports the users of
``bench/pipeline.py``, and runs the daemon's own components on one event loop
(the IMAP watcher with IDLE, the pipeline in worker processes, the outbox
sender).  Once the workers are ready, a separate thread APPENDs one message
of the bench mix at a time on a fixed schedule (``--rate`` a second).  The
latency of a message is from its APPEND (accepted by Dovecot) to the
``sent`` mark of its reply (committed within 50 ms of smtp-sink's 250).
Progress goes to stderr; the last line on stdout is one JSON object with the
p50/p90/p99/max latency of the replies.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import logging
import os
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import select  # noqa: E402

from bench.common import bench_database, clean_up, progress, signing_secret, smtp_sink_binary, start_smtp_sink  # noqa: E402
from bench.pipeline import desk_context, message  # noqa: E402
from daemon.config import config_from_dict  # noqa: E402
from daemon.delivery.outbox import OutboxSender  # noqa: E402
from daemon.imap import watcher as imap_watcher  # noqa: E402
from daemon.processes import WorkerProcesses  # noqa: E402
from models.core import InboundMessage  # noqa: E402
from models.outbox import SENT, OutboxMessage  # noqa: E402
from tests.servers import Dovecot, Together, find_dovecot, free_port  # noqa: E402


def offer(server: Dovecot, user: str, count: int, rate: float, run: str, sent_at: dict[str, float]) -> None:
    """APPEND ``count`` messages at ``rate`` a second on one connection, recording each one's time."""
    client = server.client(user)
    started = time.time()
    for n in range(count):
        due = started + n / rate
        pause = due - time.time()
        if pause > 0:
            time.sleep(pause)
        raw = message(n, run)
        client.append("INBOX", raw)
        sent_at[f"<{n}.{run}@importer{(n % 1000) % 50}.example>"] = time.time()
    client.logout()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=50.0, help="messages offered a second")
    parser.add_argument("--seconds", type=float, default=20.0, help="how long mail is offered")
    parser.add_argument("--database", default="", help="PostgreSQL URL (a fresh schema); default a fresh SQLite file")
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1, help="pipeline worker processes")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    binary, sink_bin = find_dovecot(), smtp_sink_binary()
    if binary is None or sink_bin is None:
        progress("needs Dovecot and Postfix's smtp-sink: apt-get install dovecot-imapd postfix")
        return 2
    count = int(args.rate * args.seconds)
    root = Path(tempfile.mkdtemp(prefix="acedesk-latency-"))
    root.chmod(0o755)  # Dovecot's mail processes must reach the maildirs
    (root / "dovecot").mkdir()
    server = Dovecot(root=root / "dovecot", port=free_port(), binary=binary)
    sink_port = free_port()
    sink = start_smtp_sink(sink_bin, sink_port)
    schema = ""
    try:
        server.start()
        user = "bench"
        server.client(user).logout()  # the maildir exists before the watcher selects it
        pw = root / "imap.pw"
        pw.write_text(server.password)
        secret = signing_secret(root)
        db_url, schema = bench_database(root, args.database)
        config = config_from_dict({
            "database": {"url": db_url}, "daemon": {"state_dir": str(root / "var")},
            "ingress": {"enabled": False, "port": free_port()},
            "pipeline": {"poll_interval": 1.0, "processes": max(1, args.processes)},
            "imap": {"mailboxes": [{"name": "helpdesk", "host": "127.0.0.1", "port": server.port, "tls": "none",
                                    "username": user, "password_file": str(pw)}]},
            "outbound": {"relay_host": "127.0.0.1", "relay_port": sink_port, "retry_min": 1.0},
            "responders": {"autoreply_max": 1_000_000, "secret_file": str(secret)},
            "csms": {"secret_file": str(secret)},
        }, base_dir=str(root))
        ctx = desk_context(config)
        workers = WorkerProcesses(ctx)
        components = Together(*imap_watcher.make_components(ctx), workers,
                              OutboxSender(ctx, poll_interval=config.pipeline.poll_interval))
        appended: dict[str, float] = {}
        run = uuid.uuid4().hex[:8]
        stop = asyncio.Event()

        async def measure() -> dict:
            task = asyncio.ensure_future(components.run(stop))
            try:
                await asyncio.sleep(8.0)  # the workers load the model (start-up is not the test)
                progress(f"offering {count} messages at {args.rate:.0f}/s ...")
                load_before = os.getloadavg()[0]
                feeder = threading.Thread(target=offer, args=(server, user, count, args.rate, run, appended))
                feeder.start()
                deadline = time.monotonic() + args.seconds + 30
                while time.monotonic() < deadline:
                    await asyncio.sleep(1.0)
                    replies = await asyncio.to_thread(latencies, ctx, appended)
                    progress(f"  offered {len(appended)}, replies accepted {len(replies)}")
                    if not feeder.is_alive() and len(replies) >= expected_replies(count):
                        break
                feeder.join()
                return {"latencies": await asyncio.to_thread(latencies, ctx, appended), "load_before": load_before}
            finally:
                stop.set()
                await asyncio.wait_for(task, 60)

        loop = asyncio.new_event_loop()
        measured = loop.run_until_complete(measure())
        loop.close()
        ctx.dispose()
        values = list(measured["latencies"].values())
        missing = sorted(set(appended) - set(measured["latencies"]), key=lambda m: int(m[1:].split(".")[0]))
        missing = [m for m in missing if int(m[1:].split(".")[0]) % 10 not in (7, 8)]
        if missing:
            progress(f"no reply accepted for {len(missing)}: {', '.join(missing[:10])}")
        figures = {
            "offered": count, "rate": args.rate, "replies": len(values),
            "p50_s": round(percentile(values, 0.50), 3) if values else None,
            "p90_s": round(percentile(values, 0.90), 3) if values else None,
            "p99_s": round(percentile(values, 0.99), 3) if values else None,
            "max_s": round(max(values), 3) if values else None,
            "database": db_url.split(":")[0].split("+")[0], "processes": args.processes, "cores": os.cpu_count(),
            "load_average_1m": [round(measured["load_before"], 2), round(os.getloadavg()[0], 2)],
        }
        print(json.dumps(figures))
        return 0 if values else 1
    finally:
        server.stop()
        clean_up(sink, root, args.database, schema)


def expected_replies(count: int) -> int:
    """Messages of the mix that get a reply (all but the thanks and the auto-replies: kinds 7 and 8)."""
    return sum(1 for n in range(count) if n % 10 not in (7, 8))


def latencies(ctx, appended: dict[str, float]) -> dict[str, float]:
    """Return seconds from APPEND to the reply's ``sent`` mark, by Message-ID of the message answered."""
    with ctx.sessions() as s:
        rows = s.execute(select(InboundMessage.message_id, OutboxMessage.sent_at)
                         .join(OutboxMessage, OutboxMessage.inbound_message_id == InboundMessage.id)
                         .where(OutboxMessage.status == SENT)).all()
    out = {}
    for message_id, sent in rows:
        at = appended.get(message_id or "")
        if at is not None and sent is not None:
            out[message_id] = sent.replace(tzinfo=dt.timezone.utc).timestamp() - at
    return out


if __name__ == "__main__":
    sys.exit(main())
