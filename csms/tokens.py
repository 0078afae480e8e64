"""Signed, expiring tokens (HMAC-SHA256) for one-click unsubscribe, subscription
confirmations and VERP return paths.

A token is ``<payload>.<mac>`` in base64url without padding, where the payload
is ``purpose:subject:expires``: the purpose is part of what is signed, so a
confirmation token can never be used as an unsubscribe token.  Nothing is
stored per token: a forged one fails the MAC, an old one its expiry.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time

#: Purposes.
UNSUBSCRIBE = "u"
CONFIRM = "c"

#: What a token looks like in text (subjects, bodies, URLs).
TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{6,80}\.[A-Za-z0-9_-]{16,64}")


class BadToken(Exception):
    """The token is malformed, forged, for another purpose, or expired."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Signer:
    """Makes and checks tokens with one secret."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("token secret must be at least 16 bytes")
        self._key = secret

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._key, payload, hashlib.sha256).digest()[:16]

    def make(self, purpose: str, subject: int, ttl_seconds: float, now: float | None = None) -> str:
        """Return a token for ``subject`` (an id) valid for ``ttl_seconds``."""
        expires = int((time.time() if now is None else now) + ttl_seconds)
        payload = f"{purpose}:{subject:x}:{expires:x}".encode("ascii")
        return f"{_b64(payload)}.{_b64(self._mac(payload))}"

    def check(self, purpose: str, token: str, now: float | None = None) -> int:
        """Return the subject of a valid ``token``.

        Raises:
            BadToken: malformed, forged, another purpose, or expired.
        """
        try:
            payload_b64, mac_b64 = token.strip().split(".", 1)
            payload = _unb64(payload_b64)
            mac = _unb64(mac_b64)
        except (ValueError, UnicodeError):
            raise BadToken("malformed token") from None
        if not hmac.compare_digest(mac, self._mac(payload)):
            raise BadToken("forged token")
        try:
            got_purpose, subject, expires = payload.decode("ascii").split(":")
            subject_id, expires_at = int(subject, 16), int(expires, 16)
        except (ValueError, UnicodeError):
            raise BadToken("malformed token") from None
        if got_purpose != purpose:
            raise BadToken("token for another purpose")
        if (time.time() if now is None else now) > expires_at:
            raise BadToken("expired token")
        return subject_id

    # VERP: the return path names the subscriber and the notice, signed so that a
    # forged DSN cannot disable someone else (RFC 3464 reports are easy to fake).
    def verp_local(self, bounce_local: str, subscriber_id: int, notice_number: int) -> str:
        """Return ``<bounce_local>+<sid>-<number>-<mac>`` (lower-case: MTAs may fold case)."""
        core = f"{subscriber_id:x}-{notice_number:x}"
        mac = hmac.new(self._key, b"verp:" + core.encode(), hashlib.sha256).hexdigest()[:12]
        return f"{bounce_local}+{core}-{mac}"

    def parse_verp(self, address: str) -> tuple[int, int] | None:
        """Return ``(subscriber_id, notice_number)`` from a VERP address, or None if not ours/forged."""
        local = address.rpartition("@")[0].lower()
        if "+" not in local:
            return None
        tag = local.split("+", 1)[1]
        parts = tag.split("-")
        if len(parts) != 3:
            return None
        core = f"{parts[0]}-{parts[1]}"
        mac = hmac.new(self._key, b"verp:" + core.encode(), hashlib.sha256).hexdigest()[:12]
        if not hmac.compare_digest(mac, parts[2]):
            return None
        try:
            return int(parts[0], 16), int(parts[1], 16)
        except ValueError:
            return None
