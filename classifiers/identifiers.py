"""Identifiers a sender quotes: ACE UserID, SCAC, Importer of Record number,
filer code, EIN and surety code, each checked against its shape
(``taxonomy.md``).

Short codes (SCAC, filer code, surety code, UserID) are taken only next to
the word that names them, in English or Spanish ("filer code K4M",
"código de filer: K4M"); a bare three-letter word is not a filer code.  EINs
and CBP-assigned IOR numbers have a shape distinctive enough to be taken
anywhere.

SSN-shaped numbers (an importer may use one as its IOR number) are
recognised and **never echoed**: the result says ``ssn_present: true``, and
the digits are not in it, nor in anything derived from it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

# Valid EIN prefixes (the IRS campus codes); 00, 07-09, 17-19, 28, 29, 49,
# 69, 70, 78, 79, 89, 96 and 97 are never issued.
_EIN_PREFIXES = frozenset(
    [f"{n:02d}" for n in (*range(1, 7), *range(10, 17), *range(20, 28), *range(30, 40),
                          *range(40, 49), *range(50, 69), *range(71, 78), *range(80, 89),
                          *range(90, 96), 98, 99)]
)
_B = r"(?<![\w-])"  # not glued to a word or a dash before
_E = r"(?![\w-]|-\d)"  # nor after

# Each pattern starts with a lookahead for the first characters a match can begin with: the
# engine then skips other positions quickly instead of trying the whole pattern at each one
# (the identifiers are read from every message).
_SSN = re.compile(r"(?=\d)" + _B + r"(\d{3})[- ](\d{2})[- ](\d{4})(?:-?\d{2})?" + r"(?![\w])")
_SSN_PLAIN = re.compile(
    r"(?=[sin])\b(?:ssn|social security|seguro social|ior|importer (?:of record )?(?:number|no\.?|#)|"
    r"n[uú]mero de importador)\D{0,20}(\d{9})(?!\d)", re.IGNORECASE)
_EIN = re.compile(r"(?=\d)" + _B + r"(\d{2})-(\d{7})(?:-?([A-Z0-9]{2}))?(?![\w-])")
_CBP_IOR = re.compile(r"(?=\d)" + _B + r"(\d{2})(\d{2})(\d{2})-(\d{5})(?![\w-])")

_DIGIT_SEP_DIGIT = re.compile(r"\d[- ]\d")
_NINE_DIGITS = re.compile(r"\d{9}")
#: ASCII text as digits (0), separators (a space) and the rest (x): the two guards above become
#: substring tests over one bytes.translate, several times faster than the regex scans.
_DIGIT_SHAPES = bytes(48 if 48 <= c <= 57 else 32 if c in (32, 45) else 120 for c in range(256))

_KW_SEP = r"\s*(?:(?:is|es|#|no\.?|number|n[uú]mero|code|c[oó]digo|:|=|\(|-)\s*){0,3}"
_SCAC = re.compile(r"(?=S)\bSCAC(?:\s+code)?" + _KW_SEP + r"[\"']?([A-Za-z]{2,4})\b(?![\w-])")
_FILER = re.compile(
    r"(?=[fc])\b(?:filer(?:\s+code)?|c[oó]digo\s+(?:de\s+)?filer|clave\s+(?:de\s+)?filer)"
    + _KW_SEP + r"[\"']?([A-Za-z0-9]{3})\b(?![\w-])",
    re.IGNORECASE,
)
_SURETY = re.compile(
    r"(?=[sc])\b(?:surety(?:\s+code)?|c[oó]digo\s+(?:de\s+)?(?:la\s+)?(?:fianza|afianzadora|surety))"
    + _KW_SEP + r"(\d{3})\b(?![\w-])",
    re.IGNORECASE,
)
_USER = re.compile(
    r"(?=[aulin])\b(?:ace\s+)?(?:(?P<strong>user\s*-?\s*id|userid|user\s+name|username|login|"
    r"(?:id|nombre)\s+de\s+usuario)|usuario)"
    r"(?P<sep>(?:\s*(?:is|es|was|era|:|=|#|-)\s*){1,2}|\s+)[\"'(]?([A-Za-z][A-Za-z0-9._-]{2,29})\b",
    re.IGNORECASE,
)
# Words that follow "UserID is/es" but are not a UserID.
_NOT_USER = frozenset("""
the a an my our your his her their not locked blocked still also and or but for with
el la los las mi su nuestro nuestra un una no esta está bloqueado bloqueada correcto
que and this that same different distinto diferente valid invalid correct wrong
""".split())
# Words after "SCAC"/"filer" that are ordinary words, not codes.
_NOT_CODE = frozenset("""
is es the and for our my you are was has not but can code codes number has that this
para por con los las del que una uno our its who how why new old any all one two
""".split())


def _looks_like_user_id(token: str) -> bool:
    return any(c.isdigit() for c in token) or (token.isupper() and len(token) >= 4) or (
        token.islower() and 5 <= len(token) <= 12 and token not in _COMMON_WORDS)


# Lower-case words that may follow "UserID" without being one.
_COMMON_WORDS = frozenset("""
password passwords again anymore account accounts works working there which while please
because since today yesterday before after email address reset unlock locked expired
contrasena contraseña cuenta correo porque desde todavia todavía cuando
""".split())


def _ein_ok(prefix: str) -> bool:
    return prefix in _EIN_PREFIXES


def _cbp_ior_ok(yy: str, dd: str, pp: str) -> bool:
    # YYDDPP: year, day of the month and a port-specific pair; day 01-31.
    return 1 <= int(dd) <= 31


def _ssn_shaped(area: str, group: str, serial: str) -> bool:
    return True  # any NNN-NN-NNNN is treated as one: better hidden than echoed


#: The words a :data:`_USER` match can start with (lower case).
_USER_STARTS = ("ace", "user", "login", "id", "nombre", "usuario")


def user_matches(text: str, lower: str) -> Iterator[re.Match[str]]:
    """Return what ``_USER.finditer(text)`` returns (``lower``: ``text.lower()``).

    In ASCII text a match can only start where ``lower`` has one of
    :data:`_USER_STARTS`: trying the pattern there alone, in order and
    without overlaps, finds the same matches several times faster than the
    regex engine's scan of every position.  Other text (where case folding
    is wider) is scanned whole.
    """
    if not text.isascii():
        yield from _USER.finditer(text)
        return
    starts: set[int] = set()
    for word in _USER_STARTS:
        at = lower.find(word)
        while at >= 0:
            starts.add(at)
            at = lower.find(word, at + 1)
    end = 0
    for at in sorted(starts):
        if at < end:
            continue
        m = _USER.match(text, at)
        if m is not None:
            end = m.end()
            yield m


def extract_identifiers(text: str) -> dict[str, Any]:
    """Return the identifiers quoted in ``text`` (only the keys found).

    Keys: ``user_ids``, ``scac``, ``ior``, ``filer_codes``, ``ein``,
    ``surety_codes`` (lists, in order of appearance, without duplicates) and
    ``ssn_present`` (``True`` when an SSN-shaped number was seen; the number
    itself is never returned).
    """
    text = text[:20000]
    found: dict[str, list[str]] = {}
    ssn = False

    def add(key: str, value: str) -> None:
        values = found.setdefault(key, [])
        if value not in values:
            values.append(value)

    # SSN-shaped numbers first, and blank them out so no other pattern sees their digits.
    # Every numeric identifier has a digit, a dash or space, and a digit; an SSN without
    # separators nine digits in a row: without those, these scans cannot match.
    if text.isascii():
        shapes = text.encode("ascii").translate(_DIGIT_SHAPES)
        separated, nine = b"0 0" in shapes, b"000000000" in shapes
    else:
        separated = _DIGIT_SEP_DIGIT.search(text) is not None
        nine = _NINE_DIGITS.search(text) is not None
    for pattern in ((_SSN,) if separated else ()) + ((_SSN_PLAIN,) if nine else ()):
        def _blank(m: re.Match[str]) -> str:
            nonlocal ssn
            ssn = True
            return m.group(0)[: m.start(1) - m.start(0)] + "#" * (m.end(0) - m.start(1))
        text = pattern.sub(_blank, text)

    for m in (_EIN.finditer(text) if separated else ()):
        prefix, rest, suffix = m.group(1), m.group(2), m.group(3)
        if not _ein_ok(prefix):
            continue
        number = f"{prefix}-{rest}"
        before = text[max(0, m.start() - 40):m.start()].lower()
        is_ior = bool(suffix) or "ior" in before or "importer" in before or "importador" in before
        is_ein = "ein" in before or "employer" in before or "tax id" in before or not is_ior
        if is_ior:
            add("ior", f"{number}{suffix}" if suffix else number)
        if is_ein:
            add("ein", number)
    for m in (_CBP_IOR.finditer(text) if separated else ()):
        if _cbp_ior_ok(m.group(2), m.group(3), m.group(3)):
            add("ior", m.group(0))
    lower = text.lower()
    for m in (_SCAC.finditer(text) if "scac" in lower else ()):
        code = m.group(1)
        if code.lower() not in _NOT_CODE and (code.isupper() or len(code) == 4):
            add("scac", code.upper())
    for m in (_FILER.finditer(text) if "filer" in lower else ()):
        code = m.group(1)
        if code.lower() not in _NOT_CODE and (any(c.isdigit() for c in code) or code.isupper()):
            add("filer_codes", code.upper())
    has_surety = "surety" in lower or "fianza" in lower or "afianzadora" in lower
    for m in (_SURETY.finditer(text) if has_surety else ()):
        add("surety_codes", m.group(1))
    has_user = "user" in lower or "usuario" in lower or "login" in lower
    for m in (user_matches(text, lower) if has_user else ()):
        user = m.group(3).rstrip("._-")
        if user.lower() in _NOT_USER or len(user) < 3:
            continue
        if not m.group("sep").strip() and not (m.group("strong") and _looks_like_user_id(user)):
            # "usuario bloqueado", "user id and password": no separator, so a code must look like one.
            continue
        add("user_ids", user)

    result: dict[str, Any] = dict(found)
    if ssn:
        result["ssn_present"] = True
    return result
