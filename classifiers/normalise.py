"""What the model reads: a message's new text folded to a stable form.

Lower case, accents folded (``contraseña`` and ``contrasena`` are one word to
the model: real users type both), numbers, e-mail addresses and URLs
replaced by placeholders (an entry number says "entry", not which entry),
and the text capped: the opening of a message says what it wants, and the
cost of the character n-grams grows with the length.
"""

from __future__ import annotations

import re
import unicodedata

#: Bumped whenever the output of :func:`normalise` or of the analyzers in
#: :mod:`classifiers.features` changes: a model trained with another version
#: reads different features and is refused on load.
NORMALISER_VERSION = 2

_EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b")
_URL = re.compile(r"\b(?:https?://|www\.)\S+", re.IGNORECASE)
_DIGITS = re.compile(r"\d+")
_SPACE = re.compile(r"[ \t\u00a0]+")
_NEWLINES = re.compile(r"\n\s*\n+")
_NON_TEXT = re.compile(r"[^\w\s.,;:?!¿¡'\"()/&%$#@+-]")

# Folding table for the accented letters of Spanish (and the Latin-1 rest):
# str.translate is much faster than NFKD per character on the hot path.
_FOLD = {}
for _code in range(0xC0, 0x250):
    _ch = chr(_code)
    _base = "".join(c for c in unicodedata.normalize("NFKD", _ch) if not unicodedata.combining(c))
    if _base != _ch and _base.isascii():
        _FOLD[_code] = _base
_FOLD.update({ord("ß"): "ss", ord("æ"): "ae", ord("ø"): "o", ord("œ"): "oe",
              ord("\u2019"): "'", ord("\u2018"): "'", ord("\u201c"): '"', ord("\u201d"): '"',
              ord("\u2013"): "-", ord("\u2014"): "-"})


def fold_accents(text: str) -> str:
    """Return ``text`` with accents removed (``ñ`` -> ``n``, ``á`` -> ``a``)."""
    return text.translate(_FOLD)


class _FoldTable(dict[int, str]):
    """``str.translate`` table doing :func:`fold_accents` and then the :data:`_NON_TEXT`
    replacement in one pass: each character's result is worked out on first sight and kept."""

    def __missing__(self, code: int) -> str:
        folded = _FOLD.get(code, chr(code))
        value = _NON_TEXT.sub(" ", folded)
        self[code] = value
        return value


_FOLD_AND_CLEAN = _FoldTable()
#: Runs that :data:`_SPACE` would change: two or more blanks, or a single tab or no-break space
#: (a lone space is already what the substitution would write).
_SPACE_RUNS = re.compile(r"[ \t\u00a0]{2,}|[\t\u00a0]")


def _ascii_table() -> bytes:
    """Return the ``bytes.translate`` table of an ASCII text: what lower case and
    :data:`_FOLD_AND_CLEAN` make of each character, and every digit as ``0``."""
    table = bytearray(range(256))
    for code in range(128):
        char = chr(code)
        value = "0" if char.isdigit() else _FOLD_AND_CLEAN[ord(char.lower())]
        table[code] = ord(value)
    return bytes(table)


_ASCII = _ascii_table()
_ZEROS = re.compile(rb"00+")


def normalise(text: str, max_chars: int = 1000) -> str:
    """Return the model's view of ``text`` (subject + new text), at most ``max_chars`` long."""
    # Cap first (with slack for the replacements below) so that the cost is bounded.
    text = text[: max_chars * 2]
    # The guards skip a scan of the whole text where the pattern cannot match (most mail):
    # every URL has "http" or "www" in some case, every address an "@".
    lowered = text.lower()
    if "http" in lowered or "www" in lowered:
        text = _URL.sub(" zurl ", text)
    if "@" in text:
        text = _EMAIL.sub(" zemail ", text)
    if text.isascii():
        # Most mail: one C pass over bytes does the lower case, the clean-up and the digits
        # (each a 0); the 0s of one number then collapse into one, as _DIGITS would write it.
        data = text.encode("ascii").translate(_ASCII)
        text = (_ZEROS.sub(b"0", data) if b"00" in data else data).decode("ascii")
    else:
        text = _DIGITS.sub("0", text)
        text = text.lower().translate(_FOLD_AND_CLEAN)
    if "  " in text or "\t" in text or "\xa0" in text:  # else nothing for _SPACE_RUNS to do
        text = _SPACE_RUNS.sub(" ", text)
    text = _NEWLINES.sub("\n", text)
    return text.strip()[:max_chars]
