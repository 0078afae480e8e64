"""What an operator meets at the command line: ``acedesk messages`` shows who
wrote what and what became of it, ``db downgrade`` never drops tables without
an explicit revision and a confirmation, and read-only commands never create a
database or its folder."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from daemon.config import PipelineConfig
from daemon.worker import drain
from models.migrate import current_revisions, upgrade
from models.session import make_engine
from tests.test_responders import _cli, import_users, ingest, mail, make_ctx, stages


def test_messages_shows_sender_subject_state_action_and_ticket(tmp_path, engine, sessions, capsys, config_factory):
    url = engine.url.render_as_string(hide_password=False)
    import_users(sessions)
    ingest(sessions, mail(subject="Forgot my password"), mail(subject="hello", sender="dan@new.example", ar=None))
    drain(sessions, stages(make_ctx(config_factory(url), engine)), PipelineConfig())
    code, out, _ = _cli(tmp_path, url, "messages", capsys=capsys)
    lines = out.splitlines()
    assert code == 0
    assert lines[1].split() == ["ID", "STATE", "RECEIVED", "SENDER", "ACTION", "TICKET", "SUBJECT"]
    alice = next(line for line in lines if "alice@broker.example" in line)
    assert "done" in alice and "Forgot my password" in alice and "ACE-2026-" in alice and "reply" in alice
    dan = next(line for line in lines if "dan@new.example" in line)
    assert "triage" in dan and "hello" in dan


def _acedesk(config: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "daemon.cli.main", "--config", str(config), *args],
                          capture_output=True, text=True, input=stdin, timeout=60)


def test_db_downgrade_needs_a_revision_and_a_confirmation(tmp_path: Path) -> None:
    db = tmp_path / "desk.db"
    config = tmp_path / "c.toml"
    config.write_text(f'[database]\nurl = "sqlite:///{db}"\n')
    engine = make_engine(f"sqlite:///{db}")
    upgrade(engine)
    heads = current_revisions(engine)
    # No revision: refused by the argument parser, nothing dropped.
    assert _acedesk(config, "db", "downgrade").returncode == 2
    # A revision but no --yes, and nobody at a terminal to ask: refused with what to add.
    refused = _acedesk(config, "db", "downgrade", "base")
    assert refused.returncode == 2 and "--yes" in refused.stderr and "DROP EVERY TABLE" in refused.stderr
    assert current_revisions(engine) == heads
    # With --yes it does what was asked.
    done = _acedesk(config, "db", "downgrade", "base", "--yes")
    assert done.returncode == 0, done.stderr
    assert current_revisions(engine) == set()
    engine.dispose()


def test_read_only_commands_never_create_a_database_or_its_folder(tmp_path: Path, capsys) -> None:
    from daemon.cli.main import main

    config = tmp_path / "c.toml"
    config.write_text('[database]\nurl = "sqlite:///nowhere/desk.db"\n')
    for command in (["messages"], ["stats"], ["queue", "list"], ["tickets", "list"], ["users", "list"],
                    ["quarantine", "list"], ["db", "current"], ["csms", "list"]):
        assert main(["--config", str(config), *command]) == 2, command
        assert capsys.readouterr().err.strip().splitlines() == [
            f"acedesk: no database at {tmp_path / 'nowhere' / 'desk.db'}: create it with 'acedesk db upgrade'"]
    assert not (tmp_path / "nowhere").exists()
    assert main(["--config", str(config), "db", "upgrade"]) == 0
    assert (tmp_path / "nowhere" / "desk.db").exists()
