"""``acedesk triage --json`` and ``acedesk classify --json`` call the very
functions the daemon's stages call: over every corpus file (the hard-case
mail of ``tests/data/corpora`` and the adversarial corpus) the dry run and
the daemon's stages give the same label, confidence, verification, action,
template and recipient, and quarantine the same files for the same reason."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from daemon.context import AppContext
from daemon.intake.store import NewMessage, insert_messages
from daemon.pipeline import build_stages
from daemon.worker import drain
from models.core import InboundMessage, QuarantineRecord
from models.migrate import upgrade
from models.responders import ResponseRecord
from models.session import make_engine, make_sessionmaker, transaction
from responders.users import parse_users_csv, upsert_users
from tests.test_corpora import corpus_files

REPO = Path(__file__).parents[1]
ADVERSARIAL = Path(__file__).parent / "data" / "adversarial"
DESK = "helpdesk@ace-support.example"


def cli(cfg: Path, *args: str) -> list[dict]:
    env = {**os.environ, "ACEDESK_CONFIG": str(cfg)}
    done = subprocess.run([sys.executable, "-m", "daemon.cli.main", *args], cwd=REPO, env=env, capture_output=True,
                          check=True, timeout=300)
    assert b"Traceback" not in done.stderr, done.stderr.decode()[-3000:]
    return [json.loads(line) for line in done.stdout.decode().splitlines()]


def with_users(url: str) -> None:
    engine = make_engine(url)
    upgrade(engine)
    rows, errors = parse_users_csv((ADVERSARIAL / "users.csv").read_text())
    assert not errors
    with transaction(make_sessionmaker(engine)) as s:
        upsert_users(s, [r for _, r in rows])
    engine.dispose()


@pytest.mark.slow
def test_triage_and_classify_agree_with_the_daemon_on_every_corpus_file(tmp_path, config_factory):
    files = [*corpus_files(), *sorted(ADVERSARIAL.glob("*.eml"))]
    daemon_url, dry_url = f"sqlite:///{tmp_path}/daemon.db", f"sqlite:///{tmp_path}/dry.db"
    sections = {"responders": {"autoreply_max": 1_000_000}}
    with_users(daemon_url)
    with_users(dry_url)

    # The daemon's stages, over every file as it would arrive.
    config = config_factory(daemon_url, **sections)
    engine = make_engine(daemon_url)
    ctx = AppContext(config=config, engine=engine, sessions=make_sessionmaker(engine), instance="test")
    with transaction(ctx.sessions) as s:
        for path in files:
            insert_messages(s, [NewMessage(DESK, "cli", path.read_bytes(), envelope_to=(path.name,))])
    drain(ctx.sessions, build_stages(ctx), config.pipeline)
    with ctx.sessions() as s:
        rows = {r.envelope_to[0]: r for r in s.scalars(select(InboundMessage))}
        records = {r.inbound_message_id: r for r in s.scalars(select(ResponseRecord))}
        reasons = {q.message_id: q.reason for q in s.scalars(select(QuarantineRecord))}
    engine.dispose()

    # The dry runs, as a user runs them, against a database holding only the users.
    cfg = tmp_path / "dry.toml"
    cfg.write_text(f'[database]\nurl = "{dry_url}"\n[daemon]\nstate_dir = "{tmp_path}/var"\n'
                   f'[responders]\nautoreply_max = 1000000\n')
    triaged = {Path(r["file"]).name: r for r in cli(cfg, "triage", "--json", "--desk", DESK, *map(str, files))}
    classified = {Path(r["file"]).name: r for r in cli(cfg, "classify", "--json", *map(str, files))}

    compared = duplicates = 0
    differences = []
    for path in files:
        row = rows.get(path.name)
        if row is None:  # the same bytes as an earlier file: stored once, by design
            duplicates += 1
            continue
        dry = triaged[path.name]
        if row.state == "quarantined":
            if (dry["action"]["kind"], dry["action"].get("reason")) != ("quarantine", reasons[row.id]):
                differences.append((path.name, "quarantined", reasons[row.id], dry["action"]))
            compared += 1
            continue
        record = records[row.id]
        if record.screen and record.screen.startswith("duplicate:"):
            duplicates += 1  # the daemon saw this Message-ID from this sender before: a dry run cannot
            continue
        daemon = (row.label, round(row.confidence or 0, 4), record.verification, record.action, record.template,
                  record.recipient)
        seen = (dry["label"], dry["confidence"], dry["verification"]["status"], dry["action"]["kind"],
                dry["action"]["template"], (dry.get("reply") or {}).get("to"))
        if row.state == "done" and row.label is None:  # screened at parse: never classified
            seen = (None, 0.0, *seen[2:])
        if daemon != seen:
            differences.append((path.name, daemon, seen))
        if row.label is not None:
            c = classified[path.name]
            if (c.get("label"), round(c.get("confidence") or 0, 4)) != (row.label, round(row.confidence, 4)):
                differences.append((path.name, "classify", c, row.label, row.confidence))
        compared += 1
    assert not differences, differences[:10]
    assert compared > 250 and duplicates < 40, (compared, duplicates)
