"""The one SSN redaction: an importer may use a Social Security Number as its
IOR number, and the desk never echoes one back.

:func:`redact` is applied to everything the desk writes from a sender's words:
the reply's Subject and body, the ticket's subject and history (so the queue
shows it redacted), the triage JSON and the log lines.  One pattern, here.
"""

from __future__ import annotations

import re

#: SSN-shaped: 3-2-4 digits with hyphens, spaces or dots, or nine digits standing alone.
SSN = re.compile(r"(?<![\w-])\d{3}([- .]?)\d{2}\1\d{4}(?![\w-])")
MASK = "###-##-####"
#: Any digit (what ``str.isdigit`` accepts, as ``\d`` does): without one there is nothing to redact.
_DIGIT = re.compile(r"\d")


def redact(text: str, keep_last4: bool = False) -> str:
    """Return ``text`` with every SSN-shaped number replaced by ``###-##-####`` (mail, tickets, JSON),
    or by ``***-**-1234`` for an analyst's screen (``keep_last4``): one pattern, two renderings."""
    if not text or not _DIGIT.search(text):
        return text
    if keep_last4:
        return SSN.sub(lambda m: "***-**-" + re.sub(r"\D", "", m.group(0))[-4:], text)
    return SSN.sub(MASK, text)
