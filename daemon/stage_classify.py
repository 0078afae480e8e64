"""The classify stage (parsed -> classified).  Not built yet."""

from __future__ import annotations

from daemon.context import AppContext
from daemon.worker import Stage


def make_stage(ctx: AppContext) -> Stage | None:
    return None
