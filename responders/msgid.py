"""Our signed Message-IDs (RFC 5322 section 3.6.4).

Every reply's Message-ID carries the ticket number, a nonce and an HMAC over
(ticket, nonce, recipient) with the install's secret.  A reply to one of our
messages (its ``In-Reply-To``/``References``) then threads into its ticket
without guessing, and a message of ours that comes back (a loop, an
auto-responder echoing it) is recognised as our own.  Nobody without the
secret can mint an ID that threads into someone's ticket, and an ID only
verifies for the recipient it was made for.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

_OURS = re.compile(r"^<?(?P<ticket>[A-Za-z0-9-]{1,40})\.(?P<nonce>[a-z0-9]{8,32})\.(?P<tag>[a-z0-9]{26})@(?P<domain>[^<>@\s]+)>?$")


@dataclass(frozen=True)
class OurId:
    """A Message-ID of ours that verified: which ticket, and for whom."""

    ticket: str
    recipient: str


def _tag(secret: bytes, ticket: str, nonce: str, recipient: str) -> str:
    mac = hmac.new(secret, f"{ticket}\x00{nonce}\x00{recipient.lower()}".encode(), hashlib.sha256)
    return base64.b32encode(mac.digest()[:16]).decode().rstrip("=").lower()


def make_message_id(secret: bytes, ticket: str, recipient: str, domain: str, nonce: str | None = None) -> str:
    """Return ``<ticket.nonce.tag@domain>`` signed for ``recipient``."""
    nonce = nonce or secrets.token_hex(6)
    return f"<{ticket}.{nonce}.{_tag(secret, ticket, nonce, recipient)}@{domain}>"


def check_message_id(secret: bytes, message_id: str | None, candidates: list[str]) -> OurId | None:
    """Return the ticket of ``message_id`` if it is ours and signed for one of ``candidates``."""
    if not message_id:
        return None
    m = _OURS.match(message_id.strip())
    if not m:
        return None
    for recipient in candidates:
        if recipient and hmac.compare_digest(m["tag"], _tag(secret, m["ticket"], m["nonce"], recipient)):
            return OurId(ticket=m["ticket"], recipient=recipient.lower())
    return None


def looks_like_ours(message_id: str | None, domain: str) -> bool:
    """Return whether ``message_id`` has our shape and domain (signature not checked)."""
    m = _OURS.match((message_id or "").strip())
    return bool(m and m["domain"].lower() == domain.lower())
