"""The adversarial corpus (``tests/data/adversarial``, written from issue 9's
attack classes): every file through ``acedesk triage --json`` as a user runs
it, each expectation of ``expected.csv`` checked, plus the properties that
hold for every file whatever it is (one record each, no account answer to
anyone but a verified user at the address on file, no line break in a reply
Subject, no SSN echoed); then a sample through a running daemon over SMTP,
which must decide exactly as the dry run did.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import smtplib
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from models.core import InboundMessage, QuarantineRecord
from models.responders import ResponseRecord
from models.session import make_engine, make_sessionmaker
from tests.servers import free_port

REPO = Path(__file__).parents[1]
CORPUS = Path(__file__).parent / "data" / "adversarial"
ACCOUNT_TEMPLATES = {"password_reset", "account_locked"}
SSN_SHAPES = ("123-45-6789", "123 45 6789", "123456789", "123.45.6789")
ON_FILE = {"ALICE01": "alice@broker.example", "OWNER01": "owner@broker.example", "jsmith": "jsmith@broker.example",
           "BOB02": "bob@carrier.example", "CARLA03": "carla@importadora.example",
           "mgarcia": "mgarcia@importadora.example", "DAVE04": "dave@exporter.example", "SURE05": "sure@surety.example"}


def expectations() -> list[dict[str, str]]:
    with (CORPUS / "expected.csv").open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def matches(value: str | None, expected: str) -> bool:
    """``expected`` is ``a|b`` (any of them) or ``!x`` (not x)."""
    if expected.startswith("!"):
        return value != expected[1:]
    return value in expected.split("|")


def problems(record: dict, expect: dict[str, str]) -> list[str]:
    """Return how ``record`` (one triage JSON line) breaks ``expect`` or the corpus-wide properties."""
    found = []
    action = record["action"]
    verification = record["verification"]
    reply = record.get("reply")
    if expect.get("verification") and not matches(verification["status"], expect["verification"]):
        found.append(f"verification {verification['status']}, expected {expect['verification']}")
    if expect.get("impersonation") and str(bool(verification.get("impersonation"))).lower() != expect["impersonation"]:
        found.append(f"impersonation {verification.get('impersonation')}, expected {expect['impersonation']}")
    if expect.get("action") and not matches(action["kind"], expect["action"]):
        found.append(f"action {action['kind']}, expected {expect['action']}")
    if expect.get("screen") == "set" and not record.get("screen"):
        found.append("not screened")
    if expect.get("screen") == "null" and record.get("screen"):
        found.append(f"screened: {record.get('screen')}")
    to = expect.get("reply_to", "")
    if to == "none" and reply:
        found.append(f"a reply went to {reply['to']}")
    elif to.startswith("!") and reply and reply["to"] == to[1:]:
        found.append(f"a reply went to {reply['to']}")
    elif to and to != "none" and not to.startswith("!") and reply and reply["to"] != to:
        found.append(f"a reply went to {reply['to']}, expected {to}")
    account = action.get("template") in ACCOUNT_TEMPLATES
    if expect.get("account_answer") == "no" and account:
        found.append(f"account answer {action.get('template')} went out")
    # Properties of every file.
    if account and reply is not None:
        if verification["status"] != "verified":
            found.append("an account answer to an unverified sender")
        elif reply["to"] != ON_FILE.get(verification["user_id"]):
            found.append(f"an account answer to {reply['to']}, not the address on file")
    if reply is not None:
        subject = reply["subject"]
        if any(c in subject for c in "\r\n\x00\x0b\x0c\x85\u2028\u2029"):
            found.append(f"a line break in the reply Subject {subject!r}")
        for shape in SSN_SHAPES:
            if shape in subject or shape in reply["text"]:
                found.append(f"SSN-shaped number echoed: {shape}")
        if expect.get("reply_not_contains") and (expect["reply_not_contains"] in subject
                                                 or expect["reply_not_contains"] in reply["text"]):
            found.append(f"the reply contains {expect['reply_not_contains']!r}")
    if action["kind"] == "quarantine" and not action.get("reason"):
        found.append("quarantined without a reason")
    return found


def write_config(tmp_path: Path, db_url: str, **ingress: object) -> Path:
    cfg = tmp_path / "config.toml"
    extra = "".join(f"{k} = {json.dumps(v)}\n" for k, v in ingress.items())
    cfg.write_text(f"""
[database]
url = "{db_url}"
[daemon]
state_dir = "{tmp_path}/var"
shutdown_timeout = 5.0
[ingress]
port = {free_port()}
{extra}
[pipeline]
poll_interval = 0.1
[outbound]
spool_dir = "{tmp_path}/spool"
[responders]
autoreply_max = 1000    # the sample writes many times from one sender: no cap, so replies compare
""")
    return cfg


def acedesk(cfg: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "ACEDESK_CONFIG": str(cfg)}
    return subprocess.run([sys.executable, "-m", "daemon.cli.main", *args], cwd=REPO, env=env, capture_output=True,
                          check=check, timeout=240)


def triage_corpus(cfg: Path, files: list[Path]) -> dict[str, dict]:
    done = acedesk(cfg, "triage", "--json", "--desk", "helpdesk@ace-support.example", *map(str, files))
    records = [json.loads(line) for line in done.stdout.decode().splitlines()]
    assert b"Traceback" not in done.stderr, done.stderr.decode()[-2000:]
    return {Path(r["file"]).name: r for r in records}


@pytest.fixture
def corpus_db(tmp_path: Path, db_url: str) -> Path:
    cfg = write_config(tmp_path, db_url)
    acedesk(cfg, "db", "upgrade")
    acedesk(cfg, "users", "import", str(CORPUS / "users.csv"))
    return cfg


def test_the_corpus_covers_every_attack_class():
    classes = {}
    for row in expectations():
        classes[row["attack_class"]] = classes.get(row["attack_class"], 0) + 1
        assert (CORPUS / row["file"]).is_file()
    assert sum(classes.values()) >= 100
    assert set(classes) >= {"spoofing", "identity", "loops", "header-injection", "template-injection",
                            "resource-abuse", "control"}, classes


def test_triage_meets_every_expectation_of_the_adversarial_corpus(corpus_db):
    rows = expectations()
    started = time.monotonic()
    records = triage_corpus(corpus_db, [CORPUS / r["file"] for r in rows])
    elapsed = time.monotonic() - started
    assert len(records) == len(rows), "one record per file"
    failures = {row["file"]: p for row in rows if (p := problems(records[row["file"]], row))}
    assert not failures, json.dumps(failures, indent=1)
    assert elapsed < 120, f"the corpus took {elapsed:.0f} s"


SAMPLE = ("forged-ar-below-border", "two-trusted-ars-disagree", "lookalike-punycode-cyrillic",
          "two-from-headers", "userid-without-digits-my-user", "other-company-ior-ssn-spaces",
          "on-behalf-para-mi-jefe", "owner-resets-users-password", "verified-alice-password",
          "colleague-shares-company-ior", "ooo-subject-respuesta-automatica", "subject-line-separator",
          "from-nested-comments-5000", "3000-parts", "nul-in-headers", "subject-jinja-expression")


@pytest.mark.slow
def test_a_running_daemon_decides_the_sample_as_the_dry_run_does(tmp_path, sqlite_url):
    # On the embedded database only: the PostgreSQL path of the same stages is covered by the
    # triage test above and tests/test_responders.py, and the suite has five minutes.
    db_url = sqlite_url
    cfg = write_config(tmp_path, db_url)
    acedesk(cfg, "db", "upgrade")
    acedesk(cfg, "users", "import", str(CORPUS / "users.csv"))
    files = [p for p in sorted(CORPUS.glob("*.eml")) if any(p.name.endswith(f"-{s}.eml") for s in SAMPLE)]
    assert len(files) == len(SAMPLE)
    expected = triage_corpus(cfg, files)
    port = int(cfg.read_text().split("port = ")[1].split()[0])
    daemon = subprocess.Popen([sys.executable, "-m", "daemon.cli.main", "run"], cwd=REPO,
                              env={**os.environ, "ACEDESK_CONFIG": str(cfg)}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
    engine = make_engine(db_url)
    sessions = make_sessionmaker(engine)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                client = smtplib.SMTP("127.0.0.1", port, timeout=10)
                break
            except OSError:
                assert time.monotonic() < deadline and daemon.poll() is None, daemon.stderr.read().decode()[-2000:]
                time.sleep(0.1)
        with client:
            for path in files:
                raw = path.read_bytes()
                if max(map(len, raw.splitlines())) > 998:
                    # SMTP refuses lines over 998 octets (RFC 5321 4.5.3.1.6): it arrives by IMAP or ingest.
                    acedesk(cfg, "ingest", "--desk", "helpdesk@ace-support.example", str(path))
                else:
                    client.sendmail("sender@relay.example", ["helpdesk@ace-support.example"], raw)
        deadline = time.monotonic() + 90
        while True:
            with sessions() as s:
                states = list(s.scalars(select(InboundMessage.state)))
            if len(states) == len(files) and all(st in ("done", "quarantined") for st in states):
                break
            assert time.monotonic() < deadline, states
            time.sleep(0.2)
        with sessions() as s:
            rows = list(s.scalars(select(InboundMessage).order_by(InboundMessage.id)))
            records = {r.inbound_message_id: r for r in s.scalars(select(ResponseRecord))}
            reasons = {q.message_id: q.reason for q in s.scalars(select(QuarantineRecord))}
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(20) == 0
        engine.dispose()
    for path, row in zip(files, rows, strict=True):
        dry = expected[path.name]
        if dry["action"]["kind"] == "quarantine":
            assert row.state == "quarantined" and reasons[row.id] == dry["action"]["reason"], path.name
            continue
        record = records[row.id]
        assert (record.verification, record.action) == (dry["verification"]["status"], dry["action"]["kind"]), \
            (path.name, record.verification, record.action, dry["verification"]["status"], dry["action"]["kind"])
        assert record.recipient == dry["action"]["to"], path.name
