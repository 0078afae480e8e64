"""The desk's duties that run on a clock: the escalation sweep.

Every ``[escalation] interval`` seconds it escalates the tickets near their
target (:func:`responders.escalation.escalate_due`) in one transaction, and
wakes the outbox when it queued a digest.  Outage incidents and desk hours
need no loop of their own: they act inside the respond stage.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from daemon.context import AppContext
from daemon.runner import run_loop
from daemon.stages.respond import make_responder
from models.session import transaction
from responders.escalation import escalate_due
from responders.service import Responder

log = logging.getLogger("acedesk.escalation")


def sweep_once(ctx: AppContext, responder: Responder) -> int:
    """Escalate what is near its target now; return how many tickets."""
    with transaction(ctx.sessions) as session:
        tickets = escalate_due(session, responder, ctx.config.escalation, responder.clock())
        numbers = [t.number for t in tickets]
    if numbers:
        log.warning("escalated %d ticket(s) near the %g-hour target: %s", len(numbers),
                    ctx.config.responders.target_hours, ", ".join(str(n) for n in numbers[:20]))
    return len(numbers)


class EscalationSweeper:
    """Runs :func:`sweep_once` every ``interval`` seconds."""

    name = "escalation"

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self.responder = make_responder(ctx.config)

    async def run(self, stop: asyncio.Event) -> None:
        wake_outbox = self.ctx.waker("outbox")

        async def once() -> int:
            n = await asyncio.to_thread(sweep_once, self.ctx, self.responder)
            if n:
                wake_outbox()
            return n

        await run_loop(self.name, once, stop, idle=self.ctx.config.escalation.interval)


def make_components(ctx: AppContext) -> list[Any]:
    """Return this area's long-running components for the supervisor."""
    return [EscalationSweeper(ctx)] if ctx.config.escalation.enabled else []
