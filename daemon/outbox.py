"""(not built yet)"""

from __future__ import annotations

from typing import Any

from daemon.context import AppContext


def make_components(ctx: AppContext) -> list[Any]:
    """Return this area's long-running components for the supervisor."""
    return []
