"""Signed, expiring tokens (HMAC-SHA256) for one-click unsubscribe, the
preferences page, subscription confirmations and VERP return paths, under a
key ring that several instances share and that can be rotated.

A token is ``<payload>.<mac>`` in base64url without padding, where the payload
is ``purpose:subject:expires:kid``: the purpose is part of what is signed, so a
confirmation token can never be used as an unsubscribe token, and ``kid`` (the
first 6 hex digits of the key's SHA-256) names the key that signed it.  The
ring signs with its first (current) key and accepts every key it holds, so
after ``acedesk secrets rotate`` the links already sent keep working for as
long as the previous secret stays in the ring.  Nothing is stored per token: a
forged one fails the MAC, an old one its expiry.  Tokens made before key ids
existed (three fields) are checked against every key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from collections.abc import Sequence

#: Purposes.
UNSUBSCRIBE = "u"
CONFIRM = "c"

#: What a token looks like in text (subjects, bodies, URLs).
TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{6,80}\.[A-Za-z0-9_-]{16,64}")

#: The shortest secret accepted (bytes).
MIN_SECRET = 16


class BadToken(Exception):
    """The token is malformed, forged, for another purpose, or expired."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def key_id(secret: bytes) -> str:
    """The public name of a secret: 6 hex digits of its SHA-256 (reveals nothing usable)."""
    return hashlib.sha256(secret).hexdigest()[:6]


class Signer:
    """Makes tokens with the current secret and checks them against every secret in the ring.

    Args:
        secret: the current secret (at least 16 bytes).
        previous: secrets rotated out that are still accepted for verification.
    """

    def __init__(self, secret: bytes, previous: Sequence[bytes] = ()) -> None:
        keys = [secret, *[p for p in previous if p and p != secret]]
        for key in keys:
            if len(key) < MIN_SECRET:
                raise ValueError(f"token secret must be at least {MIN_SECRET} bytes")
        self._key = secret
        self._keys = {key_id(k): k for k in keys}
        self.kid = key_id(secret)
        # Keyed once: a copy skips re-deriving the padded keys, a third of an HMAC's cost, which
        # counts when a notice signs one token and one return path per subscriber.
        self._keyed = hmac.new(secret, digestmod=hashlib.sha256)
        verp = self._keyed.copy()
        verp.update(b"verp:")
        self._keyed_verp = verp

    @property
    def key_ids(self) -> list[str]:
        """The ids of the keys accepted, the current one first."""
        return list(self._keys)

    @staticmethod
    def _mac_with(key: bytes, payload: bytes) -> bytes:
        return hmac.new(key, payload, hashlib.sha256).digest()[:16]

    def make(self, purpose: str, subject: int, ttl_seconds: float, now: float | None = None) -> str:
        """Return a token for ``subject`` (an id) valid for ``ttl_seconds``, signed with the current key."""
        expires = int((time.time() if now is None else now) + ttl_seconds)
        payload = f"{purpose}:{subject:x}:{expires:x}:{self.kid}".encode("ascii")
        mac = self._keyed.copy()
        mac.update(payload)
        return f"{_b64(payload)}.{_b64(mac.digest()[:16])}"

    def check(self, purpose: str, token: str, now: float | None = None) -> int:
        """Return the subject of a valid ``token``.

        Raises:
            BadToken: malformed, forged (no key of the ring signed it), another purpose, or expired.
        """
        try:
            payload_b64, mac_b64 = token.strip().split(".", 1)
            payload = _unb64(payload_b64)
            mac = _unb64(mac_b64)
            fields = payload.decode("ascii").split(":")
        except (ValueError, UnicodeError):
            raise BadToken("malformed token") from None
        if len(fields) == 4:
            key = self._keys.get(fields[3])
            candidates = [key] if key is not None else []
        else:
            candidates = list(self._keys.values())
        if not any(hmac.compare_digest(mac, self._mac_with(k, payload)) for k in candidates):
            raise BadToken("forged token")
        try:
            got_purpose, subject, expires = fields[:3]
            subject_id, expires_at = int(subject, 16), int(expires, 16)
        except ValueError:
            raise BadToken("malformed token") from None
        if got_purpose != purpose:
            raise BadToken("token for another purpose")
        if (time.time() if now is None else now) > expires_at:
            raise BadToken("expired token")
        return subject_id

    # VERP: the return path names the subscriber and the notice, signed so that a
    # forged DSN cannot disable someone else (RFC 3464 reports are easy to fake).
    @staticmethod
    def _verp_mac(key: bytes, core: str) -> str:
        return hmac.new(key, b"verp:" + core.encode(), hashlib.sha256).hexdigest()[:12]

    def verp_local(self, bounce_local: str, subscriber_id: int, notice_number: int) -> str:
        """Return ``<bounce_local>+<sid>-<number>-<mac>`` (lower-case: MTAs may fold case)."""
        core = f"{subscriber_id:x}-{notice_number:x}"
        mac = self._keyed_verp.copy()
        mac.update(core.encode())
        return f"{bounce_local}+{core}-{mac.hexdigest()[:12]}"

    def parse_verp(self, address: str) -> tuple[int, int] | None:
        """Return ``(subscriber_id, notice_number)`` from a VERP address, or None if not ours/forged.

        Any key of the ring is accepted: bounces of notices sent before a rotation still count.
        """
        local = address.rpartition("@")[0].lower()
        if "+" not in local:
            return None
        parts = local.split("+", 1)[1].split("-")
        if len(parts) != 3:
            return None
        core = f"{parts[0]}-{parts[1]}"
        if not any(hmac.compare_digest(self._verp_mac(k, core), parts[2]) for k in self._keys.values()):
            return None
        try:
            return int(parts[0], 16), int(parts[1], 16)
        except ValueError:
            return None

    # The preferences form's anti-forgery field: bound to the link's token, so a form posted from
    # another site (which cannot read the page) does not carry it.
    def form_key(self, token: str) -> str:
        """Return the CSRF field for forms on the page behind ``token``."""
        return _b64(hmac.new(self._key, b"form:" + token.encode(), hashlib.sha256).digest()[:12])

    def check_form_key(self, token: str, value: str) -> bool:
        return any(hmac.compare_digest(_b64(hmac.new(k, b"form:" + token.encode(), hashlib.sha256).digest()[:12]),
                                       value) for k in self._keys.values())
