"""Tickets as plain data: numbers (``ACE-2026-000123``), the subject tag that
lets follow-ups thread into them, reply subjects, priority and the clocks
against the desk's 4-hour target.  No I/O."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from models.parsed import ParsedMessage

_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029\u0085]+")
_PREFIX = re.compile(r"^\s*((re|fw|fwd|rv|res|aw|tr)\s*(\[\d+\])?\s*:\s*)+", re.IGNORECASE)


def ticket_number(prefix: str, year: int, seq: int) -> str:
    """Return the number of ticket ``seq`` opened in ``year``, e.g. ``ACE-2026-000123``."""
    return f"{prefix}-{year:04d}-{seq:06d}"


def number_pattern(prefix: str) -> re.Pattern[str]:
    return re.compile(r"\[?\b(" + re.escape(prefix) + r"-\d{4}-\d{6,})\b\]?", re.IGNORECASE)


def quoted_number(msg: ParsedMessage, prefix: str) -> str | None:
    """Return a ticket number the sender quotes in the subject (or first lines of the body)."""
    pattern = number_pattern(prefix)
    for text in (msg.subject or "", (msg.new_text or "")[:500]):
        m = pattern.search(text)
        if m:
            return m.group(1).upper()
    return None


def clean_header_text(value: str, limit: int = 200) -> str:
    """Return ``value`` on one line: no CR/LF or other controls (no header injection), capped."""
    value = _CONTROL.sub(" ", value or "")
    value = re.sub(r"\s+", " ", value).strip()
    return value[:limit]


def reply_subject(original: str, number: str, prefix: str, language: str = "en") -> str:
    """Return ``Re: <original> [ACE-2026-000123]`` (one prefix, one tag, one line)."""
    subject = clean_header_text(original, 300)
    subject = number_pattern(prefix).sub("", subject)
    subject = _PREFIX.sub("", subject).strip() or ("(sin asunto)" if language == "es" else "(no subject)")
    return clean_header_text(f"Re: {subject} [{number}]", 250)


_URGENT = re.compile(r"\b(urgent|urgente|asap|emergency|emergencia)\b", re.IGNORECASE)
_HELD = re.compile(r"\b(held|on hold|hold|detained|retenid[oa]s?|detenid[oa]s?)\b", re.IGNORECASE)
_OUTAGE = re.compile(r"\b(down|outage|not processing|ca[ií]d[oa]|fuera de servicio|no (?:se )?procesa)\b",
                     re.IGNORECASE)
#: A word of each pattern above, lower-case, that every match holds: a text without one of them
#: is not searched (a substring test costs a small part of a case-insensitive search).
_CUES = {_URGENT: ("urgent", "asap", "emergenc"), _HELD: ("held", "hold", "detained", "tenid"),
         _OUTAGE: ("down", "outage", "processing", "caid", "caíd", "servicio", "procesa")}
#: Characters that match a letter of those patterns case-insensitively without lower-casing to it
#: (dotted and dotless i, long s): a text with one is searched without the shortcut.
_FOLDS = "\u0130\u0131\u017f"


def _mentions(pattern: re.Pattern[str], text: str, lowered: list[str]) -> bool:
    if not text.isascii() and any(c in text for c in _FOLDS):
        return pattern.search(text) is not None
    if not lowered:
        lowered.append(text.lower())
    return any(cue in lowered[0] for cue in _CUES[pattern]) and pattern.search(text) is not None


def priority(label: str | None, text: str, verified: bool) -> tuple[str, list[str]]:
    """Return ``normal`` or ``high`` and why: outages, cargo held, "urgent" from a verified user."""
    why: list[str] = []
    lowered: list[str] = []  # the text lower-cased, once, when a search needs it
    if label == "system_status" and _mentions(_OUTAGE, text, lowered):
        why.append("outage")
    if label == "cargo_release" and _mentions(_HELD, text, lowered):
        why.append("cargo held")
    if verified and _mentions(_URGENT, text, lowered):
        why.append("urgent from a verified user")
    return ("high" if why else "normal"), why


@dataclass(frozen=True)
class Clock:
    """Where a ticket stands against the target."""

    age_hours: float
    first_response_hours: float | None
    resolution_hours: float | None
    overdue: bool


def clock(created: dt.datetime, first_response: dt.datetime | None, resolved: dt.datetime | None,
          now: dt.datetime, target_hours: float, due: dt.datetime | None = None) -> Clock:
    """Return the first-response and resolution clocks of a ticket against ``target_hours``.

    ``due`` is the ticket's own target (``due_at``: it skips the hours the desk
    is closed, ``responders.hours``); without it, ``target_hours`` after ``created``.
    """
    def hours(end: dt.datetime | None) -> float | None:
        return None if end is None else round((end - created).total_seconds() / 3600, 2)

    age = (now - created).total_seconds() / 3600
    late = now > due if due is not None else age > target_hours
    overdue = (first_response is None or resolved is None) and late
    return Clock(round(age, 2), hours(first_response), hours(resolved), overdue)
