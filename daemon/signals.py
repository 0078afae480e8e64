"""Stop signals outside the event loop: while ``acedesk run`` starts (config,
database, model, worker processes) and while it finishes, SIGTERM and SIGINT
are noted rather than left to their default, which would kill the process
mid-way with no drain and a non-zero status."""

from __future__ import annotations

import signal
from typing import Any


class EarlyStop:
    """SIGTERM/SIGINT received while the daemon starts or finishes (outside the event loop's own
    handlers): noted instead of killing the process, so that a stop during start-up is a clean
    stop (exit 0) as systemd expects, never the default death by signal."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signame: str | None = None

    def install(self) -> "EarlyStop":
        for signum in self.SIGNALS:
            signal.signal(signum, self._note)
        return self

    def _note(self, signum: int, _frame: Any) -> None:
        self.signame = signal.Signals(signum).name
