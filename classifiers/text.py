"""Pure text normalisation: set a message body's new words apart from the
quoted history and the signature under them.

The classifier reads only the sender's new words: quoted history is often
about something else, and it multiplies the text to classify.  What counts
as history: reply headers in English and Spanish ("On ... wrote:", "El ...
escribió:", also split over two lines), Outlook header blocks
("From:/Sent:/To:/Subject:", "De:/Enviado el:/Para:/Asunto:"), forwarded
chains, separator rules and a trailing block of ``>`` quotes.  A forward
with little or no note of its own ("FYI, see below") keeps the forwarded
message's text as its new text: that is what the sender wants read.
Signatures start at ``-- ``, a sign-off ("Regards,", "Saludos cordiales"),
"Sent from my iPhone", or a confidentiality disclaimer.
"""

from __future__ import annotations

import re

# A line that starts the quoted history of a reply, in English, Spanish (or French).
_REPLY_STARTS = [
    re.compile(p, re.IGNORECASE)
    for p in (
        r"^\s*On\b.{0,200}\bwrote:\s*$",
        r"^\s*El\b.{0,200}\bescribi[oó]:\s*$",
        r"^\s*Le\b.{0,200}\ba écrit\s*:\s*$",
        r"^\s*-{2,}\s*(Original Message|Mensaje original|Mensaje de respuesta)\s*-{2,}\s*$",
        r"^\s*-{5,}\s*(Original Message|Mensaje original)\s*-{0,}",
        r"^_{20,}\s*$",
        r"^\s*-{20,}\s*$",
    )
]
# A line that starts a forwarded message.
_FORWARD_STARTS = [
    re.compile(p, re.IGNORECASE)
    for p in (
        r"^\s*-{2,}\s*(Forwarded message|Mensaje reenviado|Forwarded by .*|Message transféré)\s*-{0,}\s*$",
        r"^\s*Begin forwarded message:\s*$",
        r"^\s*Inicio del mensaje reenviado:\s*$",
    )
]
# Each list as one pattern (matches where any of its members matches): one regex call per line
# instead of a generator over ten, which was most of the cost of splitting a body.
_FORWARD_ANY = re.compile("|".join(f"(?:{p.pattern})" for p in _FORWARD_STARTS), re.IGNORECASE)
_REPLY_ANY = re.compile("|".join(f"(?:{p.pattern})" for p in _REPLY_STARTS), re.IGNORECASE)
# Reply headers wrapped over two lines: "On Tue, Mar 10, 2026 at 4:02 PM Jane <" / "jane@x> wrote:".
_WRAPPED_FIRST = re.compile(r"^\s*(On|El)\s.{5,}$", re.IGNORECASE)
_WRAPPED_SECOND = re.compile(r".*\b(wrote|escribi[oó])\s*:\s*$", re.IGNORECASE)
# Outlook's header block: "From: ... / Sent: ... / To: ... / Subject: ..." (or De:/Enviado el:/Para:/Asunto:).
_OUTLOOK_FROM = re.compile(r"^\s*\*?(From|De)\s*:\*?\s+\S", re.IGNORECASE)
_OUTLOOK_NEXT = re.compile(
    r"^\s*\*?(Sent|Date|Enviado|Enviado el|Fecha|To|Para|Subject|Asunto|Cc|CCO|Bcc|Importance|Importancia)"
    r"\s*:", re.IGNORECASE)
_QUOTE = re.compile(r"^\s*>")
_SIG_DELIM = re.compile(r"^-- ?$")
_SIG_SIGNOFFS = re.compile(
    r"^\s*(thanks|thank you|thanks so much|thanks again|thanks in advance|thank you in advance|"
    r"thanks for your help|thank you for your help|many thanks|thx|tia|regards|best regards|"
    r"kind regards|warm regards|best wishes|best|sincerely|respectfully|cheers|cordially|v/r|vr|"
    r"gracias|muchas gracias|gracias de antemano|gracias por su ayuda|gracias por su apoyo|"
    r"mil gracias|saludos|saludos cordiales|un saludo|un cordial saludo|reciba un cordial saludo|"
    r"atentamente|atte|cordialmente|quedo atent[oa]|quedo a sus [oó]rdenes|"
    r"sent from my [\w ]+|enviado desde mi [\w ]+|get outlook for \w+|obtener outlook para \w+)"
    r"[\s,.!:]*$",
    re.IGNORECASE,
)
_DISCLAIMER = re.compile(
    r"^\s*(CONFIDENTIALITY NOTICE|CONFIDENTIAL|DISCLAIMER|AVISO DE CONFIDENCIALIDAD|AVISO LEGAL|"
    r"This (e-?mail|message|communication) (and any (attachments|files) )?(transmitted with it )?"
    r"(is|are|may contain|contains|is intended)|"
    r"(Este|El presente) (correo|mensaje|e-?mail)( electr[oó]nico)? (y sus anexos |y cualquier anexo )?"
    r"(es|son|contiene|puede contener|est[aá] dirigido)|"
    r"La informaci[oó]n contenida en este (correo|mensaje))",
    re.IGNORECASE,
)
# Lines that may start the history or the signature: every pattern above, in the same case-
# insensitive mode, begins with white space and one of these (or "_", "--"), so a line where
# these do not match is one where none of the patterns can.  Found by one scan of the text
# (MULTILINE) instead of several regex calls per line, which were most of the cost of a long body.
_HISTORY_CANDIDATE = re.compile(r"^(?:_|[^\S\n]*(?:-|>|\*|on|el|le|begin|inicio|from|de))",
                                re.IGNORECASE | re.MULTILINE)
_SIGNATURE_CANDIDATE = re.compile(r"^(?:--|[^\S\n]*(?:confidential|disclaimer|aviso|this|este|el|la))",
                                  re.IGNORECASE | re.MULTILINE)


def _candidates(lines: list[str], pattern: re.Pattern[str]) -> list[int]:
    """Return, in order, the indices of the ``lines`` where ``pattern`` (anchored at ``^``) matches."""
    text = "\n".join(lines)
    found: list[int] = []
    line = at = 0
    for match in pattern.finditer(text):
        line += text.count("\n", at, match.start())
        at = match.start()
        found.append(line)
    return found


#: A note shorter than this above a forwarded message is not the whole request.
SHORT_NOTE = 300
#: Characters of forwarded text kept as new text.
FORWARD_KEEP = 2000


def split_body(text: str) -> tuple[str, str, str]:
    """Return ``(new, quoted, signature)`` for a plain-text body.

    ``new`` is what the sender wrote in this message (plus, for a forward
    with only a short note, the forwarded message's text); ``quoted`` the
    history (reply quotes, forwarded or Outlook-style blocks) and
    ``signature`` the sign-off block, both kept for operators and never lost.
    """
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    cut, forward = _history_start(lines)
    head, quoted = lines[:cut], lines[cut:]
    new_lines, signature = _split_signature(head)
    new = "\n".join(new_lines).strip()
    if quoted and (not new or (forward and len(new) < SHORT_NOTE)):
        # A bare forward, or "FYI, see below": the forwarded text is what the sender wants us to read.
        forwarded = _forwarded_text(quoted)
        new = f"{new}\n{forwarded}".strip() if new else forwarded
    return new, "\n".join(quoted).strip(), "\n".join(signature).strip()


def _is_header_line(line: str) -> bool:
    return bool(_OUTLOOK_FROM.match(line) or _OUTLOOK_NEXT.match(line))


def _history_start(lines: list[str]) -> tuple[int, bool]:
    """Return where the history starts, and whether it is a forward."""
    for i in _candidates(lines, _HISTORY_CANDIDATE):
        line = lines[i]
        if _FORWARD_ANY.match(line):
            return i, True
        if _REPLY_ANY.match(line):
            return i, False
        if (i + 1 < len(lines) and _WRAPPED_FIRST.match(line) and _WRAPPED_SECOND.match(lines[i + 1])
                and len(line) + len(lines[i + 1]) < 300):
            return i, False
        if _OUTLOOK_FROM.match(line) and any(_OUTLOOK_NEXT.match(x) for x in lines[i + 1:i + 4]):
            return i, _outlook_forward(lines[i:i + 8])
        if _QUOTE.match(line) and _quoted_block_follows(lines, i):
            return i, False
    return len(lines), False


def _outlook_forward(block: list[str]) -> bool:
    """Return whether an Outlook header block is a forward (its subject says FW:/RV:)."""
    for line in block:
        m = re.match(r"^\s*\*?(Subject|Asunto)\s*:\*?\s*(.*)$", line, re.IGNORECASE)
        if m:
            return bool(re.match(r"(fw|fwd|rv|reenviar|reenviado)\s*:", m.group(2).strip(), re.IGNORECASE))
    return False


def _forwarded_text(quoted: list[str]) -> str:
    """Return the body of the first message in ``quoted`` (header lines and quote marks dropped)."""
    out: list[str] = []
    started = False
    for index, line in enumerate(quoted):
        bare = re.sub(r"^(\s*>)+ ?", "", line)
        if index == 0 and (_FORWARD_ANY.match(bare) or _REPLY_ANY.match(bare)):
            continue
        if not started:
            if not bare.strip() or _is_header_line(bare) or _FORWARD_ANY.match(bare):
                continue
            started = True
        elif _FORWARD_ANY.match(bare) or _REPLY_ANY.match(bare) \
                or (_OUTLOOK_FROM.match(bare) and index + 1 < len(quoted) and _OUTLOOK_NEXT.match(
                    re.sub(r"^(\s*>)+ ?", "", quoted[index + 1]))):
            break
        out.append(bare)
        if sum(len(x) + 1 for x in out) > FORWARD_KEEP:
            break
    body, _signature = _split_signature(out)
    return "\n".join(body).strip()[:FORWARD_KEEP]


def _quoted_block_follows(lines: list[str], start: int) -> bool:
    """Return whether ``start`` begins the trailing quoted block (not an inline quote)."""
    rest = [line for line in lines[start:] if line.strip()]
    quoted = sum(1 for line in rest if _QUOTE.match(line))
    return quoted >= max(1, int(0.7 * len(rest)))


def _split_signature(lines: list[str]) -> tuple[list[str], list[str]]:
    nonblank = [i for i, line in enumerate(lines) if line.strip()]
    for i in _candidates(lines, _SIGNATURE_CANDIDATE):
        line = lines[i]
        if _SIG_DELIM.match(line) or (_DISCLAIMER.match(line) and nonblank and i != nonblank[0]):
            return lines[:i], lines[i:]
    # A sign-off ("Regards,") in the last lines starts the signature.
    for i in nonblank[-8:]:
        if _SIG_SIGNOFFS.match(lines[i]) and i != nonblank[0]:
            return lines[:i], lines[i:]
    return lines, []
