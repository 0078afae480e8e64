"""The pipeline worker: claims inbound messages by state, runs the stage that
consumes that state over a batch, and isolates failures.

A stage is a named function over a batch of claimed rows that moves each row
to its next state in the same transaction that claimed it, so a crash at any
point leaves the rows where they were.  When a batch raises, each row is run
alone in a savepoint: the poison row gets its error recorded and a backoff
(``failed`` after ``max_attempts``), and the others go on.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import or_, select
from sqlalchemy.orm import Session, sessionmaker, undefer

from daemon.config import PipelineConfig
from daemon.metrics import STAGE_MESSAGES, STAGE_SECONDS
from daemon.runner import backoff
from models.base import utcnow
from models.core import FAILED, InboundMessage
from models.session import transaction

log = logging.getLogger("acedesk.worker")

#: Process a batch of claimed rows; set ``row.state`` on each row it finishes.
StageFn = Callable[[Session, list[InboundMessage]], None]


@dataclass(frozen=True)
class Stage:
    name: str
    #: The state this stage claims rows in.
    consumes: str
    process: StageFn
    #: Load the raw bytes / parsed record with the rows (deferred otherwise).
    needs_raw: bool = False
    needs_parsed: bool = True
    #: Largest batch this stage takes (0 = the pipeline's batch size).
    batch_size: int = 0


def claim(session: Session, stage: Stage, limit: int, now: dt.datetime) -> list[InboundMessage]:
    """Return up to ``limit`` rows waiting in ``stage.consumes``, locked for this transaction."""
    query = (
        select(InboundMessage)
        .where(InboundMessage.state == stage.consumes)
        .where(or_(InboundMessage.next_attempt_at.is_(None), InboundMessage.next_attempt_at <= now))
        .order_by(InboundMessage.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    if stage.needs_raw:
        query = query.options(undefer(InboundMessage.raw))
    if stage.needs_parsed:
        query = query.options(undefer(InboundMessage.parsed))
    return list(session.scalars(query))


def run_stage_once(factory: sessionmaker[Session], stage: Stage, cfg: PipelineConfig) -> int:
    """Claim one batch for ``stage`` and process it; return how many rows were handled."""
    limit = stage.batch_size or cfg.batch_size
    with transaction(factory) as session:
        rows = claim(session, stage, limit, utcnow())
        if not rows:
            return 0
        started = time.perf_counter()
        STAGE_MESSAGES.labels(stage.name).inc(len(rows))
        try:
            with session.begin_nested():
                stage.process(session, rows)
            STAGE_SECONDS.labels(stage.name).observe(time.perf_counter() - started)
            return len(rows)
        except Exception:
            log.warning("stage %s: batch of %d raised; retrying one by one", stage.name, len(rows),
                        exc_info=log.isEnabledFor(logging.DEBUG))
        for row in rows:
            session.refresh(row)
            _process_alone(session, stage, row, cfg.max_attempts)
        return len(rows)


def _process_alone(session: Session, stage: Stage, row: InboundMessage, max_attempts: int) -> None:
    try:
        with session.begin_nested():
            stage.process(session, [row])
        return
    except Exception as exc:
        summary = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        detail = traceback.format_exc(limit=8)
    session.refresh(row)
    row.attempts += 1
    row.error = f"stage {stage.name}: {summary}\n{detail}"[:8000]
    if row.attempts >= max_attempts:
        row.state = FAILED
        log.error("message %s (Message-ID %s) failed in stage %s %d times, giving up: %s",
                  row.id, row.message_id, stage.name, row.attempts, summary)
    else:
        row.next_attempt_at = utcnow() + dt.timedelta(seconds=backoff(row.attempts, 5.0, 3600.0))
        log.warning("message %s (Message-ID %s) failed in stage %s (attempt %d): %s",
                    row.id, row.message_id, stage.name, row.attempts, summary)


def drain(factory: sessionmaker[Session], stages: Sequence[Stage], cfg: PipelineConfig,
          max_batches: int = 1_000_000) -> int:
    """Run every stage until none has work; return the rows handled (burst mode, tests)."""
    total = 0
    for _ in range(max_batches):
        handled = sum(run_stage_once(factory, stage, cfg) for stage in stages)
        total += handled
        if handled == 0:
            break
    return total
