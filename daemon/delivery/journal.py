"""The delivery journal: what this process claimed from the outbox and what the
relay accepted, written before anything else happens.

Each process appends to its own file, ``<state_dir>/outbox-journal/<host>:<pid>``:
``c <id> ...`` when it claims rows (inside the claiming transaction, before
its commit) and ``a <id>`` right after the relay's 250 for a row, before that
connection takes another message.  An append is one ``write(2)`` to a file
opened with ``O_APPEND``: a SIGKILL cannot undo it (the kernel has it), and it
never waits for the database, whose ``sent`` marks follow in batches.

When the batch's marks are committed the journal is emptied.  A process that
finds the journal of a dead process of this host (its pid gone) takes over
at once (:func:`orphans`): accepted rows are marked sent, claimed rows not
accepted go back to pending -- instead of waiting for their lease to expire
and resending what the relay had already accepted.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from daemon.runner import owner_is_dead


@dataclass
class Record:
    """What one journal says: rows claimed, and rows the relay accepted."""

    path: Path
    claimed: set[int] = field(default_factory=set)
    accepted: set[int] = field(default_factory=set)


def read(path: Path) -> Record:
    """Return what the journal at ``path`` records (a torn last line is ignored)."""
    record = Record(path)
    with contextlib.suppress(FileNotFoundError):
        for line in path.read_text("ascii", errors="replace").splitlines():
            kind, _, ids = line.partition(" ")
            numbers = {int(x) for x in ids.split() if x.isdigit()}
            if kind == "c":
                record.claimed |= numbers
            elif kind == "a":
                record.accepted |= numbers
    return record


def orphans(folder: Path) -> Iterator[Record]:
    """Yield the journals of dead processes of this host (each to be taken over, then removed)."""
    if not folder.is_dir():
        return
    for path in sorted(folder.iterdir()):
        if owner_is_dead(path.name):
            yield read(path)


class Journal:
    """This process's journal (opened lazily: a process that sends nothing writes nothing)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / f"{socket.gethostname()}:{os.getpid()}"
        self._fd: int | None = None

    def _write(self, line: str) -> None:
        if self._fd is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.write(self._fd, line.encode("ascii"))

    def claimed(self, ids: Iterable[int]) -> None:
        self._write("c " + " ".join(str(i) for i in ids) + "\n")

    def accepted(self, outbox_id: int) -> None:
        self._write(f"a {outbox_id}\n")

    def clear(self) -> None:
        """Forget everything: the database now records all of it."""
        if self._fd is not None:
            os.ftruncate(self._fd, 0)

    def close(self) -> None:
        """Close and remove the journal (everything in it is committed)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
