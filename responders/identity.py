"""Who a message is about: UserIDs and identifiers on file that it mentions,
and requests made on somebody else's behalf.

The directory is matched through an index built once from the users table
(:class:`DirectoryIndex`: a dict of every UserID on file, lower-cased, and of
every identifier on file, normalised), never one regular expression per user:
a message's tokens are looked up, so the cost is the length of the message,
not the number of users (100,000 on the desk).

* A **UserID** counts in any shape and any case, wherever it appears as a
  token of the subject or new text: in prose, in parentheses, after "user",
  "usuario", "UserID", "ID de usuario", in an HTML table cell.
* An **identifier** (IOR in all its shapes, including SSN-shaped, EIN,
  CBP-assigned number, filer code, SCAC, surety code) is compared without
  its punctuation (``123-45-6789``, ``123 45 6789`` and ``123456789`` are one
  number).  Codes of five characters or more count anywhere; shorter codes
  (SCAC, filer, surety) only next to the word that names them, or a desk
  with 100,000 users would read every "THE" as somebody's SCAC.
* A request **on behalf of** another person ("for my boss", "para mi jefe",
  "for my user", "on behalf of") is recognised by phrase.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from itertools import filterfalse
from dataclasses import dataclass, field

#: Tokens a UserID can be made of (``users import`` accepts ``[A-Za-z0-9][A-Za-z0-9._@-]*``).
_TOKEN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._@-]*[A-Za-z0-9])?")
#: Digit groups separated by spaces or hyphens (an SSN-shaped IOR written ``123 45 6789``), with a suffix.
_NUMBER = re.compile(r"(?<![\w-])\d[\d -]{4,14}\d(?:-?[A-Za-z0-9]{2})?(?![\w-])")
_CODE_CONTEXT = re.compile(
    r"\b(?:scac|filer|surety|c[oó]digo|code|clave|fianza|afianzadora|carrier|transportista)\b[^\n]{0,25}$",
    re.IGNORECASE)
_DIGIT = re.compile(r"\d")
#: Tokens scanned per message: enough for any real request, bounded for any hostile one.
MAX_TOKENS = 5000
#: Texts up to this length are tokenised in one call; longer (hostile) ones stop after MAX_TOKENS.
_SCANNED_CHARS = 100_000
SHORT_CODE = 5

_ON_BEHALF = re.compile(
    r"\b(?:on\s+behalf\s+of|in\s+the\s+name\s+of|"
    r"(?:for|of)\s+(?:my|our|a|one\s+of\s+(?:my|our))\s+(?:boss|manager|supervisor|colleague|co-?worker|employee|"
    r"staff|user|users|client|customer|team\s*mate|associate|partner|wife|husband|son|daughter|friend|"
    r"assistant|director|owner)s?|"
    r"(?:my|our)\s+(?:boss|manager|supervisor|colleague|co-?worker|employee|user|client|customer|assistant)"
    r"(?:'s)?\s+(?:account|password|user\s*id|userid|login)|"
    r"en\s+nombre\s+de|de\s+parte\s+de|"
    r"(?:para|por)\s+(?:mi|mis|nuestro|nuestra|nuestros|un|una)\s+(?:jefe|jefa|gerente|supervisor|supervisora|"
    r"colega|compa[nñ]ero|compa[nñ]era|empleado|empleada|usuario|usuaria|usuarios|cliente|clienta|"
    r"asistente|director|directora|esposo|esposa|hijo|hija|amigo|amiga|socio|socia)s?|"
    r"(?:la\s+cuenta|el\s+usuario|la\s+contrase[nñ]a)\s+de\s+mi\s+(?:jefe|jefa|gerente|colega|compa[nñ]ero|"
    r"compa[nñ]era|empleado|empleada|cliente|usuario))\b",
    re.IGNORECASE)


def normalise_identifier(value: str) -> str:
    """Return ``value`` without punctuation or spaces, upper-case: the index key of an identifier."""
    return re.sub(r"[^A-Za-z0-9]", "", value).upper()


@dataclass(frozen=True)
class DirectoryIndex:
    """Every UserID and identifier on file, for lookups by token."""

    #: lower-cased UserID -> the UserID as on file.
    user_ids: dict[str, str] = field(default_factory=dict)
    #: normalised identifier -> lower-cased UserIDs holding it.
    identifiers: dict[str, frozenset[str]] = field(default_factory=dict)

    @classmethod
    def build(cls, users: Iterable[tuple[str, str]]) -> DirectoryIndex:
        """Return the index of ``(user_id, identifier)`` pairs."""
        user_ids: dict[str, str] = {}
        holders: dict[str, set[str]] = {}
        for user_id, identifier in users:
            user_ids[user_id.lower()] = user_id
            key = normalise_identifier(identifier or "")
            if key:
                holders.setdefault(key, set()).add(user_id.lower())
        return cls(user_ids, {k: frozenset(v) for k, v in holders.items()})


def _tokens(text: str) -> Iterable[re.Match[str]]:
    for count, match in enumerate(_TOKEN.finditer(text)):
        if count >= MAX_TOKENS:
            return
        yield match


def _lowered_tokens(text: str) -> list[str]:
    """Return every token of ``text``, lower-cased (callers bound the text's length)."""
    # An ASCII text is lower-cased before it is tokenised (one call, not one a token): a token is
    # ASCII letters, digits and ``._@-``, so its tokens are the original ones, lower-cased.
    if text.isascii():
        return _TOKEN.findall(text.lower())
    return list(map(str.lower, _TOKEN.findall(text)))


def mentions(text: str, index: DirectoryIndex) -> tuple[list[str], list[str]]:
    """Return ``(mentioned_user_ids(text, index), mentioned_identifiers(text, index))``: one
    tokenisation of ``text`` for both."""
    if len(text) > _SCANNED_CHARS or not (index.user_ids or index.identifiers):
        return mentioned_user_ids(text, index), mentioned_identifiers(text, index)
    tokens = _lowered_tokens(text)
    return _user_ids_among(tokens[:MAX_TOKENS], index), _identifiers_quoted(text, index, tokens)


def mentioned_user_ids(text: str, index: DirectoryIndex) -> list[str]:
    """Return the UserIDs on file (as on file) that appear as tokens of ``text``, in order."""
    if not index.user_ids:
        return []
    # A token starts and ends with a letter or digit (``_TOKEN``), so it is looked up as it stands:
    # one dict lookup a token, the first MAX_TOKENS tokens (this runs for every message of the desk).
    tokens = (_lowered_tokens(text)[:MAX_TOKENS] if len(text) <= _SCANNED_CHARS
              else [m.group(0).lower() for m in _tokens(text)])
    return _user_ids_among(tokens, index)


def _user_ids_among(tokens: list[str], index: DirectoryIndex) -> list[str]:
    known = index.user_ids
    if known.keys().isdisjoint(tokens):
        return []  # most messages quote nobody's UserID: one set operation says so
    return list(dict.fromkeys(known[t] for t in tokens if t in known))


def _may_quote_identifier(text: str, index: DirectoryIndex, tokens: list[str]) -> bool:
    """Return False only when no number and no token of ``text`` is an identifier on file.

    ``tokens``: every token of ``text``.  A superset of what :func:`mentioned_identifiers` looks
    at (every token, not the first MAX_TOKENS; no short-code context), so that the common message
    -- no identifier on file in it -- costs a few set operations, not a normalisation a token.
    """
    keys = index.identifiers.keys()
    if _DIGIT.search(text, 0, 50_000):
        for match in _NUMBER.finditer(text[:50_000]):
            if normalise_identifier(match.group(0)) in keys or re.sub(r"\D", "", match.group(0)) in keys:
                return True
    if not keys.isdisjoint(map(str.upper, tokens)):
        return True
    # Tokens with ``._@-`` inside are compared without them (``12-3456789`` is ``123456789``).
    return not keys.isdisjoint(map(normalise_identifier, filterfalse(str.isalnum, tokens)))


def mentioned_identifiers(text: str, index: DirectoryIndex) -> list[str]:
    """Return the normalised identifiers on file that ``text`` quotes, in order."""
    if not index.identifiers:
        return []
    return _identifiers_quoted(text, index, _lowered_tokens(text) if len(text) <= _SCANNED_CHARS else None)


def _identifiers_quoted(text: str, index: DirectoryIndex, tokens: list[str] | None) -> list[str]:
    if not index.identifiers or tokens is not None and not _may_quote_identifier(text, index, tokens):
        return []
    found: list[str] = []

    def take(key: str, start: int) -> None:
        if key in index.identifiers and key not in found:
            if len(key) < SHORT_CODE and not _CODE_CONTEXT.search(text[max(0, start - 60):start]):
                return
            found.append(key)

    for match in _NUMBER.finditer(text[:50_000]):
        take(normalise_identifier(match.group(0)), match.start())
        digits = re.sub(r"\D", "", match.group(0))
        take(digits, match.start())
    for match in _tokens(text):
        take(normalise_identifier(match.group(0)), match.start())
    return found


def on_behalf(text: str) -> str | None:
    """Return the phrase by which ``text`` asks on somebody else's behalf, or None."""
    text = text[:20_000]
    if not _may_be_on_behalf(text):
        return None
    found = _ON_BEHALF.search(text)
    return found.group(0) if found else None


def _may_be_on_behalf(text: str) -> bool:
    """Return False only when :data:`_ON_BEHALF` cannot match ``text`` (a cheap necessary condition).

    Every phrase of ``_ON_BEHALF`` holds, after white space, either a word of :data:`_BEHALF_WORDS`
    or a noun of :data:`_BEHALF_NOUNS` whose white space follows a possessive or article
    (:data:`_BEHALF_LEADS`: "my", "our", "a", "mi", "nuestra"...).  Most messages have no such
    pair, and finding that out on the lower-cased text costs a quarter of the phrase search, which
    tries its dozen alternatives at every word.
    """
    if not text.isascii() and any(c in text for c in _FOLDS):
        return True
    low = text.lower()
    for match in _BEHALF_CUE.finditer(low):
        if match.group(1):
            return True
        end = match.start() + 1
        while end > 0 and low[end - 1].isspace():
            end -= 1
        if low.endswith(_BEHALF_LEADS, 0, end):
            return True
    return False


#: The only characters that match one of ``_ON_BEHALF``'s letters case-insensitively but do not
#: lower-case to it (dotted and dotless i, long s): a text with one is searched without the shortcut.
_FOLDS = "\u0130\u0131\u017f"
#: After white space, words of ``_ON_BEHALF`` that need no possessive before them (group 1), or
#: the nouns that do: every noun of its alternatives, as a prefix.
_BEHALF_CUE = re.compile(
    r"\s(?:(behalf|name|nombre|parte)|"
    r"boss|manager|supervisor|colleague|co-?worker|employee|staff|user|client|customer|team|associate|partner|"
    r"wife|husband|son|daughter|friend|assistant|director|owner|"
    r"jefe|jefa|gerente|colega|compa[nñ]er|emplead|usuari|asistente|espos|hij|amig|soci)")
#: What precedes a noun's white space in every phrase of ``_ON_BEHALF`` that names one.
_BEHALF_LEADS = ("my", "our", "a", "mi", "mis", "nuestro", "nuestra", "nuestros", "un", "una")
