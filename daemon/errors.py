"""What every command-line module shares: the error for a problem the user can
fix, and reading the text files users name (CSV imports, notice bodies)."""

from __future__ import annotations

import sys
from pathlib import Path


class CommandError(Exception):
    """A problem the user can fix; printed as one line, exit status 2."""


def read_text_file(name: str) -> str:
    """Return the text of the file ``name`` (``-``: standard input), UTF-8 with an optional BOM.

    Raises:
        CommandError: the file cannot be read or is not UTF-8, saying which and why.
    """
    if name == "-":
        return sys.stdin.read()
    try:
        return Path(name).read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise CommandError(f"{name}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise CommandError(f"{name}: not UTF-8 text") from None
