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


def redact(text: str) -> str:
    """Return ``text`` with every SSN-shaped number replaced by ``###-##-####``."""
    return SSN.sub(MASK, text) if text and any(c.isdigit() for c in text) else text
