"""Benchmark of the whole pipeline: messages in a private Dovecot to replies
accepted by an SMTP server (Postfix's ``smtp-sink``).

Run by hand (not by pytest), from the repository root:

    .venv/bin/python bench/pipeline.py [--messages 10000] [--database URL] [--processes N]

It starts a private Dovecot (like the test fixture) and ``smtp-sink`` on
loopback ports, imports 1,000 users, fills a mailbox with a realistic mix of
help-desk mail (password resets from verified users with a trusted
Authentication-Results header, spoofed copies, AESDirect and refund questions
in English and Spanish, thanks, out-of-office auto-replies), then runs the
daemon's own components on one event loop -- the IMAP watcher, the pipeline
(parse, classify, respond) in ``--processes`` worker processes as ``acedesk
run`` does (0: in a thread of this process), and the outbox sender -- until every
message is done and every reply has been accepted by smtp-sink.  Filling the
mailbox is not timed, nor is the workers' start (spawning, imports, loading
the model: a running daemon has done it already): the clock starts, and the
IMAP watcher and the outbox sender start, once every worker has reported
ready.  The start-up is reported on its own (``startup_seconds``,
``startup_cpu_s``), with the rate it would give if it were counted
(``msgs_per_s_with_startup``).

The classifier is the shipped model.  Progress goes to stderr; the last line on
stdout is one JSON object of figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import func, select  # noqa: E402

from daemon.imap import watcher as imap_watcher  # noqa: E402
from daemon.app import PipelineWorker  # noqa: E402
from daemon.processes import WorkerProcesses  # noqa: E402
from daemon.config import config_from_dict  # noqa: E402
from daemon.context import make_context  # noqa: E402
from daemon.delivery.outbox import OutboxSender  # noqa: E402
from daemon.pipeline import build_stages  # noqa: E402
from daemon.stages.classify import make_stage as make_classify_stage  # noqa: E402
from models.core import DONE, FAILED, QUARANTINED, InboundMessage  # noqa: E402
from models.migrate import upgrade  # noqa: E402
from models.outbox import SENT, OutboxMessage  # noqa: E402
from models.session import transaction  # noqa: E402
from responders.users import parse_users_csv, upsert_users  # noqa: E402
from bench.common import bench_database, clean_up, fill, progress, signing_secret, smtp_sink_binary, start_smtp_sink  # noqa: E402
from tests.servers import Dovecot, Together, find_dovecot, free_port  # noqa: E402

TRUSTED = "mx.ace-support.example"
USERS = 1000


def users_csv() -> str:
    lines = ["user_id,email,name,role,identifier,account_owner_email,language"]
    for i in range(USERS):
        lines.append(f"USER{i:05d},user{i}@importer{i % 50}.example,Trade User {i},importer,,"
                     f"owner{i % 50}@importer{i % 50}.example,{'es' if i % 4 == 0 else 'en'}")
    return "\n".join(lines) + "\n"


def import_users(sessions: Any) -> None:
    """Put the bench's users on file (so that senders verify as they would in production)."""
    rows, _ = parse_users_csv(users_csv())
    with transaction(sessions) as s:
        upsert_users(s, [r for _, r in rows])


def desk_context(config: Any) -> Any:
    """Return the daemon's context for ``config`` on a migrated database with the bench's users."""
    ctx = make_context(config)
    upgrade(ctx.engine)
    import_users(ctx.sessions)
    return ctx


def message(n: int, run: str) -> bytes:
    """Return one message of the mix (2-4 KB), unique per ``n``."""
    u = n % USERS
    sender = f"user{u}@importer{u % 50}.example"
    kind = n % 10
    ar = f"Authentication-Results: {TRUSTED}; dkim=pass header.d=importer{u % 50}.example; " \
         f"dmarc=pass header.from=importer{u % 50}.example\r\n"
    extra = ""
    filler = ("We file entries every day through our broker and this is blocking our operations. " * 12)
    if kind in (0, 1, 2):
        subject, body = "Forgot my ACE password", f"I forgot my ACE Portal password and need to reset it. {filler}"
    elif kind == 3:
        subject, body = "Forgot my ACE password", f"Reset my password please. {filler}"
        ar = f"Authentication-Results: {TRUSTED}; dmarc=fail header.from=importer{u % 50}.example\r\n"
    elif kind == 4:
        subject, body = "AESDirect error", f"We get an AES error message when we submit the EEI export filing in AESDirect. {filler}"
    elif kind == 5:
        subject = "Reembolso por ACH"
        body = ("Buenos días, ¿cómo nos inscribimos para recibir reembolsos electrónicos por ACH en el Portal ACE? "
                "Necesitamos agregar la información bancaria. " * 6)
    elif kind == 6:
        subject, body = "ACE is down", f"ACE is very slow and our transactions are not processing since this morning. {filler}"
    elif kind == 7:
        subject, body = "Thank you", "Thanks for your help yesterday, all good now."
    elif kind == 8:
        subject, body = "Automatic reply: out of office", "I am out of the office until Monday."
        extra = "Auto-Submitted: auto-replied\r\nX-Autoreply: yes\r\n"
    else:
        subject, body = "Locked out of ACE", f"My ACE portal account is locked after too many attempts. {filler}"
    # As our border leaves it: its Authentication-Results above its own Received line.
    border = (f"Received: from mail.importer{u % 50}.example by {TRUSTED} (Postfix) with ESMTPS id {n};\r\n"
              "\tSun, 22 Nov 2026 08:00:00 +0000\r\n")
    return (ar + border + extra + f"From: Trade User {u} <{sender}>\r\nTo: helpdesk@ace-support.example\r\n"
            f"Subject: {subject}\r\nDate: Sun, 22 Nov 2026 08:00:00 +0000\r\n"
            f"Message-ID: <{n}.{run}@importer{u % 50}.example>\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
            f"Hello,\r\n\r\n{body}\r\n\r\nRegards,\r\nTrade User {u}\r\n").encode()



def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its reaped children (the worker processes)."""
    return main_cpu_seconds() + workers_cpu_seconds()


def main_cpu_seconds() -> float:
    """User + system CPU seconds of this process alone: IMAP intake, the outbox and the event loop."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    return me.ru_utime + me.ru_stime


def workers_cpu_seconds() -> float:
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return children.ru_utime + children.ru_stime


#: CPU seconds the bench itself spent counting rows (taken out of the main process's figure).
COUNTING = [0.0]


def counts(ctx) -> tuple[int, int, int, int]:
    started = time.thread_time()
    try:
        return _counts(ctx)
    finally:
        COUNTING[0] += time.thread_time() - started


def _counts(ctx) -> tuple[int, int, int, int]:
    with ctx.sessions() as s:
        total = s.scalar(select(func.count()).select_from(InboundMessage)) or 0
        done = s.scalar(select(func.count()).select_from(InboundMessage)
                        .where(InboundMessage.state.in_((DONE, QUARANTINED, FAILED)))) or 0
        queued = s.scalar(select(func.count()).select_from(OutboxMessage)) or 0
        sent = s.scalar(select(func.count()).select_from(OutboxMessage).where(OutboxMessage.status == SENT)) or 0
    return total, done, queued, sent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--database", default="", help="PostgreSQL URL: the bench runs in a fresh schema there, dropped afterwards "
                        "(default: a fresh SQLite file)")
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1,
                        help="pipeline worker processes (default: one per core; 0: a thread of this process)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    binary = find_dovecot()
    sink_bin = smtp_sink_binary()
    if binary is None or sink_bin is None:
        progress("needs Dovecot and Postfix's smtp-sink: apt-get install dovecot-imapd postfix")
        return 2
    root = Path(tempfile.mkdtemp(prefix="acedesk-bench-"))
    # mkdtemp is 0700: Dovecot's mail processes run as an unprivileged user and must reach the maildirs.
    root.chmod(0o755)
    server = Dovecot(root=root / "dovecot", port=free_port(), binary=binary)
    (root / "dovecot").mkdir(parents=True)
    sink_port = free_port()
    sink = start_smtp_sink(sink_bin, sink_port)
    schema = ""
    try:
        server.start()
        user = "bench"
        progress(f"filling the mailbox with {args.messages} messages ...")
        rate = fill(server, user, args.messages, message)
        progress(f"  appended at {rate:.0f} msgs/s (not timed)")
        pw = root / "imap.pw"
        pw.write_text(server.password)
        secret = signing_secret(root)
        db_url, schema = bench_database(root, args.database)
        config = config_from_dict({
            "database": {"url": db_url},
            "daemon": {"state_dir": str(root / "var")},
            "ingress": {"enabled": False, "port": free_port()},
            "pipeline": {"batch_size": 500, "poll_interval": 0.2, "processes": max(args.processes, 1)},
            "imap": {"mailboxes": [{"name": "helpdesk", "host": "127.0.0.1", "port": server.port,
                                    "tls": "none", "username": user, "password_file": str(pw),
                                    "batch_size": 500}]},
            "outbound": {"relay_host": "127.0.0.1", "relay_port": sink_port, "retry_min": 1.0},
            "responders": {"autoreply_max": 1_000_000, "secret_file": str(secret)},
            "csms": {"secret_file": str(secret)},
        }, base_dir=str(root))
        ctx = desk_context(config)
        classify = make_classify_stage(ctx)
        if classify is None:
            progress("no classifier model loads: run 'acedesk train' first")
            return 2
        # The daemon's own table (daemon.pipeline): automatic mail screened at parse goes on to respond too.
        stages = build_stages(ctx)
        progress(f"database: {ctx.engine.url.get_backend_name()}")

        loop = asyncio.new_event_loop()
        stop = asyncio.Event()
        pipeline = WorkerProcesses(ctx) if args.processes else PipelineWorker(ctx, stages)
        components = Together(*imap_watcher.make_components(ctx), OutboxSender(ctx, poll_interval=0.2))
        result: dict = {}

        async def watch() -> None:
            spawned = time.perf_counter()
            workers = asyncio.ensure_future(pipeline.run(stop))
            if isinstance(pipeline, WorkerProcesses):
                await pipeline.wait_ready()
            result["startup_seconds"] = time.perf_counter() - spawned
            result["cpu_before"] = cpu_seconds()
            result["main_cpu_before"] = main_cpu_seconds()
            started = time.perf_counter()
            last = 0.0
            task = asyncio.ensure_future(components.run(stop))
            try:
                while time.perf_counter() - started < args.timeout:
                    await asyncio.sleep(0.5)
                    total, done, queued, sent = await asyncio.to_thread(counts, ctx)
                    elapsed = time.perf_counter() - started
                    if elapsed - last >= 2.0:
                        progress(f"  {elapsed:6.1f} s: ingested {total}, done {done}, replies queued {queued}, "
                                 f"accepted by smtp-sink {sent}")
                        last = elapsed
                    if total >= args.messages and done >= args.messages and sent >= queued:
                        result.update(total=total, done=done, queued=queued, sent=sent, seconds=elapsed)
                        return
                result.update(timeout=True)
            finally:
                stop.set()
                await asyncio.wait_for(asyncio.gather(task, workers), 30)
                # The workers are reaped by now; their start-up CPU is not the per-message cost.
                result["startup_cpu"] = getattr(pipeline, "startup_cpu_seconds", 0.0)
                result["cpu"] = cpu_seconds() - result["cpu_before"] - result["startup_cpu"]
                result["main_cpu"] = main_cpu_seconds() - result["main_cpu_before"] - COUNTING[0]

        loop.run_until_complete(watch())
        loop.close()
        with ctx.sessions() as s:
            states = dict(s.execute(select(InboundMessage.state, func.count()).group_by(InboundMessage.state)).all())
            from models.responders import ResponseRecord
            actions = dict(s.execute(select(ResponseRecord.action, func.count()).group_by(ResponseRecord.action)).all())
        ctx.dispose()
        seconds = result.get("seconds")
        figures = {
            "messages": args.messages, "seconds": round(seconds, 2) if seconds else None,
            "msgs_per_s": round(args.messages / seconds, 1) if seconds else None,
            "startup_seconds": round(result["startup_seconds"], 2),
            "startup_cpu_s": round(result["startup_cpu"], 2),
            "msgs_per_s_with_startup": round(args.messages / (seconds + result["startup_seconds"]), 1)
            if seconds else None,
            "replies_accepted": result.get("sent"), "replies_per_s": round(result["sent"] / seconds, 1)
            if seconds else None,
            "states": states, "actions": actions, "classifier": "shipped model",
            "database": db_url.split(":")[0].split("+")[0], "smtp_server": "postfix smtp-sink", "cores": os.cpu_count(),
            "timed_out": bool(result.get("timeout")), "processes": args.processes,
            # CPU of this process and its workers (not Dovecot's or smtp-sink's): what the machine's load
            # cannot distort; 2 cores / this = the throughput both cores could give with nothing else running.
            "cpu_ms_per_msg": round(1000 * result["cpu"] / args.messages, 3),
            # Of which the main process (IMAP fetch and store, the outbox, the event loop; not the bench's
            # own counting): with worker processes, the part that does not spread over the cores.
            "main_cpu_ms_per_msg": round(1000 * result["main_cpu"] / args.messages, 3),
            "load_average_1m": round(os.getloadavg()[0], 2),
        }
        print(json.dumps(figures))
        return 0 if seconds else 1
    finally:
        server.stop()
        clean_up(sink, root, args.database, schema)


if __name__ == "__main__":
    sys.exit(main())
