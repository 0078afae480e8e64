"""The dry run of the whole pipeline over ``.eml`` files (``acedesk triage --json``).

It calls the very functions the daemon's stages call, in the pipeline's
order: :func:`daemon.parse.parse_within_budget` (the parse stage's guard and
budgets), :func:`daemon.stage_classify.classify_texts` (the same classifier
input, thresholds and ``max_chars``), and :func:`responders.service.dry_run`
(the respond stage's screen -> verify -> decide, and the reply it would
render).  Nothing is sent or stored.  Each file is guarded as a message is in
the daemon: what the daemon would quarantine gives ``action.kind =
"quarantine"`` with its reason, and the command goes on.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from classifiers.model import TextClassifier
from daemon.config import Config
from daemon.intake.parse import Unparseable, parse_within_budget
from daemon.stages.classify import classify_texts, language_hint, text_of
from models.parsed import ParsedMessage
from responders.redact import redact
from responders.service import Responder, dry_run

#: Files read and classified together (the classify stage's batching).
BATCH = 200


def quarantined(name: str, reason: str, detail: str) -> dict[str, Any]:
    """Return the triage record of a file the daemon would quarantine."""
    return {"file": name, "label": None, "confidence": None, "language": None, "screen": None,
            "verification": {"status": "unknown", "user_id": None, "reasons": []},
            "action": {"kind": "quarantine", "template": None, "to": None, "reason": reason,
                       "detail": redact(detail)}}


def desk_of(msg: ParsedMessage, config: Config, default: str | None) -> str:
    """Return the desk a file arrived at: ``--desk``, else the first desk address it names, else helpdesk@."""
    if default:
        return default.lower()
    for address in msg.to + msg.cc:
        if config.desk.accepts(address):
            return address.lower()
    return config.desk.helpdesk_addresses[0].lower()


def read(files: Sequence[str], config: Config) -> Iterator[tuple[str, ParsedMessage | None, dict[str, Any] | None]]:
    """Yield ``(file, parsed, None)`` or ``(file, None, quarantine record)``, as the parse stage would."""
    budget = config.pipeline
    for name in files:
        try:
            raw = Path(name).read_bytes()
        except OSError as exc:
            yield name, None, quarantined(name, "unreadable", str(exc.strerror or exc))
            continue
        try:
            yield name, parse_within_budget(raw, seconds=budget.message_seconds, memory=budget.message_memory), None
        except Unparseable as exc:
            yield name, None, quarantined(name, exc.reason, exc.detail)


def triage(files: Sequence[str], config: Config, responder: Responder, model: TextClassifier | None,
           session: Session | None, desk: str | None, notes: Sequence[str] = ()) -> Iterator[dict[str, Any]]:
    """Yield one triage record per file, in order."""
    spanish = frozenset(a.lower() for a in config.desk.spanish_addresses)
    pending: list[tuple[str, ParsedMessage | None, dict[str, Any] | None]] = []

    def flush() -> Iterator[dict[str, Any]]:
        parsed = [(n, m) for n, m, _q in pending if m is not None]
        desks = {n: desk_of(m, config, desk) for n, m in parsed}
        results: list[Any] = [None] * len(parsed)
        if model is not None and parsed:
            results = classify_texts(model, config.classifier,
                                     [text_of(m, language_hint(desks[n], spanish)) for n, m in parsed])
        by_name = dict(zip((id(m) for _n, m in parsed), results, strict=True))
        for name, msg, record in pending:
            if msg is None:
                assert record is not None
                yield record
                continue
            yield one(name, msg, by_name[id(msg)], desks[name], responder, session, notes)
        pending.clear()

    for item in read(files, config):
        pending.append(item)
        if len(pending) >= BATCH:
            yield from flush()
    yield from flush()


def one(name: str, msg: ParsedMessage, result: Any, desk: str, responder: Responder, session: Session | None,
        notes: Sequence[str]) -> dict[str, Any]:
    """Return the triage record of one parsed file (``result``: its classification, an exception, or None)."""
    if isinstance(result, Exception):
        return quarantined(name, "classify_error", f"{type(result).__name__}: {result}")
    label, confidence, auto, language = "other", 0.0, False, None
    if result is not None:
        label, confidence, auto, language = result.label, result.confidence, result.auto, result.language
    try:
        out = dry_run(session, responder, msg, label=label, confidence=confidence, auto=auto, language=language,
                      desk_address=desk)
    except Exception as exc:  # noqa: BLE001 - the respond stage quarantines it: so does the dry run
        return quarantined(name, "respond_error", f"{type(exc).__name__}: {exc}")
    record: dict[str, Any] = {"file": name, "label": label, "confidence": round(confidence, 4), "auto": auto,
                              "desk": desk, **out}
    if notes:
        record["notes"] = list(notes)
    return record


def dumps(record: dict[str, Any]) -> str:
    """Return one JSON line (text is valid UTF-8 by construction of the parsed record)."""
    return json.dumps(record, ensure_ascii=False)
