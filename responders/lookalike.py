"""Lookalike domains: a sender's domain that imitates a domain on file.

Punycode labels (``xn--``) are decoded with ``idna`` first, then both domains
are reduced to a skeleton in the spirit of Unicode TS #39 section 4: each
character replaced by the ASCII letter it is confusable with (the Unicode
confusables table, as shipped by ``confusable-homoglyphs``), plus the ASCII
tricks (``rn``/``m``, ``vv``/``w``, ``0``/``o``, ``1``/``l``).  Equal skeletons
of different domains, or one edit apart on a long enough name, are a lookalike;
the sender's organisational domain (``mail.br0ker.example`` -> ``br0ker.example``)
is compared too.
"""

from __future__ import annotations

import functools
import json
import threading
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import confusable_homoglyphs
import idna

from responders.trust import organisational_domain

_ASCII_TRICKS = str.maketrans({"0": "o", "1": "l", "3": "e", "5": "s", "|": "l", "i": "l", "I": "l"})


@functools.lru_cache(maxsize=1)
def _table() -> dict[str, str]:
    """Return the confusables table as character -> the ASCII letter or digit it imitates."""
    path = Path(confusable_homoglyphs.__file__).with_name("confusables.json")
    data = json.loads(path.read_text(encoding="utf-8"))
    table: dict[str, str] = {}
    for char, glyphs in data.items():
        if char.isascii():
            continue
        for glyph in glyphs:
            target = glyph["c"].strip("\u200e")
            if len(target) == 1 and target.isascii() and target.isalnum():
                table[char] = target.lower()
                break
    return table


def unicode_domain(domain: str) -> str:
    """Return ``domain`` with its punycode labels decoded (a label that does not decode stays as it is)."""
    labels = []
    for label in domain.lower().strip(".").split("."):
        if label.startswith("xn--"):
            try:
                label = idna.decode(label)
            except (idna.IDNAError, UnicodeError, ValueError):
                try:
                    label = label[4:].encode("ascii").decode("punycode")
                except (UnicodeError, ValueError):
                    pass
        labels.append(label)
    return ".".join(labels)


@functools.lru_cache(maxsize=8192)
def skeleton(domain: str) -> str:
    """Return the confusable skeleton of ``domain``."""
    text = unicodedata.normalize("NFKC", unicode_domain(domain)).lower()
    table = _table()
    text = "".join(table.get(c, c) for c in text)
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c))
    return text.translate(_ASCII_TRICKS).replace("rn", "m").replace("vv", "w").replace("-", "")


def _distance(a: str, b: str) -> int:
    if abs(len(a) - len(b)) > 2:
        return 3
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def _without(text: str) -> Iterator[tuple[int, str]]:
    """Yield ``(i, text without its i-th character)`` for every position."""
    for i in range(len(text)):
        yield i, text[:i] + text[i + 1:]


@dataclass(frozen=True)
class _Known:
    """The domains on file, indexed so that a lookalike is found with a few dict lookups, not a
    skeleton and an edit distance for every domain on file (the desk has thousands)."""

    domains: tuple[str, ...]
    members: frozenset[str]
    #: skeleton -> positions in ``domains`` (of the domains long enough to be imitated, as below).
    skeletons: dict[str, list[int]]
    #: A domain -> its positions; the domain without one character -> positions; ``(i, the domain
    #: without its i-th character)`` -> positions.  One edit (``_distance`` <= 1) is: one character
    #: more, one fewer, or one other at the same place.
    exact: dict[str, list[int]]
    shorter: dict[str, list[int]]
    replaced: dict[tuple[int, str], list[int]]

    @classmethod
    def build(cls, known: Iterable[str]) -> _Known:
        domains = tuple(known)
        index = cls(domains, frozenset(domains), {}, {}, {}, {})
        for position, good in enumerate(domains):
            if len(good) < 6:
                continue
            index.skeletons.setdefault(skeleton(good), []).append(position)
            index.exact.setdefault(good, []).append(position)
            for i, rest in _without(good):
                index.shorter.setdefault(rest, []).append(position)
                index.replaced.setdefault((i, rest), []).append(position)
        return index

    def first_like(self, skel: str, decoded: str) -> str | None:
        """Return the first domain (in the order given) other than ``decoded`` with the skeleton
        ``skel`` or one edit from ``decoded``, or None."""
        found = set(self.skeletons.get(skel, ()))
        found.update(self.shorter.get(decoded, ()))
        for i, rest in _without(decoded):
            found.update(self.exact.get(rest, ()))
            found.update(self.replaced.get((i, rest), ()))
        found.difference_update(self.exact.get(decoded, ()))
        return self.domains[min(found)] if found else None


#: The indexes of the last few frozensets of domains asked about, by identity (the daemon asks about
#: one cached frozenset for minutes: ``responders.service.known_domains``).
_INDEXED: dict[int, tuple[frozenset[str], _Known]] = {}
_INDEXED_MAX = 8
_INDEXED_LOCK = threading.Lock()


def _indexed(known: Iterable[str]) -> _Known:
    if not isinstance(known, frozenset):
        return _Known.build(known)
    with _INDEXED_LOCK:
        cached = _INDEXED.get(id(known))
    if cached is not None and cached[0] is known:
        return cached[1]
    index = _Known.build(known)
    with _INDEXED_LOCK:
        if len(_INDEXED) >= _INDEXED_MAX:
            _INDEXED.pop(next(iter(_INDEXED)))
        # The frozenset is kept with its index, so its id is not reused while the entry lives.
        _INDEXED[id(known)] = (known, index)
    return index


def lookalike_of(domain: str, known: Iterable[str]) -> str | None:
    """Return a domain on file that ``domain`` (or its organisational domain) imitates, never itself, or None."""
    domain = domain.lower().strip(".")
    if not domain:
        return None
    index = _indexed(known)
    if domain in index.members:
        return None
    for candidate in dict.fromkeys((domain, organisational_domain(unicode_domain(domain)))):
        imitated = index.first_like(skeleton(candidate), unicode_domain(candidate))
        if imitated is not None:
            return imitated
    return None
