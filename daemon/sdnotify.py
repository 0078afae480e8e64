"""systemd notification (``Type=notify``): READY, RELOADING, STOPPING, STATUS and
watchdog pings over the datagram socket named by ``NOTIFY_SOCKET``.  A no-op
outside systemd."""

from __future__ import annotations

import os
import socket
import time


class Notifier:
    def __init__(self, address: str | None = None) -> None:
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]  # abstract namespace
        self.address = address
        self._sock: socket.socket | None = None
        if address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            # Never wait: a reader that falls behind (a full datagram queue) must not freeze the
            # event loop that sends the pings; a dropped ping is better than a hung daemon.
            self._sock.setblocking(False)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, *fields: str) -> None:
        """Send ``fields`` (``READY=1`` ...); errors are ignored, systemd may be gone or behind."""
        if self._sock is None:
            return
        try:
            self._sock.sendto("\n".join(fields).encode(), self.address)
        except OSError:
            pass

    def ready(self, status: str = "") -> None:
        self.send("READY=1", f"STATUS={status}" if status else "STATUS=running")

    def reloading(self) -> None:
        # systemd's reload protocol: RELOADING=1 with the monotonic time, then READY=1 when done.
        self.send("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}", "STATUS=reloading")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=draining")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def watchdog_interval(self) -> float | None:
        """Return how often to ping, in seconds (half of WatchdogSec), or None."""
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        if not usec or (pid and pid != str(os.getpid())):
            return None
        try:
            return int(usec) / 2_000_000
        except ValueError:
            return None

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
