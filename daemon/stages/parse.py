"""The parse stage (new -> parsed | screened | csms | quarantined).

Parses the raw bytes into the normalised record, routes CSMS traffic
(commands to the request address, bounces to a VERP return path) to the csms
stage, screens the rest for automatic mail (``responders.screen.AUTOMATIC``:
auto-replies, lists, bounces, our own mail) so that it is never classified
(``screened``: the respond stage records and drops it), and quarantines what cannot be parsed with its reason, raw bytes kept:
not mail, a parser crash (``RecursionError`` and friends), or a message over
the per-message time or memory budget (``[pipeline] message_seconds`` and
``message_memory``).
One poison message never holds up the ones behind it: the worker retries a
failing batch one row at a time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from daemon.config import DeskConfig, PipelineConfig
from daemon.context import AppContext
from daemon.intake.parse import Unparseable, parse_within_budget
from daemon.intake.quarantine import quarantine
from daemon.worker import Stage
from models.core import CSMS, NEW, PARSED, SCREENED, InboundMessage
from models.parsed import ParsedMessage
from responders.screen import ScreenContext, automatic_reasons

log = logging.getLogger("acedesk.parse")


def screen_context(desk: DeskConfig) -> ScreenContext:
    """Return what screening for automatic mail needs (no secret: that part needs none)."""
    return ScreenContext(own_addresses=frozenset(desk.all_own_addresses()),
                         domain=desk.reply_from_address.rpartition("@")[2].lower(), secret=b"")


def next_state(desk: DeskConfig, row: InboundMessage, parsed: ParsedMessage | None = None,
               ctx: ScreenContext | None = None) -> str:
    """Return where a parsed message goes: the csms stage for CSMS addresses, ``screened`` for
    automatic mail (screened before classify: it is never classified), else classification."""
    if row.desk == desk.csms_request_address.lower() or desk.is_bounce_address(row.desk):
        return CSMS
    if parsed is not None and ctx is not None and automatic_reasons(parsed, ctx):
        return SCREENED
    return PARSED


@dataclass(frozen=True)
class Parsed:
    """A row's parse, ready to store: the record, its stored (JSON) form, the row's next state."""

    record: ParsedMessage
    stored: dict[str, Any]
    state: str


def parse_all(desk: DeskConfig, budget: PipelineConfig, rows: list[InboundMessage]) -> dict[int, Any]:
    """Return each row's :class:`Parsed` (or the :class:`Unparseable` saying why not), by row id:
    no database needed.

    The stored form and the screening are worked out here, once, not in :func:`apply_parsed`: a
    fused batch applies each stage twice (in memory for the next stage, then for real), and this
    part runs before the write lock.
    """
    ctx = screen_context(desk)
    parsed: dict[int, Any] = {}
    for row in rows:
        try:
            record = parse_within_budget(row.raw, row.envelope_from, seconds=budget.message_seconds,
                                         memory=budget.message_memory)
        except Unparseable as exc:
            parsed[row.id] = exc
            continue
        parsed[row.id] = Parsed(record, record.to_dict(), next_state(desk, row, record, ctx))
    return parsed


def apply_parsed(session: Session, rows: list[InboundMessage], parsed_by_id: dict[int, Any]) -> None:
    """Store each row's parsed record and move it on, or quarantine it with its reason."""
    for row in rows:
        parsed = parsed_by_id[row.id]
        if isinstance(parsed, Unparseable):
            quarantine(session, row, parsed.reason, parsed.detail)
            log.warning("message %s (%d bytes, Message-ID %s) quarantined: %s: %s",
                        row.id, row.size, row.message_id, parsed.reason, parsed.detail)
            continue
        # Its own dict per row: a fused batch applies to an in-memory copy of the row, then the real one.
        row.parsed = dict(parsed.stored)
        row.message_id = row.message_id or parsed.record.message_id
        row.state = parsed.state
        row.error = None


def parse_rows(desk: DeskConfig, budget: PipelineConfig, session: Session, rows: list[InboundMessage]) -> None:
    apply_parsed(session, rows, parse_all(desk, budget, rows))


def make_stage(ctx: AppContext) -> Stage:
    desk, budget = ctx.config.desk, ctx.config.pipeline
    # Batches of the pipeline's size ([pipeline] batch_size): parsing runs before the write lock,
    # and each commit has a fixed cost that smaller batches paid more often.
    return Stage(name="parse", consumes=NEW, needs_raw=True, needs_parsed=False,
                 process=lambda session, rows: parse_rows(desk, budget, session, rows), batch_size=0,
                 compute=lambda _session, rows: parse_all(desk, budget, rows), apply=apply_parsed)
