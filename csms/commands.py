"""Subscription commands sent by e-mail to the CSMS request address, in
English or Spanish, in the subject or the first non-empty lines of the body:
``subscribe ACE; ACE Portal``, ``unsubscribe``, ``topics``, ``help``,
``confirm <token>`` (or a reply to the confirmation request), and the
Spanish ``suscribir`` / ``alta``, ``cancelar`` / ``baja``, ``temas``,
``ayuda``, ``confirmar``.  A command without topics takes them from the
lines that follow it (``subscribe`` in the subject, the topics in the body,
one a line or separated by ``;``).  Pure: text in, a :class:`Command` out.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

from csms.tokens import TOKEN_RE

SUBSCRIBE = "subscribe"
UNSUBSCRIBE = "unsubscribe"
CONFIRM = "confirm"
HELP = "help"

# Longest phrases first, so "cancelar suscripcion" wins over "cancelar".
_WORDS: list[tuple[str, str, str]] = sorted([
    ("subscribe", SUBSCRIBE, "en"), ("sign up", SUBSCRIBE, "en"), ("join", SUBSCRIBE, "en"),
    ("unsubscribe", UNSUBSCRIBE, "en"), ("remove", UNSUBSCRIBE, "en"), ("leave", UNSUBSCRIBE, "en"),
    ("confirm", CONFIRM, "en"), ("help", HELP, "en"), ("topics", HELP, "en"), ("list topics", HELP, "en"),
    ("suscribir", SUBSCRIBE, "es"), ("suscribirme", SUBSCRIBE, "es"), ("suscribirse", SUBSCRIBE, "es"),
    ("suscripcion", SUBSCRIBE, "es"), ("alta", SUBSCRIBE, "es"),
    ("cancelar suscripcion", UNSUBSCRIBE, "es"), ("darse de baja", UNSUBSCRIBE, "es"),
    ("darme de baja", UNSUBSCRIBE, "es"), ("baja", UNSUBSCRIBE, "es"), ("desuscribir", UNSUBSCRIBE, "es"),
    ("cancelar", UNSUBSCRIBE, "es"), ("confirmar", CONFIRM, "es"), ("ayuda", HELP, "es"), ("temas", HELP, "es"),
], key=lambda w: -len(w[0]))

_REPLY_PREFIX = re.compile(r"^\s*((re|aw|fw|fwd|rv|res)\s*:\s*)+", re.I)


@dataclass(frozen=True)
class Command:
    action: str
    language: str
    #: Topic names as written (matched against the topic list later); empty = all / unspecified.
    topics: list[str] = field(default_factory=list)
    #: A token found with it (confirmation, or the one-click token of a mailto unsubscribe).
    token: str | None = None


def _fold(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKD", text.lower()) if not unicodedata.combining(c))


def _body_lines(body: str) -> list[str]:
    """The body's first lines that can hold a command or topics: up to the first blank line after
    some text, a signature (``--``) or quoted history, at most 20."""
    lines: list[str] = []
    for line in body.splitlines()[:40]:
        stripped = line.strip()
        if stripped.startswith(">") or stripped in ("--", "-- ") or line.startswith("-- "):
            break
        if not stripped:
            if lines:
                break
            continue
        lines.append(stripped)
        if len(lines) >= 20:
            break
    return lines


def _split_topics(text: str) -> list[str]:
    return [t.strip() for t in re.split(r"[;,\n]", text) if t.strip()]


def _match_word(line: str) -> tuple[str, str, str] | None:
    """``(action, language, rest of the line)`` when ``line`` starts with a command word."""
    folded = _fold(line).strip()
    for word, action, language in _WORDS:
        if folded == word or folded.startswith(word + " ") or folded.startswith(word + ":"):
            return action, language, line.strip()[len(word):].strip(" :")
    return None


def parse_command(subject: str, body: str) -> Command | None:
    """Return the command in a message's subject or first body lines, or None."""
    token_match = TOKEN_RE.search(subject) or TOKEN_RE.search(body[:4000])
    token = token_match.group(0) if token_match else None
    subject_line = _REPLY_PREFIX.sub("", subject)
    lines = _body_lines(body)
    candidates = [(subject_line, lines), *((line, lines[i + 1:]) for i, line in enumerate(lines))]
    for line, following in candidates:
        found = _match_word(line)
        if found is None:
            continue
        action, language, rest = found
        if token:
            rest = rest.replace(token, "")
        topics = _split_topics(rest)
        if action == CONFIRM or (action == UNSUBSCRIBE and token):
            topics = []
        elif not topics and action in (SUBSCRIBE, UNSUBSCRIBE):
            # "subscribe" alone: the topics are on the lines after it (the body, for a subject command).
            topics = [t for other in following if _match_word(other) is None for t in _split_topics(other)]
        if action in (SUBSCRIBE, UNSUBSCRIBE) and len(topics) == 1 and _fold(topics[0]) in (
                "all", "todo", "todos", "todas"):
            topics = []
        return Command(action=action, language=language, topics=topics, token=token)
    if token:
        # A bare reply to a confirmation request ("Re: ...") carries only the token.
        return Command(action=CONFIRM, language="en", token=token)
    return None


def match_topics(requested: list[str], known: list[str]) -> tuple[list[str], list[str]]:
    """Return ``(matched known names, unknown requested names)``, case- and accent-insensitively."""
    by_fold = {_fold(name): name for name in known}
    matched: list[str] = []
    unknown: list[str] = []
    for name in requested:
        hit = by_fold.get(_fold(name).strip())
        if hit is None:
            unknown.append(name)
        elif hit not in matched:
            matched.append(hit)
    return matched, unknown
