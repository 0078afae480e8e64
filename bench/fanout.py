"""Benchmark of the CSMS fan-out: one notice personalised for every subscriber
and accepted by an SMTP server (Postfix's ``smtp-sink``).

Run by hand (not by pytest), from the repository root:

    .venv/bin/python bench/fanout.py [--subscribers 100000] [--database-url URL] [--dkim]

``--dkim`` signs every copy (RFC 6376) with a fresh 2048-bit RSA key, as
``[csms] dkim_key_file`` does in production.

It creates a database (a fresh SQLite file; with ``--database-url`` a fresh
schema in that PostgreSQL database, dropped afterwards), 100,000 subscribers
over four topics (a third of them on two), a notice to all four, so that
every subscriber gets exactly one copy (the seed notice's text, ~12 KB a
message), starts ``smtp-sink`` on a free loopback port, and times
``csms.service.start_publish`` (planning: one delivery row per subscriber)
and then :func:`daemon.notices.fanout.publish` (the fan-out itself) until the
notice is done.  Creating the subscribers is not timed.

CPU: ``process_cpu_s`` is this process's CPU time during the fan-out plus
that of the sender processes it spawned (``--processes``, default one per
core), so it compares across process counts; ``cpu_ms_per_msg`` divides it.

Memory: the peak RSS of the process over the whole run (``getrusage``), and
the RSS sampled every 50 ms during the fan-out (this process's; each spawned
sender holds at most two chunks the same way) (its growth is what has to be
flat in the number of subscribers: run with ``--subscribers 10000`` and
``100000`` and compare).  smtp-sink's own counter confirms how many messages
it took.  Progress goes to stderr; the last line on stdout is one JSON object
of figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import insert, select  # noqa: E402

from bench.common import bench_database, clean_up, progress, signing_secret, smtp_sink_binary, start_smtp_sink  # noqa: E402
from csms import service  # noqa: E402
from daemon.config import config_from_dict  # noqa: E402
from daemon.context import make_context  # noqa: E402
from daemon.notices import fanout  # noqa: E402
from daemon.notices.fanout import Progress, publish  # noqa: E402
from models.base import utcnow  # noqa: E402
from models.csms import ACTIVE, Notice, Subscriber, Subscription  # noqa: E402
from models.migrate import upgrade  # noqa: E402
from models.session import transaction  # noqa: E402
from tests.servers import free_port  # noqa: E402

TOPICS = ["ACE", "ACE Portal", "ACH Refunds", "Cargo Release"]
SEEDS = Path(__file__).resolve().parent.parent.parent / "shared" / "seeds"


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # KiB on Linux


class RssSampler(threading.Thread):
    """The highest RSS seen while running (sampled; getrusage only knows the whole process's peak)."""

    def __init__(self, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.peak = rss_mb()
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(self.interval):
            self.peak = max(self.peak, rss_mb())


def notice_body() -> str:
    seeds = sorted(SEEDS.glob("004_*.txt"))
    if seeds:
        return seeds[0].read_text(encoding="utf-8")
    return ("On February 6, 2026, CBP began issuing all refunds electronically via ACH.\n\n" * 40)


def make_subscribers(ctx, count: int) -> None:
    """``count`` subscribers, each on one or two of :data:`TOPICS` (inserted in bulk, not timed)."""
    with transaction(ctx.sessions) as s:
        ids = service.ensure_topics(s, TOPICS)
    topic_ids = [ids[t] for t in TOPICS]
    step = 10_000
    for first in range(0, count, step):
        now = utcnow()
        with transaction(ctx.sessions) as s:
            s.execute(insert(Subscriber), [
                {"email": f"subscriber{i}@importer{i % 997}.example", "language": "en", "status": ACTIVE,
                 "created_at": now, "updated_at": now} for i in range(first, min(count, first + step))])
            rows = s.execute(select(Subscriber.id).where(Subscriber.id > 0).order_by(Subscriber.id.desc())
                             .limit(min(step, count - first))).scalars().all()
            subs = []
            for sid in rows:
                subs.append({"subscriber_id": sid, "topic_id": topic_ids[sid % 4], "created_at": now})
                if sid % 3 == 0:
                    subs.append({"subscriber_id": sid, "topic_id": topic_ids[(sid + 1) % 4], "created_at": now})
            s.execute(insert(Subscription), subs)


def sink_count(path: Path) -> int | None:
    counters = re.findall(rb"mesg=(\d+)", path.read_bytes()) if path.exists() else []
    return int(counters[-1]) if counters else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=100_000)
    parser.add_argument("--database-url", default="", help="PostgreSQL URL (default: a fresh SQLite file)")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--chunk-size", type=int, default=1000)
    parser.add_argument("--processes", type=int, default=0, help="sender processes (default: one per core)")
    parser.add_argument("--rate", type=float, default=0.0, help="messages/s limit (default: none)")
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--dkim", action="store_true", help="DKIM-sign every copy (a 2048-bit RSA key)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    sink_bin = smtp_sink_binary()
    if sink_bin is None:
        progress("needs Postfix's smtp-sink: apt-get install postfix")
        return 2
    root = Path(tempfile.mkdtemp(prefix="acedesk-fanout-"))
    schema = ""
    db_url, schema = bench_database(root, args.database_url)
    sink_port = free_port()
    sink_out = root / "sink.out"
    # Its message counter confirms what the sink took.
    sink = start_smtp_sink(sink_bin, sink_port, counter=sink_out)
    ctx = None
    secret_file = signing_secret(root)
    key_file = root / "dkim.pem"
    if args.dkim:
        subprocess.run(["openssl", "genrsa", "-out", str(key_file), "2048"], check=True, capture_output=True)
    try:
        config = config_from_dict({
            "database": {"url": db_url},
            "daemon": {"state_dir": str(root / "var")},
            "ingress": {"enabled": False, "port": free_port()},
            "outbound": {"relay_host": "127.0.0.1", "relay_port": sink_port, "timeout": 30.0},
            "csms": {"connections": args.connections, "chunk_size": args.chunk_size,
                     "fanout_processes": args.processes,
                     "rate_per_second": args.rate, "base_url": "https://csms.ace-support.example",
                     "secret_file": str(secret_file), "dkim_key_file": str(key_file) if args.dkim else ""},
        }, base_dir=str(root))
        ctx = make_context(config)
        upgrade(ctx.engine)
        backend = ctx.engine.url.get_backend_name()
        progress(f"creating {args.subscribers} subscribers ({backend}) ...")
        t0 = time.perf_counter()
        make_subscribers(ctx, args.subscribers)
        progress(f"  {time.perf_counter() - t0:.1f} s (not timed)")
        with transaction(ctx.sessions) as s:
            notice = service.create_notice(s, title="Support Call Today for Electronic Refund and Add Notify "
                                           "Party Features in the ACE Portal", type="REMINDER",
                                           body=notice_body(), topics=TOPICS, tags=["Deadline"])
            notice_id = notice.id
        rss_before_plan = rss_mb()
        t0 = time.perf_counter()
        with transaction(ctx.sessions) as s:
            total = service.start_publish(s, s.get(Notice, notice_id), utcnow(),
                                          number_start=config.csms.number_start)
        plan_seconds = time.perf_counter() - t0
        progress(f"start_publish: {total} deliveries planned in {plan_seconds:.2f} s")

        last = [0.0]

        def show(p: Progress) -> None:
            now = time.perf_counter()
            if now - last[0] >= 2.0:
                last[0] = now
                progress(f"  sent {p.sent}/{p.total}, failed {p.failed}, {p.rate:.0f} msgs/s, RSS {rss_mb():.0f} MB")

        sampler = RssSampler()
        rss_before = rss_mb()
        sampler.start()
        cpu0, children0 = time.process_time(), children_cpu_s()
        t0 = time.perf_counter()
        result = asyncio.run(asyncio.wait_for(publish(ctx, notice_id, progress=show), args.timeout))
        seconds = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        # The spawned sender processes (joined by now); smtp-sink is still running, so not in it.
        senders_cpu = children_cpu_s() - children0
        sampler.halt.set()
        sampler.join()
        time.sleep(0.3)   # smtp-sink updates its counter when a session ends
        with ctx.sessions() as s:
            status = s.get(Notice, notice_id).status
        figures = {
            "subscribers": args.subscribers, "deliveries": total, "sent": result.sent, "failed": result.failed,
            "pending": result.pending, "notice_status": status, "sink_received": sink_count(sink_out),
            "plan_seconds": round(plan_seconds, 2), "publish_seconds": round(seconds, 2),
            "msgs_per_s": round(result.sent / seconds, 1) if seconds else None,
            "process_cpu_s": round(cpu + senders_cpu, 2), "main_process_cpu_s": round(cpu, 2),
            "sender_processes_cpu_s": round(senders_cpu, 2),
            "cpu_ms_per_msg": round(1000 * (cpu + senders_cpu) / result.sent, 3) if result.sent else None,
            "fanout_processes": fanout.sender_processes(config),
            "rss_mb_before_publish": round(rss_before, 1), "rss_mb_peak_during_publish": round(sampler.peak, 1),
            "rss_mb_growth_during_publish": round(sampler.peak - rss_before, 1),
            "rss_mb_before_planning": round(rss_before_plan, 1), "peak_rss_mb_process": round(peak_rss_mb(), 1),
            "message_bytes": _message_size(ctx, notice_id), "connections": args.connections, "chunk_size": args.chunk_size,
            "database": backend, "smtp_server": "postfix smtp-sink", "cores": os.cpu_count(),
            "dkim": "rsa-sha256 2048" if args.dkim else "off",
        }
        progress(f"published {result.sent} in {seconds:.2f} s: {figures['msgs_per_s']} msgs/s; "
                 f"RSS {rss_before:.0f} MB -> peak {sampler.peak:.0f} MB during the fan-out")
        print(json.dumps(figures))
        return 0 if result.pending == 0 and result.sent == total else 1
    finally:
        if ctx is not None:
            ctx.dispose()
        clean_up(sink, root, args.database_url, schema)


def _message_size(ctx, notice_id: int) -> int:
    """The size of one personalised message (for the figures)."""
    from csms.message import MessageTemplate
    from daemon.notices.fanout import load_signer, sender_of

    with ctx.sessions() as s:
        view = service.view(s, s.get(Notice, notice_id))
    from daemon.notices.keys import dkim_key

    template = MessageTemplate(view, sender_of(ctx.config), load_signer(ctx.config), 86400.0,
                               dkim=dkim_key(ctx.config))
    return len(template.build("subscriber1@importer1.example", 1, "ACE")[1])


if __name__ == "__main__":
    sys.exit(main())
