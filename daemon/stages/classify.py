"""The classify stage (parsed -> classified | quarantined).

Reads each message's subject and new text, classifies a whole batch at once
(label, calibrated confidence, whether it clears the label's threshold for
an automatic action, language, identifiers) and stores the answer with the
model version on the row.  The model is loaded at start from
``[classifier] model_dir`` (default: the model shipped with the package)
and again on SIGHUP; a model that fails to load leaves the previous one in
use and says why in the log.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session, object_session

from classifiers.classify import Classification, MessageText, classify
from classifiers.labels import LABELS
from classifiers.model import ModelLoadError, TextClassifier
from classifiers.settings import ClassifierConfig
from classifiers.store import ModelHolder, model_dir
from daemon.context import AppContext
from daemon.intake.quarantine import quarantine
from daemon.worker import Stage
from models.core import CLASSIFIED, PARSED, InboundMessage
from models.parsed import ParsedMessage

log = logging.getLogger("acedesk.classify")
#: Characters of quoted history read (only a fallback for the language).
QUOTED_CHARS = 4000


def language_hint(desk: str, spanish_desks: frozenset[str]) -> str:
    """Return the language a desk address suggests (ayuda@ is Spanish)."""
    return "es" if desk.lower() in spanish_desks else "en"


def text_of(parsed: ParsedMessage | None, hint: str) -> MessageText:
    """Return what the classifier reads of a parsed message: subject, new text, signature, some history."""
    if parsed is None:
        return MessageText(subject="", new_text="", language_hint=hint)
    return MessageText(subject=parsed.subject, new_text=parsed.new_text, signature=parsed.signature,
                       quoted=parsed.quoted_text[:QUOTED_CHARS], language_hint=hint)


def message_text(row: InboundMessage, spanish_desks: frozenset[str]) -> MessageText:
    """Return what the classifier reads of ``row`` (its parsed record)."""
    parsed = ParsedMessage.from_dict(row.parsed) if row.parsed else None
    return text_of(parsed, language_hint(row.desk, spanish_desks))


def classify_texts(model: TextClassifier, cfg: ClassifierConfig,
                   texts: Sequence[MessageText]) -> list[Classification | Exception]:
    """Classify ``texts`` as the daemon does (``[classifier]`` thresholds and ``max_chars``).

    One call for the batch; when it raises, each message alone, so that the
    one that fails gets its exception back (and a quarantine record) and the
    others their labels.  ``acedesk classify`` and ``triage`` call this too.
    """
    try:
        return list(classify(model, texts, cfg.thresholds or None, cfg.max_chars or None))
    except Exception:  # noqa: BLE001 - find the poison message below
        log.warning("classifying a batch of %d raised; classifying one by one", len(texts))
    results: list[Classification | Exception] = []
    for text in texts:
        try:
            results.append(classify(model, [text], cfg.thresholds or None, cfg.max_chars or None)[0])
        except Exception as exc:  # noqa: BLE001 - returned to the caller, who quarantines it
            results.append(exc)
    return results


def stored_texts(rows: list[InboundMessage], spanish_desks: frozenset[str]) -> dict[int, MessageText]:
    """Return what the classifier reads of each row, by row id, read from the stored parsed
    record field by field in the database: the whole record (headers, trace, full text) is
    several times what the classifier reads, and decoding it cost more than classifying."""
    session = object_session(rows[0]) if rows else None
    if session is None:  # rows made by hand (tests): their records are at hand
        return {row.id: message_text(row, spanish_desks) for row in rows}
    record = InboundMessage.parsed
    query = select(InboundMessage.id, InboundMessage.desk, record["subject"].as_string(),
                   record["new_text"].as_string(), record["signature"].as_string(),
                   func.substr(record["quoted_text"].as_string(), 1, QUOTED_CHARS)
                   ).where(InboundMessage.id.in_([row.id for row in rows]))
    return {row_id: MessageText(subject=subject or "", new_text=new or "", signature=signature or "",
                                quoted=quoted or "", language_hint=language_hint(desk, spanish_desks))
            for row_id, desk, subject, new, signature, quoted in session.execute(query)}


def classify_all(holder: ModelHolder, cfg: ClassifierConfig, spanish_desks: frozenset[str],
                 rows: list[InboundMessage]) -> dict[int, Classification | Exception]:
    """Return the model's answer (or the exception it raised) for each row, by row id, in batches
    of ``cfg.batch_size``: reads the rows' texts, writes nothing."""
    model = holder.current  # one model for the whole batch, even if SIGHUP swaps it meanwhile
    if model is None:
        raise RuntimeError("no classifier model loaded")
    texts = stored_texts(rows, spanish_desks)
    answers: dict[int, Classification | Exception] = {}
    for start in range(0, len(rows), max(1, cfg.batch_size)):
        chunk = rows[start:start + max(1, cfg.batch_size)]
        results = classify_texts(model, cfg, [texts[row.id] for row in chunk])
        answers.update((row.id, result) for row, result in zip(chunk, results, strict=True))
    return answers


def apply_classified(session: Session, rows: list[InboundMessage],
                     answers: dict[int, Classification | Exception]) -> None:
    """Store each row's label, confidence, language and identifiers and move it to ``classified``;
    quarantine the one the classifier raised on."""
    for row in rows:
        result = answers[row.id]
        if isinstance(result, Exception):
            quarantine(session, row, "classify_error", f"{type(result).__name__}: {str(result)[:500]}")
            log.warning("message %s (Message-ID %s) quarantined: the classifier raised %s",
                        row.id, row.message_id, type(result).__name__)
            continue
        row.label = result.label
        row.confidence = result.confidence
        row.auto = result.auto
        row.language = result.language
        row.identifiers = result.identifiers
        row.model_version = result.model_version
        row.top_labels = [[label, p] for label, p in result.ranking]
        row.state = CLASSIFIED
        row.error = None
        log.debug("message %s (Message-ID %s): %s %.3f auto=%s %s", row.id, row.message_id,
                  result.label, result.confidence, result.auto, result.language)


def classify_rows(holder: ModelHolder, cfg: ClassifierConfig, spanish_desks: frozenset[str],
                  session: Session, rows: list[InboundMessage]) -> None:
    """Classify ``rows`` in batches of ``cfg.batch_size`` and move them to ``classified``."""
    apply_classified(session, rows, classify_all(holder, cfg, spanish_desks, rows))


def make_stage(ctx: AppContext) -> Stage | None:
    """Return the classify stage with the newest model loaded, or None when there is no usable model."""
    cfg = ctx.config.classifier
    directory = model_dir(_resolve(cfg.model_dir, ctx.config.base_dir))
    try:
        holder = ModelHolder.open(directory)
    except ModelLoadError as exc:
        log.error("classifier unavailable, messages wait in state 'parsed': %s", exc)
        return None
    assert holder.current is not None
    freeze_long_lived()
    log.info("classifier model %s loaded from %s", holder.current.version, holder.current.path)
    unknown = sorted(set(cfg.thresholds) - set(LABELS))
    if unknown:
        log.warning("[classifier] thresholds for labels not in the taxonomy are ignored: %s", ", ".join(unknown))
    holder.on_change = freeze_long_lived
    ctx.reload_hooks.append(holder.reload)
    spanish = frozenset(a.lower() for a in ctx.config.desk.spanish_addresses)
    # needs_parsed False: classify_all reads only the fields it needs (stored_texts).
    stage = Stage(name="classify", consumes=PARSED, needs_parsed=False,
                  process=lambda session, rows: classify_rows(holder, cfg, spanish, session, rows),
                  batch_size=max(cfg.batch_size, 1),
                  compute=lambda _session, rows: classify_all(holder, cfg, spanish, rows), apply=apply_classified)
    return stage


def freeze_long_lived() -> None:
    """Move every object alive now (the model's vocabularies and caches, the configuration,
    the libraries) out of the cyclic garbage collector's reach.

    They live as long as the process, yet each full collection walked them all: that walk
    was a tenth of the classify stage's CPU.  Frozen objects are still freed by reference
    counting (a replaced model's arrays and dicts hold no cycles).
    """
    gc.collect()
    gc.freeze()


def _resolve(path: str, base_dir: str) -> str:
    if not path:
        return ""
    p = Path(path)
    return str(p if p.is_absolute() else Path(base_dir) / p)
