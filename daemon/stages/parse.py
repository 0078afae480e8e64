"""The parse stage (new -> parsed | csms | quarantined).

Parses the raw bytes into the normalised record, routes CSMS traffic
(commands to the request address, bounces to a VERP return path) to the csms
stage, and quarantines what cannot be parsed with its reason, raw bytes kept:
not mail, a parser crash (``RecursionError`` and friends), or a message over
the per-message time or memory budget (``[pipeline] message_seconds`` and
``message_memory``).
One poison message never holds up the ones behind it: the worker retries a
failing batch one row at a time.
"""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session

from daemon.config import DeskConfig, PipelineConfig
from daemon.context import AppContext
from daemon.intake.parse import Unparseable, parse_within_budget
from daemon.intake.quarantine import quarantine
from daemon.worker import Stage
from models.core import CSMS, NEW, PARSED, InboundMessage

log = logging.getLogger("acedesk.parse")


def next_state(desk: DeskConfig, row: InboundMessage) -> str:
    """Return where a parsed message goes: the csms stage for CSMS addresses, else classification."""
    if row.desk == desk.csms_request_address.lower() or desk.is_bounce_address(row.desk):
        return CSMS
    return PARSED


def parse_rows(desk: DeskConfig, budget: PipelineConfig, session: Session, rows: list[InboundMessage]) -> None:
    for row in rows:
        try:
            parsed = parse_within_budget(row.raw, row.envelope_from, seconds=budget.message_seconds,
                                         memory=budget.message_memory)
        except Unparseable as exc:
            quarantine(session, row, exc.reason, exc.detail)
            log.warning("message %s (%d bytes, Message-ID %s) quarantined: %s: %s",
                        row.id, row.size, row.message_id, exc.reason, exc.detail)
            continue
        row.parsed = parsed.to_dict()
        row.message_id = row.message_id or parsed.message_id
        row.state = next_state(desk, row)
        row.error = None


def make_stage(ctx: AppContext) -> Stage:
    desk, budget = ctx.config.desk, ctx.config.pipeline
    return Stage(name="parse", consumes=NEW, needs_raw=True, needs_parsed=False,
                 process=lambda session, rows: parse_rows(desk, budget, session, rows), batch_size=100)
