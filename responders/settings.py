"""The ``[responders]`` section of the configuration."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ResponderConfig:
    #: ``authserv-id``s of our own receiving servers; only their Authentication-Results count.
    trusted_authserv_ids: list[str] = field(default_factory=lambda: ["mx.ace-support.example"])
    #: Verify DKIM ourselves (dkimpy) when no trusted Authentication-Results header exists.
    verify_dkim: bool = False
