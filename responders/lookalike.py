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
import unicodedata
from collections.abc import Iterable
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


def lookalike_of(domain: str, known: Iterable[str]) -> str | None:
    """Return a domain on file that ``domain`` (or its organisational domain) imitates, never itself, or None."""
    domain = domain.lower().strip(".")
    if not domain:
        return None
    known = list(known)
    if domain in known:
        return None
    for candidate in dict.fromkeys((domain, organisational_domain(unicode_domain(domain)))):
        skel = skeleton(candidate)
        decoded = unicode_domain(candidate)
        for good in known:
            if len(good) < 6 or good == decoded:
                continue
            if skeleton(good) == skel or _distance(good, decoded) <= 1:
                return good
    return None
