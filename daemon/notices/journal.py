"""The fan-out's acceptance journal: which deliveries the relay accepted that
the database does not record yet, kept by each sender process so that its
death costs at most the message in flight on each connection.

A sender appends ``<delivery id> <language>`` right after the relay's 250
for it, before that connection takes another message: one ``write(2)`` to a
file opened with ``O_APPEND``, which a SIGKILL cannot undo (the kernel has
it).  The sender's ``sent`` marks follow in batches; before each batch is
committed the sender moves on to a new file (a *generation*), and once the
batch is committed the old file is removed -- so every acceptance is in a
file until the database has it.

Files live in ``<state_dir>/csms-journal/<host>:<pid>/``.  Whoever finds the
folder of a dead process of this host (:func:`dead`) takes over at once: it
records what the files say was accepted, gives the dead owner's other claims
back, and removes the folder (:func:`daemon.notices.fanout.take_over`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path

from daemon.runner import owner_is_dead


def folder_of(state_dir: Path) -> Path:
    return state_dir / "csms-journal"


def process_name() -> str:
    """``<host>:<pid>``: the name of this process's folder, and the prefix of its claim owners."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class Accepted:
    """What a dead process's journal says the relay accepted: delivery ids by language."""

    owner: str
    path: Path
    by_language: dict[str, list[int]] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return sum(len(ids) for ids in self.by_language.values())


def read(path: Path) -> Accepted:
    """Read every generation in the folder ``path`` (a torn last line is ignored)."""
    accepted = Accepted(path.name, path)
    files = sorted(path.iterdir()) if path.is_dir() else []
    for file in files:
        with contextlib.suppress(FileNotFoundError):
            for line in file.read_text("ascii", errors="replace").splitlines():
                parts = line.split()
                if len(parts) == 2 and parts[0].isdigit():
                    accepted.by_language.setdefault(parts[1], []).append(int(parts[0]))
    return accepted


def gone(owner: str) -> bool:
    """Whether ``owner`` (``host:pid/...``) is a process of this host that no longer runs -- a zombie
    too: killed, but not yet reaped by whoever inherited it (a container may have no init reaping)."""
    if owner_is_dead(owner):
        return True
    host, _, rest = owner.partition(":")
    pid = rest.split("/", 1)[0]
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


def dead(folder: Path) -> list[Accepted]:
    """The journals of dead processes of this host."""
    if not folder.is_dir():
        return []
    return [read(path) for path in sorted(folder.iterdir()) if path.is_dir() and gone(path.name)]


def remove(accepted: Accepted) -> None:
    shutil.rmtree(accepted.path, ignore_errors=True)


class Journal:
    """One sender's journal (opened lazily: a sender that is never accepted writes nothing)."""

    def __init__(self, folder: Path, name: str) -> None:
        self.path = folder / process_name()
        self.name = name
        self.generation = 0
        self._oldest = 0   # generations below it are removed
        self._fd: int | None = None

    def _file(self, generation: int) -> Path:
        return self.path / f"{self.name}.{generation}"

    def accepted(self, delivery_id: int, language: str) -> None:
        if self._fd is None:
            self.path.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self._file(self.generation), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.write(self._fd, f"{delivery_id} {language}\n".encode("ascii"))

    def rotate(self) -> int:
        """Start a new generation; return the last one's number (for :meth:`committed`)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.generation += 1
        return self.generation - 1

    def committed(self, generation: int) -> None:
        """Generations up to ``generation`` are in the database: remove them."""
        for g in range(self._oldest, generation + 1):
            with contextlib.suppress(FileNotFoundError):
                self._file(g).unlink()
        self._oldest = max(self._oldest, generation + 1)

    def close(self) -> None:
        """Everything is committed: remove this sender's files (and the folder once empty)."""
        self.committed(self.rotate())
        with contextlib.suppress(OSError):
            self.path.rmdir()
