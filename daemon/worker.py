"""The pipeline worker: claims inbound messages by state, runs the stage that
consumes that state over a batch, and isolates failures.

A stage is a named function over a batch of claimed rows that moves each row
to its next state in the same transaction that claimed it, so a crash at any
point leaves the rows where they were.  When a batch raises, each row is run
alone in a savepoint: the poison row gets its error recorded and a backoff
(``failed`` after ``max_attempts``), and the others go on.

Several workers (``[pipeline] processes``, see :mod:`daemon.processes`) run
the same stages side by side.  On PostgreSQL they claim with ``FOR UPDATE
SKIP LOCKED`` and never see each other's rows.  SQLite has one write lock,
so a stage with a ``compute`` step that writes nothing (parsing, the model,
the respond step's plans) runs it on a read snapshot *before* taking the
lock, over its own share of the rows
(``id % count == index``: no two workers compute the same row), and the
write transaction only applies the results to the rows still waiting.
A claim lives only as long as its transaction: when a worker dies, the
database rolls its transaction back and the rows are claimable at once.

A round starts with one *fused* batch (:func:`run_fused_once`): new mail
taken through every stage that has a compute/apply split (parse, classify,
respond) in one go -- on SQLite each stage's compute on one read snapshot,
the rows moved on in memory from stage to stage, then every stage's write in
one transaction; on PostgreSQL every stage's ``process`` in the claiming
transaction.  A message then costs one claim and one commit instead of one
per stage, and its parsed record is not written and read back between
stages.  The per-stage batches that follow take what the fused batch left:
mail for stages without a split (CSMS commands), retries, and everything,
one stage at a time, when a fused batch raised (its transaction is rolled
back whole, so each stage's row-by-row isolation then finds the culprit).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

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
#: The part of a stage that writes nothing: results by row id.  The session is a read snapshot the
#: compute may query (no write lock); the rows may be detached from it, carrying in memory what the
#: stages before this one computed (a fused batch), so a compute reads the rows, not the database,
#: for anything an earlier stage sets.
ComputeFn = Callable[[Session, list[InboundMessage]], dict[int, Any]]
#: Write computed results to the claimed rows (each row's result is in the dict).
ApplyFn = Callable[[Session, list[InboundMessage], dict[int, Any]], None]


@dataclass(frozen=True)
class Share:
    """Which rows a worker takes when several share one SQLite database: ``id % count == index``."""

    index: int = 0
    count: int = 1


@dataclass(frozen=True)
class Stage:
    name: str
    #: The state this stage claims rows in.
    consumes: str
    process: StageFn
    #: Load the raw bytes / parsed record with the rows (deferred otherwise).
    needs_raw: bool = False
    needs_parsed: bool = True
    #: Largest batch this stage takes (0 = the pipeline's batch size, which caps it in any case).
    batch_size: int = 0
    #: Optional split of ``process`` into a pure step and a write step (see the module docstring).
    compute: ComputeFn | None = None
    apply: ApplyFn | None = None
    #: The states this stage moves rows to (``daemon.pipeline.PIPELINE``; empty: not known, and the
    #: stage then ends a fused batch).
    produces: tuple[str, ...] = ()

    def limit(self, cfg: PipelineConfig) -> int:
        """Return the largest batch this stage takes under ``cfg``."""
        return min(self.batch_size, cfg.batch_size) if self.batch_size else cfg.batch_size


def claim(session: Session, stage: Stage, limit: int, now: dt.datetime, share: Share | None = None,
          ids: Sequence[int] | None = None, load: bool = True) -> list[InboundMessage]:
    """Return up to ``limit`` rows waiting in ``stage.consumes``, locked for this transaction.

    ``share`` restricts the claim to one worker's share of the ids, ``ids`` to
    rows computed beforehand; ``load`` False leaves the raw bytes and parsed
    record deferred (the computed results replace them).
    """
    query = (
        select(InboundMessage)
        .where(InboundMessage.state == stage.consumes)
        .where(or_(InboundMessage.next_attempt_at.is_(None), InboundMessage.next_attempt_at <= now))
        .order_by(InboundMessage.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    if share is not None and share.count > 1:
        query = query.where(InboundMessage.id % share.count == share.index)
    if ids is not None:
        query = query.where(InboundMessage.id.in_(ids))
    if stage.needs_raw and load:
        query = query.options(undefer(InboundMessage.raw))
    if stage.needs_parsed and load:
        query = query.options(undefer(InboundMessage.parsed))
    return list(session.scalars(query))


def computed_first(factory: sessionmaker[Session], stage: Stage, limit: int, now: dt.datetime,
                   share: Share | None) -> dict[int, Any] | None:
    """Return ``stage.compute`` over a read snapshot of the rows waiting for it, or None when it
    should run inside the write transaction instead (no split, not SQLite, or the compute raised)."""
    if stage.compute is None or stage.apply is None or factory.kw["bind"].dialect.name != "sqlite":
        return None
    with factory() as session:  # a deferred transaction: a WAL snapshot, no write lock
        rows = claim(session, stage, limit, now, share)
        if not rows:
            return {}
        try:
            return stage.compute(session, rows)
        except Exception:
            # The write transaction runs the stage row by row and records the culprit.
            log.debug("stage %s: compute raised; processing in the transaction", stage.name, exc_info=True)
            return None


def run_stage_once(factory: sessionmaker[Session], stage: Stage, cfg: PipelineConfig,
                   share: Share | None = None) -> int:
    """Claim one batch for ``stage`` and process it; return how many rows were handled."""
    limit = stage.limit(cfg)
    now = utcnow()
    computed = computed_first(factory, stage, limit, now, share)
    if computed == {}:
        return 0
    with transaction(factory) as session:
        if computed is None:
            rows = claim(session, stage, limit, now, share)
        else:
            rows = claim(session, stage, limit, now, share, ids=list(computed), load=False)
        if not rows:
            return 0
        def step() -> None:
            with session.begin_nested():
                if computed is None:
                    stage.process(session, rows)
                else:
                    assert stage.apply is not None
                    stage.apply(session, rows, computed)

        try:
            return _timed(stage, rows, step)
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


def fused_chain(stages: Sequence[Stage]) -> list[Stage]:
    """Return the stages a fused batch takes new mail through, in table order: the first stage,
    then each later one that consumes a state an earlier member produces -- all with a
    compute/apply split (else none: the stages run one at a time)."""
    if not stages or not all((stages[0].compute, stages[0].apply, stages[0].produces)):
        return []
    chain = [stages[0]]
    reachable = set(stages[0].produces)
    for stage in stages[1:]:
        if stage.consumes in reachable and stage.compute is not None and stage.apply is not None:
            chain.append(stage)
            reachable |= set(stage.produces)
    return chain if len(chain) > 1 else []


def run_fused_once(factory: sessionmaker[Session], chain: Sequence[Stage], cfg: PipelineConfig,
                   share: Share | None = None) -> int | None:
    """Take one batch of new mail through every stage of ``chain`` (:func:`fused_chain`) and
    commit it once; return the rows handled (counted per stage, as the stages one at a time
    would), or None when the batch raised and was rolled back (the stages then run one at a time)."""
    if not chain:
        return None
    limit = min(stage.limit(cfg) for stage in chain)
    now = utcnow()
    try:
        if factory.kw["bind"].dialect.name == "sqlite":
            return _fused_on_snapshot(factory, chain, limit, now, share)
        return _fused_in_transaction(factory, chain, limit, now, share)
    except Exception:
        log.warning("a fused batch raised; the stages take it one at a time",
                    exc_info=log.isEnabledFor(logging.DEBUG))
        return None


def _fused_on_snapshot(factory: sessionmaker[Session], chain: Sequence[Stage], limit: int, now: dt.datetime,
                       share: Share | None) -> int:
    """SQLite: every stage's compute on one read snapshot (no write lock), then every write at once."""
    steps: list[tuple[Stage, list[int], dict[int, Any]]] = []
    with factory() as read:
        rows = claim(read, chain[0], limit, now, share)
        if not rows:
            return 0
        # Detached, the rows carry each stage's results to the next in memory, and nothing set on
        # them can be flushed through the read session.
        read.expunge_all()
        for i, stage in enumerate(chain):
            batch = [row for row in rows if row.state == stage.consumes]
            if not batch:
                continue
            computed = stage.compute(read, batch)  # type: ignore[misc]
            steps.append((stage, [row.id for row in batch], computed))
            if any(later.consumes in stage.produces for later in chain[i + 1:]):
                _move_on_in_memory(stage, batch, computed)
    with transaction(factory) as session:
        claimed = claim(session, chain[0], limit, now, share, ids=[row.id for row in rows], load=False)
        by_id = {row.id: row for row in claimed}
        handled = 0
        for stage, ids, computed in steps:
            batch = [by_id[i] for i in ids if i in by_id and by_id[i].state == stage.consumes]
            if batch:
                handled += _timed(stage, batch, lambda s=stage, b=batch, c=computed: s.apply(session, b, c))  # type: ignore[misc]
        return handled


def _move_on_in_memory(stage: Stage, rows: list[InboundMessage], computed: dict[int, Any]) -> None:
    """Set on detached ``rows`` what ``stage.apply`` would write, for the stages after it to read.

    Rows whose result is an exception (unparseable, the model raised) stay where they were: the
    write quarantines them and no later stage takes them.  The session is a scratch one bound to
    no database: ``apply`` of a successful result only sets attributes.
    """
    moved = [row for row in rows if row.id in computed and not isinstance(computed[row.id], Exception)]
    with Session() as scratch:
        stage.apply(scratch, moved, computed)  # type: ignore[misc]


def _fused_in_transaction(factory: sessionmaker[Session], chain: Sequence[Stage], limit: int,
                          now: dt.datetime, share: Share | None) -> int:
    """PostgreSQL: claim (``SKIP LOCKED``) and run every stage's ``process`` in one transaction."""
    with transaction(factory) as session:
        rows = claim(session, chain[0], limit, now, share)
        handled = 0
        for stage in chain:
            batch = [row for row in rows if row.state == stage.consumes]
            if batch:
                handled += _timed(stage, batch, lambda s=stage, b=batch: s.process(session, b))  # type: ignore[misc]
        return handled


def _timed(stage: Stage, rows: list[InboundMessage], step: Callable[[], None]) -> int:
    """Run ``step`` over ``rows`` for ``stage``, counted in the stage's metrics; return how many rows."""
    started = time.perf_counter()
    STAGE_MESSAGES.labels(stage.name).inc(len(rows))
    step()
    STAGE_SECONDS.labels(stage.name).observe(time.perf_counter() - started)
    return len(rows)


def run_round(factory: sessionmaker[Session], stages: Sequence[Stage], cfg: PipelineConfig,
              share: Share | None = None, stopping: Callable[[], bool] = lambda: False) -> int:
    """One fused batch of new mail, then one batch per stage in table order (no stage starves the
    others: they take what the fused batch left); return the rows handled."""
    chain = fused_chain(stages)
    fused = run_fused_once(factory, chain, cfg, share)
    handled = fused or 0
    for stage in stages:
        if stopping():
            break
        if fused is not None and stage is chain[0]:
            continue  # new mail went through the fused batch
        handled += run_stage_once(factory, stage, cfg, share)
    return handled


def drain(factory: sessionmaker[Session], stages: Sequence[Stage], cfg: PipelineConfig,
          max_batches: int = 1_000_000, share: Share | None = None) -> int:
    """Run every stage until none has work; return the rows handled (burst mode, tests)."""
    total = 0
    for _ in range(max_batches):
        handled = run_round(factory, stages, cfg, share)
        total += handled
        if handled == 0:
            break
    return total
