"""The ``[web]`` section of the configuration."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class WebConfig:
    #: Serve the web app in ``acedesk run`` (``acedesk web`` serves it alone).
    enabled: bool = True
    #: ``host:port`` the console, the unsubscribe pages and /metrics listen on.
    listen: str = "127.0.0.1:8080"
    #: Hours a console session lasts without use.
    session_hours: float = 8.0
    #: Mark cookies ``Secure`` (browsers send them only over HTTPS, and to loopback).
    secure_cookies: bool = True
    #: Failed logins per account or client address within ``login_window_minutes`` before
    #: further attempts are refused for the rest of the window.
    login_attempts: int = 5
    login_window_minutes: float = 15.0
    #: Single sign-on: the header a trusted reverse proxy sets to the analyst's name
    #: (e.g. ``X-Remote-User``); empty = off.  Believed only from ``trusted_proxies``.
    sso_header: str = ""
    trusted_proxies: list[str] = field(default_factory=lambda: ["127.0.0.1"])
    #: Rows per page of the queue and the ticket list.
    page_size: int = 50
    #: ``/readyz`` fails when more inbound messages than this wait for the pipeline.
    ready_max_backlog: int = 10000
    #: ``/readyz`` fails when work has waited longer than this many seconds without progress.
    ready_stall_seconds: float = 300.0

    def host_port(self) -> tuple[str, int]:
        """``(host, port)`` of ``listen``; a bare port listens on loopback."""
        host, sep, port = self.listen.rpartition(":")
        if not sep:
            return "127.0.0.1", int(self.listen)
        return host.strip("[]") or "127.0.0.1", int(port)
