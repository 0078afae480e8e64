"""Configuration: one validated object; bad config gives one line naming the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from daemon.config import ConfigError, load_config

REPO = Path(__file__).parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_shipped_config_loads_with_documented_defaults():
    cfg = load_config(REPO / "config.toml", env={})
    assert cfg.database.url == "sqlite:///var/acedesk.db"
    assert cfg.ingress.host == "127.0.0.1"
    assert "helpdesk@ace-support.example" in cfg.desk.helpdesk_addresses
    assert cfg.responders.trusted_authserv_ids == ["mx.ace-support.example"]


@pytest.mark.parametrize("text,needle", [
    ("[ingress]\nport = \"abc\"\n", "'ingress.port': expected an integer, got string 'abc'"),
    ("[ingress]\nprot = 25\n", "unknown key 'ingress.prot' (did you mean 'port'?)"),
    ("[ingress]\nprotocol = \"pop3\"\n", "'ingress.protocol': expected one of 'smtp', 'lmtp'"),
    ("[[imap.mailboxes]]\nname = \"x\"\nhost = \"h\"\n", "missing key 'imap.mailboxes[0].username'"),
    ("[database\nurl=1", "not valid TOML"),
])
def test_bad_config_names_the_key(tmp_path, text, needle):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), env={})
    assert needle in str(info.value)


def test_database_url_environment_override(tmp_path):
    cfg = load_config(write(tmp_path, ""), env={"ACEDESK_DATABASE_URL": "sqlite:////tmp/x.db"})
    assert cfg.database.url == "sqlite:////tmp/x.db"


def test_cli_reports_config_error_in_one_line_without_traceback(tmp_path):
    path = write(tmp_path, "[pipeline]\nbatch_size = true\n")
    result = subprocess.run([sys.executable, "-m", "daemon.cli.main", "--config", str(path), "db", "current"],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"acedesk: config error: {path}: 'pipeline.batch_size': expected an integer, got boolean true"]


def test_cli_missing_config_file_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "daemon.cli.main", "--config", str(tmp_path / "nope.toml"),
                             "db", "upgrade"], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2
    assert "no such config file" in result.stderr and "Traceback" not in result.stderr


def test_signing_secrets_name_the_key_and_are_shared_once_generated(tmp_path, monkeypatch):
    from daemon.config import config_from_dict, signing_secret

    config = config_from_dict({"daemon": {"state_dir": "state"},
                               "csms": {"secret_env": "ACEDESK_TEST_CSMS_SECRET"}}, base_dir=str(tmp_path))
    monkeypatch.delenv("ACEDESK_TEST_CSMS_SECRET", raising=False)
    with pytest.raises(ConfigError, match=r"\[csms\] secret_env: environment variable ACEDESK_TEST_CSMS_SECRET"):
        signing_secret(config, "csms", config.csms.secret_env, "", "csms.secret")
    monkeypatch.setenv("ACEDESK_TEST_CSMS_SECRET", "short")
    with pytest.raises(ConfigError, match=r"\[csms\] secret_env/secret_file: .* at least 16"):
        signing_secret(config, "csms", config.csms.secret_env, "", "csms.secret")
    # None configured: generated once (0600), then the same for every caller.
    first = signing_secret(config, "responders", "", "", "responders.secret")
    assert len(first) >= 32 and first == signing_secret(config, "responders", "", "", "responders.secret")
    assert (tmp_path / "state" / "responders.secret").stat().st_mode & 0o777 == 0o600
