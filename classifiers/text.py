"""Pure text normalisation: set a message body's new words apart from the
quoted history and the signature under them.

The classifier reads only the sender's new words: quoted history is often
about something else, and it multiplies the text to classify.
"""

from __future__ import annotations

import re

# A line that starts the quoted history of a reply or forward, in English or Spanish.
_HISTORY_STARTS = [
    re.compile(p, re.IGNORECASE)
    for p in (
        r"^\s*On\b.{0,200}\bwrote:\s*$",
        r"^\s*El\b.{0,200}\bescribi[oó]:\s*$",
        r"^\s*Le\b.{0,200}\ba écrit\s*:\s*$",
        r"^\s*-{2,}\s*(Original Message|Mensaje original|Forwarded message|Mensaje reenviado)\s*-{2,}\s*$",
        r"^\s*-{5,}\s*Original Message\s*-{5,}",
        r"^\s*Begin forwarded message:\s*$",
        r"^\s*Inicio del mensaje reenviado:\s*$",
        r"^_{20,}\s*$",
    )
]
# Outlook's header block: "From: ... / Sent: ... / To: ... / Subject: ..." (or De:/Enviado:/Para:/Asunto:).
_OUTLOOK_FROM = re.compile(r"^\s*\*?(From|De)\s*:\*?\s+\S", re.IGNORECASE)
_OUTLOOK_NEXT = re.compile(r"^\s*\*?(Sent|Date|Enviado|Fecha|To|Para|Subject|Asunto|Cc)\s*:", re.IGNORECASE)
_QUOTE = re.compile(r"^\s*>")
_SIG_DELIM = re.compile(r"^-- ?$")
_SIG_SIGNOFFS = re.compile(
    r"^\s*(thanks|thank you|thanks in advance|many thanks|regards|best regards|kind regards|"
    r"warm regards|best|sincerely|respectfully|cheers|v/r|gracias|muchas gracias|saludos|"
    r"saludos cordiales|atentamente|cordialmente|quedo atent[oa]|un saludo|sent from my \w+|"
    r"enviado desde mi \w+)[\s,.!:]*$",
    re.IGNORECASE,
)
_DISCLAIMER = re.compile(
    r"^\s*(CONFIDENTIALITY NOTICE|CONFIDENTIAL|DISCLAIMER|AVISO DE CONFIDENCIALIDAD|"
    r"This (e-?mail|message) (and any attachments )?(is|may contain|contains))",
    re.IGNORECASE,
)


def split_body(text: str) -> tuple[str, str, str]:
    """Return ``(new, quoted, signature)`` for a plain-text body.

    ``new`` is what the sender wrote in this message; ``quoted`` the history
    (reply quotes, forwarded or Outlook-style blocks) and ``signature`` the
    sign-off block, both kept for operators and never lost.
    """
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    cut = _history_start(lines)
    head, quoted = lines[:cut], lines[cut:]
    new_lines, signature = _split_signature(head)
    new = "\n".join(new_lines).strip()
    if not new and quoted:
        # A bare forward: the forwarded text is what the sender wants us to read.
        new = "\n".join(line.lstrip("> ") for line in quoted if not _is_header_line(line)).strip()
    return new, "\n".join(quoted).strip(), "\n".join(signature).strip()


def _is_header_line(line: str) -> bool:
    return bool(_OUTLOOK_FROM.match(line) or _OUTLOOK_NEXT.match(line))


def _history_start(lines: list[str]) -> int:
    for i, line in enumerate(lines):
        if any(p.match(line) for p in _HISTORY_STARTS):
            return i
        if _OUTLOOK_FROM.match(line) and any(_OUTLOOK_NEXT.match(x) for x in lines[i + 1:i + 4]):
            return i
        if _QUOTE.match(line) and _quoted_block_follows(lines, i):
            return i
    return len(lines)


def _quoted_block_follows(lines: list[str], start: int) -> bool:
    """Return whether ``start`` begins the trailing quoted block (not an inline quote)."""
    rest = [line for line in lines[start:] if line.strip()]
    quoted = sum(1 for line in rest if _QUOTE.match(line))
    return quoted >= max(1, int(0.7 * len(rest)))


def _split_signature(lines: list[str]) -> tuple[list[str], list[str]]:
    for i, line in enumerate(lines):
        if _SIG_DELIM.match(line) or _DISCLAIMER.match(line):
            return lines[:i], lines[i:]
    # A sign-off ("Regards,") in the last lines starts the signature.
    nonblank = [i for i, line in enumerate(lines) if line.strip()]
    for i in nonblank[-8:]:
        if _SIG_SIGNOFFS.match(lines[i]) and i != nonblank[0]:
            return lines[:i], lines[i:]
    return lines, []
