"""The policy table as configured: config.toml documents the built-in table
(commented out, so that the code's defaults apply), and the two must not
drift apart; a rule that could never work is refused when the config loads,
by ``acedesk check-config`` too."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from daemon.cli.main import main
from daemon.config import config_from_dict, load_config
from responders.settings import default_rules

ROOT = Path(__file__).parents[1]


def documented_rules() -> list[dict]:
    """The ``[[responders.rules]]`` tables written (commented) in config.toml."""
    text = (ROOT / "config.toml").read_text(encoding="utf-8")
    block = re.search(r"^# \[\[responders\.rules\]\].*?(?=^\s*$|^\[)", text, re.MULTILINE | re.DOTALL)
    assert block, "config.toml no longer documents the policy table"
    toml = "\n".join(line[2:] if line.startswith("# ") else line.lstrip("#") for line in block.group(0).splitlines())
    return tomllib.loads(toml)["responders"]["rules"]


def test_config_toml_documents_exactly_the_built_in_rules() -> None:
    documented = config_from_dict({"responders": {"rules": documented_rules()}}).responders.rules
    assert documented == default_rules()
    # and the shipped config leaves them to the code.
    assert load_config(ROOT / "config.toml").responders.rules == default_rules()


def test_check_config_refuses_a_rule_that_cannot_work(tmp_path: Path, capsys) -> None:
    for rule, why in (('action = "answer"', "expected one of 'reply', 'ticket', 'triage', 'drop'"),
                      ('action = "reply"\nlabels = ["pasword_reset"]', "unknown label(s) 'pasword_reset'"),
                      ('action = "reply"\nverification = ["verifed"]', "unknown outcome(s) 'verifed'"),
                      ('action = "reply"\nto = "on_file"', "needs verification")):
        config = tmp_path / "c.toml"
        config.write_text(f"[[responders.rules]]\n{rule}\n")
        assert main(["--config", str(config), "check-config"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and why in err[0] and "c.toml" in err[0], err
