"""The delivery journal: what this process claimed from the outbox and what the
relay accepted, written before anything else happens.

Each process appends to its own file, ``<state_dir>/outbox-journal/<host>:<pid>``:
``c <id> ...`` when it claims rows (inside the claiming transaction, before
its commit) and ``a <id>`` right after the relay's 250 for a row, before that
connection takes another message.  An append is one ``write(2)`` to a file
opened with ``O_APPEND``: a SIGKILL cannot undo it (the kernel has it), and it
never waits for the database, whose ``sent`` marks follow in batches.

Rows whose outcome is committed are *settled*: the journal forgets them.
When nothing is open it is emptied (one ``ftruncate``); while batches
overlap (the next one is claimed while the last is sent) it is rewritten
now and then with only the open rows, under a temporary name renamed over
it, so that a crash at any moment leaves either file whole.  A process that
finds the journal of a dead process of this host (its pid gone) takes over
at once (:func:`orphans`): accepted rows are marked sent, claimed rows not
accepted go back to pending -- instead of waiting for their lease to expire
and resending what the relay had already accepted.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
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
        if not path.name.startswith(".") and owner_is_dead(path.name):  # ".name.tmp": a rewrite under way
            yield read(path)


#: Lines appended before the journal is rewritten with only its open rows.
REWRITE_AFTER = 4000


class Journal:
    """This process's journal (opened lazily: a process that sends nothing writes nothing).

    Thread safe: claims are written from a database thread, acceptances from
    the event loop, settlements from the recorder thread.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / f"{socket.gethostname()}:{os.getpid()}"
        self._fd: int | None = None
        self._lock = threading.Lock()
        #: Rows claimed and accepted whose outcome is not committed yet.
        self.open = Record(self.path)
        self._lines = 0

    def _write(self, line: str) -> None:
        if self._fd is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.write(self._fd, line.encode("ascii"))
        self._lines += 1

    def claimed(self, ids: Iterable[int]) -> None:
        numbers = list(ids)
        with self._lock:
            self.open.claimed.update(numbers)
            self._write("c " + " ".join(map(str, numbers)) + "\n")

    def accepted(self, outbox_id: int) -> None:
        with self._lock:
            self.open.accepted.add(outbox_id)
            self._write(f"a {outbox_id}\n")

    def settled(self, ids: Iterable[int]) -> None:
        """Forget rows whose outcome the database now records."""
        with self._lock:
            for outbox_id in ids:
                self.open.claimed.discard(outbox_id)
                self.open.accepted.discard(outbox_id)
            if self._fd is None:
                return
            if not self.open.claimed and not self.open.accepted:
                os.ftruncate(self._fd, 0)   # O_APPEND: the next line goes at the start again
                self._lines = 0
            elif self._lines >= REWRITE_AFTER:
                self._rewrite()

    def _rewrite(self) -> None:
        """Replace the file by one holding only the open rows (a crash leaves one or the other whole)."""
        assert self._fd is not None
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_TRUNC, 0o600)
        lines = []
        if self.open.claimed:
            lines.append("c " + " ".join(map(str, sorted(self.open.claimed))) + "\n")
        if self.open.accepted:
            lines.append("a " + " ".join(map(str, sorted(self.open.accepted))) + "\n")
        os.write(fd, "".join(lines).encode("ascii"))
        os.replace(tmp, self.path)
        os.close(self._fd)
        self._fd = fd
        self._lines = len(lines)

    def clear(self) -> None:
        """Forget everything: the database now records all of it."""
        with self._lock:
            self.open = Record(self.path)
            if self._fd is not None:
                os.ftruncate(self._fd, 0)
                self._lines = 0

    def close(self, remove: bool = True) -> None:
        """Close the journal; remove it when everything in it is committed (``remove``).

        Kept, it is taken over like a dead process's once this one has exited.
        """
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
                if remove:
                    with contextlib.suppress(FileNotFoundError):
                        self.path.unlink()
