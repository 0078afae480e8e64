"""Scale-out benchmark: 1, 2 and 3 ``acedesk run`` instances on one
PostgreSQL database, each with ``--processes`` pipeline workers, working
through the same batch of stored mail to replies accepted by ``smtp-sink``.

Run by hand (not by pytest), from the repository root:

    .venv/bin/python bench/scaleout.py --database postgresql+psycopg://postgres@127.0.0.1:5432/test \
        [--messages 3000] [--instances 1,2,3] [--processes 1]

For each instance count it starts the instances on a fresh schema, waits
until every worker has loaded the model (start-up is not timed), stores the
bench mix (``bench/pipeline.py``'s messages) in one transaction, and times
until every message is done and every reply marked sent.  It reports
msgs/s and each instance's share of the decisions (from its log).  The last
line on stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import func, select  # noqa: E402

from bench.common import drop_schema, postgres_schema, progress, smtp_sink_binary, start_smtp_sink  # noqa: E402
from bench.pipeline import import_users, message  # noqa: E402
from daemon.intake.store import NewMessage, insert_messages  # noqa: E402
from models.core import DONE, InboundMessage  # noqa: E402
from models.migrate import upgrade  # noqa: E402
from models.outbox import SENT, OutboxMessage  # noqa: E402
from models.session import make_engine, make_sessionmaker, transaction  # noqa: E402
from tests.servers import free_port  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def config_file(root: Path, name: str, db_url: str, sink_port: int, processes: int) -> Path:
    path = root / f"{name}.toml"
    path.write_text(f"""
[database]
url = "{db_url}"
[logging]
level = "INFO"
[daemon]
state_dir = "{root / name}"
[ingress]
enabled = false
port = {free_port()}
[pipeline]
batch_size = 200
poll_interval = 0.5
processes = {processes}
[outbound]
relay_host = "127.0.0.1"
relay_port = {sink_port}
[csms]
http_host = ""
secret_env = "ACEDESK_BENCH_SECRET"
[responders]
autoreply_max = 1000000
secret_env = "ACEDESK_BENCH_SECRET"
[imap]
mailboxes = []
""")
    return path


def decisions(log: Path) -> int:
    return len(re.findall(r"acedesk\.respond\[w\d+\]: message \d+", log.read_text(errors="replace")))


def one_round(base: str, root: Path, instances: int, messages: int, processes: int, sink_port: int) -> dict:
    db_url, schema = postgres_schema(base)
    engine = make_engine(db_url)
    daemons: list[subprocess.Popen[bytes]] = []
    try:
        upgrade(engine)
        sessions = make_sessionmaker(engine)
        import_users(sessions)
        logs = [root / f"{instances}-{i}.log" for i in range(instances)]
        env = {**os.environ, "ACEDESK_BENCH_SECRET": "bench-secret-0123456789abcdef"}
        for i, log in enumerate(logs):
            config = config_file(root, f"{instances}-{i}", db_url, sink_port, processes)
            with open(log, "wb") as out:
                daemons.append(subprocess.Popen([sys.executable, "-m", "daemon.cli.main", "--config", str(config),
                                                 "run"], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + 120
        while not all(log.read_text(errors="replace").count("classify[w") >= processes for log in logs):
            if time.monotonic() > deadline:
                raise RuntimeError("the workers did not start")
            time.sleep(0.2)
        items = [NewMessage("helpdesk@ace-support.example", "cli", message(n, f"s{instances}"))
                 for n in range(messages)]
        load_before = os.getloadavg()[0]
        started = time.perf_counter()
        with transaction(sessions) as s:
            insert_messages(s, items)
        while True:
            with sessions() as s:
                done = s.scalar(select(func.count()).select_from(InboundMessage).where(InboundMessage.state == DONE))
                queued = s.scalar(select(func.count()).select_from(OutboxMessage))
                sent = s.scalar(select(func.count()).select_from(OutboxMessage).where(OutboxMessage.status == SENT))
            if done == messages and sent == queued:
                break
            if time.perf_counter() - started > 600:
                raise RuntimeError("timed out")
            time.sleep(0.2)
        seconds = time.perf_counter() - started
        shares = [decisions(log) for log in logs]
        figures = {"instances": instances, "processes_each": processes, "seconds": round(seconds, 2),
                   "msgs_per_s": round(messages / seconds, 1), "replies": sent,
                   "decisions_per_instance": shares, "load_average_1m": [round(load_before, 2),
                                                                         round(os.getloadavg()[0], 2)]}
        progress(f"{instances} instance(s): {figures['msgs_per_s']} msgs/s, decisions per instance {shares}")
        return figures
    finally:
        for daemon in daemons:
            daemon.send_signal(signal.SIGTERM)
        for daemon in daemons:
            try:
                daemon.wait(30)
            except subprocess.TimeoutExpired:
                daemon.kill()
        engine.dispose()
        drop_schema(base, schema)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", required=True, help="PostgreSQL URL (fresh schemas, dropped afterwards)")
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--instances", default="1,2,3")
    parser.add_argument("--processes", type=int, default=1, help="pipeline workers per instance")
    args = parser.parse_args()
    sink_bin = smtp_sink_binary()
    if sink_bin is None:
        progress("needs Postfix's smtp-sink: apt-get install postfix")
        return 2
    root = Path(tempfile.mkdtemp(prefix="acedesk-scaleout-"))
    sink_port = free_port()
    sink = start_smtp_sink(sink_bin, sink_port)
    try:
        rounds = [one_round(args.database, root, int(n), args.messages, args.processes, sink_port)
                  for n in args.instances.split(",")]
        print(json.dumps({"messages": args.messages, "cores": os.cpu_count(), "database": "postgresql",
                          "rounds": rounds}))
        return 0
    finally:
        sink.terminate()
        sink.wait(10)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
