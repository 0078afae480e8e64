"""The mover: ``UID MOVE`` on a second IMAP connection while the first one fetches."""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from imapclient import IMAPClient

from daemon.imap.protocol import ImapError, close_quietly, move_messages, select_uidvalidity, span


@dataclass
class MoveGroup:
    """Committed messages waiting to be moved together."""

    uids: list[int] = field(default_factory=list)
    fetched: int = 0
    new: int = 0


class Mover:
    """A second IMAP session that moves committed groups while the first session fetches.

    imapclient is not thread safe, so the mover owns its client in its own
    thread.  The client comes from the watcher's own ``connect`` call (same
    TLS rules, same timeouts) and selects the same folder; a UIDVALIDITY other
    than the fetch session's would make the UIDs mean other messages, so that
    ends the mover before it moves anything.  Groups are handed over only
    once committed and are moved in the order they came.

    Nothing the mover leaves undone is lost: every UID it was given is at or
    below the checkpoint, so the next session's ``_move_leftovers`` moves it.
    """

    def __init__(self, name: str, open_client: Callable[[], IMAPClient], folder: str,
                 uidvalidity: int | None, processed: str, moved: Callable[[MoveGroup], None]) -> None:
        #: What the mover is doing, for the log line when it fails.
        self.step = "opening a second connection to move messages"
        #: Why the mover ended early, if it did.
        self.error: BaseException | None = None
        #: Whether it logged in; before that it has taken (and moved) nothing.
        self.connected = False
        self._open_client = open_client
        self._folder = folder
        self._uidvalidity = uidvalidity
        self._processed = processed
        self._moved = moved
        self._queue: queue.SimpleQueue[MoveGroup | None] = queue.SimpleQueue()
        self._stopping = threading.Event()
        self._client: IMAPClient | None = None
        self._thread = threading.Thread(target=self._main, name=f"{name}-mover", daemon=True)
        self._thread.start()

    def put(self, group: MoveGroup) -> None:
        """Hand over a committed group to move."""
        self._queue.put(group)

    def close(self) -> None:
        """Say no more groups will come: the mover logs out once it has moved the ones it has."""
        self._queue.put(None)

    def abandon(self) -> None:
        """Let the MOVE in progress finish and leave the rest to the next session."""
        if not self._stopping.is_set():
            self._stopping.set()
            self._queue.put(None)  # wakes a mover waiting for a group

    def join(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` for the mover to log out; return whether it has."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def failed(self) -> bool:
        """Return whether the mover has ended on an error."""
        return self.error is not None and not self._thread.is_alive()

    def take_back(self) -> list[MoveGroup]:
        """Return the groups the mover never took (once it has ended)."""
        groups: list[MoveGroup] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return groups
            if item is not None:
                groups.append(item)

    def abort_socket(self) -> None:
        """Cut the mover's connection from another thread (a stop that cannot wait)."""
        client = self._client
        if client is not None:
            with contextlib.suppress(Exception):
                client.socket().shutdown(socket.SHUT_RDWR)

    def _main(self) -> None:
        try:
            client = self._open_client()
        except BaseException as exc:  # noqa: BLE001 - the fetch session decides what it means
            self.error = exc
            return
        self._client = client
        self.connected = True
        try:
            self.step = f"selecting {self._folder} on the mover connection"
            uidvalidity = select_uidvalidity(client, self._folder)
            if uidvalidity != self._uidvalidity:
                raise ImapError(f"UIDVALIDITY of {self._folder} changed from {self._uidvalidity} to "
                                f"{uidvalidity} during the session")
            while not self._stopping.is_set():
                group = self._queue.get()
                if group is None or self._stopping.is_set():
                    break
                self.step = f"moving {span(group.uids)} to {self._processed} on the mover connection"
                move_messages(client, group.uids, self._processed)
                self._moved(group)
        except BaseException as exc:  # noqa: BLE001 - handed to the fetch session
            self.error = exc
        finally:
            self._client = None
            close_quietly(client)
