"""The operator's commands: ingest files, look at the quarantine, retry after a fix."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).parents[1]
CORPUS = Path(__file__).parent / "data" / "corpora"


def run(cfg: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "daemon.cli.main", "--config", str(cfg), *args],
                          capture_output=True, text=True, cwd=REPO, timeout=120)


def test_ingest_process_quarantine_show_and_retry(tmp_path):
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[database]\nurl = "sqlite:///{tmp_path}/a.db"\n[outbound]\nspool_dir = "{tmp_path}/spool"\n')
    assert run(cfg, "db", "upgrade").returncode == 0
    good = tmp_path / "good.eml"
    good.write_bytes(b"From: jo@broker.example\r\nSubject: hi\r\n\r\nMy ACH refund has not arrived.\r\n")
    bad = CORPUS / "spamscope__mail_outlook_1.msg"
    result = run(cfg, "ingest", str(good), str(bad), "--process")
    assert result.returncode == 0, result.stderr
    assert "stored 2 new message(s)" in result.stdout

    listing = run(cfg, "quarantine", "list")
    assert listing.returncode == 0
    lines = [line for line in listing.stdout.splitlines() if line.strip()]
    assert len(lines) == 1 and "not_rfc5322" in lines[0]
    record_id = lines[0].split()[0]

    shown = run(cfg, "quarantine", "show", record_id)
    assert "not_rfc5322" in shown.stdout and "Outlook" in shown.stdout
    raw = subprocess.run([sys.executable, "-m", "daemon.cli.main", "--config", str(cfg), "quarantine", "show",
                          record_id, "--raw"], capture_output=True, cwd=REPO, timeout=60)
    assert raw.stdout == bad.read_bytes()

    # Nothing was fixed, so a retry quarantines it again, and says so.
    retried = run(cfg, "quarantine", "retry", record_id)
    assert retried.returncode == 0 and "1 quarantined again" in retried.stdout
    assert "no quarantined messages" not in run(cfg, "quarantine", "list").stdout

    import json
    stats = json.loads(run(cfg, "stats", "--json").stdout)
    assert stats["messages"]["quarantined"] == 1 and stats["quarantine_open"] == 1

    missing = run(cfg, "quarantine", "show", "999")
    assert missing.returncode == 2 and missing.stderr.strip() == "acedesk: no quarantine record 999"
