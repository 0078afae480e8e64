"""The layers, enforced: the domain packages (classifiers/, responders/, csms/,
models/) never import the daemon, sockets, or the SMTP and IMAP libraries --
I/O stays at the edges in daemon/, which only calls the domain.  One test for
every package, over every module, so a new one is covered by itself."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
DOMAIN = ("classifiers", "responders", "csms", "models")
#: The edge and the I/O libraries a domain module must not reach for.
BANNED = {"daemon", "socket", "smtplib", "aiosmtpd", "aiosmtplib", "imaplib", "imapclient", "asyncio",
          "http", "urllib.request", "ssl"}


def imported(path: Path) -> list[tuple[int, str]]:
    """Every module ``path`` imports (absolute names), with its line."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def banned(name: str) -> bool:
    return any(name == b or name.startswith(b + ".") for b in BANNED)


@pytest.mark.parametrize("package", DOMAIN)
def test_domain_packages_never_import_the_daemon_sockets_smtp_or_imap(package: str) -> None:
    modules = sorted((ROOT / package).rglob("*.py"))
    assert modules, f"no modules found under {package}/"
    offences = [f"{path.relative_to(ROOT)}:{line} imports {name}"
                for path in modules for line, name in imported(path) if banned(name)]
    assert offences == []


def test_the_check_itself_catches_an_offence(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import smtplib\nfrom daemon.config import Config\nimport os\n")
    assert [name for _, name in imported(bad) if banned(name)] == ["smtplib", "daemon.config"]
