"""Subscription commands sent by e-mail to the CSMS request address, in
English or Spanish: ``subscribe ACE; ACE Portal``, ``unsubscribe``,
``confirm <token>`` (or a reply to the confirmation request), and the
Spanish ``suscribir`` / ``alta``, ``baja`` / ``cancelar suscripción``,
``confirmar``.  Pure: text in, a :class:`Command` out.
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
    ("confirm", CONFIRM, "en"), ("help", HELP, "en"),
    ("suscribir", SUBSCRIBE, "es"), ("suscribirme", SUBSCRIBE, "es"), ("suscribirse", SUBSCRIBE, "es"),
    ("suscripcion", SUBSCRIBE, "es"), ("alta", SUBSCRIBE, "es"),
    ("cancelar suscripcion", UNSUBSCRIBE, "es"), ("darse de baja", UNSUBSCRIBE, "es"),
    ("darme de baja", UNSUBSCRIBE, "es"), ("baja", UNSUBSCRIBE, "es"), ("desuscribir", UNSUBSCRIBE, "es"),
    ("confirmar", CONFIRM, "es"), ("ayuda", HELP, "es"),
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


def parse_command(subject: str, body: str) -> Command | None:
    """Return the command in a message's subject or first body lines, or None."""
    token_match = TOKEN_RE.search(subject) or TOKEN_RE.search(body[:4000])
    token = token_match.group(0) if token_match else None
    candidates = [_REPLY_PREFIX.sub("", subject)]
    candidates += [line for line in body.splitlines()[:10] if line.strip() and not line.lstrip().startswith(">")]
    for line in candidates:
        folded = _fold(line).strip()
        for word, action, language in _WORDS:
            if folded == word or folded.startswith(word + " ") or folded.startswith(word + ":"):
                rest = line.strip()[len(word):].strip(" :")
                if token:
                    rest = rest.replace(token, "")
                topics = [t.strip() for t in re.split(r"[;,\n]", rest) if t.strip()]
                if action == CONFIRM or (action == UNSUBSCRIBE and token):
                    topics = []
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
