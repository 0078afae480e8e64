"""The respond stage (classified -> done): screen, verify, decide, act.  Not built yet."""

from __future__ import annotations

from daemon.context import AppContext
from daemon.worker import Stage


def make_stage(ctx: AppContext) -> Stage | None:
    return None
