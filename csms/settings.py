"""The ``[csms]`` section of the configuration."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CsmsConfig:
    #: Public base URL of the unsubscribe / preferences endpoint.
    base_url: str = "http://127.0.0.1:8080"
