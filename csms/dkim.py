"""DKIM signatures (RFC 6376) on everything CSMS sends: notices and control
mail.  Since 2024 the large mailbox providers require bulk senders to sign,
and RFC 8058 section 4 requires the signature to cover ``List-Unsubscribe``
and ``List-Unsubscribe-Post`` before they show a one-click button.

Control mail (a few messages an hour) is signed by dkimpy itself
(:meth:`DkimKey.sign`).  A notice goes to 100,000 subscribers, and dkimpy's
pure-Python RSA takes ~8 ms a signature (2048 bits): :class:`NoticeSigner`
hashes the notice's fixed headers once, canonicalises the per-recipient ones
with dkimpy's own relaxed canonicalisation, and leaves only the RSA operation
per message, done by OpenSSL (``cryptography``, ~0.3 ms).  Every
``NoticeSigner`` checks its first signature with dkimpy's verifier before it
signs anything else, so the two paths cannot drift apart unnoticed.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import dkim
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from dkim.canonicalization import Relaxed

#: What a notice's signature covers: RFC 8058 section 4's two, the identity and list headers,
#: and what a replay would change.
NOTICE_HEADERS = (b"from", b"subject", b"date", b"mime-version", b"content-type", b"list-id",
                  b"list-unsubscribe-post", b"to", b"message-id", b"list-unsubscribe")
#: What a control message's signature covers.
CONTROL_HEADERS = (b"from", b"to", b"subject", b"date", b"message-id", b"reply-to", b"in-reply-to",
                   b"references", b"mime-version", b"content-type", b"auto-submitted")


class DkimError(Exception):
    """The key cannot be read, or a signature would not verify."""


@dataclass(frozen=True)
class DkimKey:
    """A signing key: ``d=`` domain, ``s=`` selector and the RSA private key (PEM)."""

    domain: str
    selector: str
    pem: bytes

    @classmethod
    def load(cls, path: Path, domain: str, selector: str) -> DkimKey:
        """Read and check a PEM RSA key.

        Raises:
            DkimError: unreadable, not an RSA private key, or shorter than 1024 bits (RFC 8301).
        """
        try:
            pem = path.read_bytes()
            key = serialization.load_pem_private_key(pem, password=None)
        except OSError as exc:
            raise DkimError(f"cannot read {path}: {exc.strerror}") from None
        except (ValueError, TypeError) as exc:
            raise DkimError(f"{path}: not a PEM private key without a password ({exc})") from None
        if not isinstance(key, rsa.RSAPrivateKey) or key.key_size < 1024:
            raise DkimError(f"{path}: expected an RSA key of at least 1024 bits (RFC 8301)")
        return cls(domain=domain, selector=selector, pem=pem)

    def public_record(self) -> bytes:
        """The DNS TXT record to publish at ``<selector>._domainkey.<domain>``."""
        key = serialization.load_pem_private_key(self.pem, password=None)
        der = key.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
        return b"v=DKIM1; k=rsa; p=" + base64.b64encode(der)

    def sign(self, raw: bytes, include: Sequence[bytes] = CONTROL_HEADERS) -> bytes:
        """Return ``raw`` with a DKIM-Signature (dkimpy) in front; headers absent from it are skipped."""
        present = {line.split(b":", 1)[0].strip().lower() for line in _header_lines(raw)}
        signed = [h for h in include if h in present]
        header = dkim.sign(raw, self.selector.encode(), self.domain.encode(), self.pem,
                           include_headers=signed, canonicalize=(b"relaxed", b"simple"))
        return header + raw


def _header_lines(raw: bytes) -> list[bytes]:
    end = raw.find(b"\r\n\r\n")
    head = raw[:end if end >= 0 else len(raw)]
    return [line for line in head.split(b"\r\n") if line and line[:1] not in b" \t"]


def verify(raw: bytes, record: bytes) -> bool:
    """Verify ``raw``'s first DKIM signature with dkimpy against ``record`` (no DNS)."""
    return bool(dkim.verify(raw, dnsfunc=lambda name, timeout=5: record))


def _fold(value: str) -> str:
    """Fold a long tag list after '; ' so no line passes 78 characters (the signature has none)."""
    out, line = [], ""
    for part in value.split("; "):
        piece = part if not line else "; " + part
        if line and len(line) + len(piece) > 70:
            out.append(line + ";")
            line = " " + part
        else:
            line += piece
    out.append(line)
    return "\r\n".join(out)


class NoticeSigner:
    """Signs the copies of one notice: the fixed headers hashed once, the rest per message.

    Args:
        key: the signing key.
        fixed: the notice's header block shared by every copy (CRLF lines, no blank line).
        now: the ``t=`` timestamp (one per notice).
    """

    def __init__(self, key: DkimKey, fixed: bytes, now: float | None = None) -> None:
        self.key = key
        self._rsa = serialization.load_pem_private_key(key.pem, password=None)
        assert isinstance(self._rsa, rsa.RSAPrivateKey)
        headers = _parse(fixed)
        self.fixed_names = [name for name in NOTICE_HEADERS[:7]]
        missing = [n.decode() for n in self.fixed_names if n not in headers]
        if missing:
            raise DkimError(f"the notice's headers lack {', '.join(missing)}")
        self._fixed_hash = hashlib.sha256()
        for name in self.fixed_names:
            self._fixed_hash.update(self._canon(name, headers[name]))
        self.names = b":".join(NOTICE_HEADERS).decode()
        self._stamp = int(time.time() if now is None else now)
        self._checked = False
        self._record = key.public_record()

    @staticmethod
    def _canon(name: bytes, value: bytes) -> bytes:
        """``name:value\r\n`` in dkimpy's relaxed header canonicalisation."""
        (cname, cvalue), = Relaxed.canonicalize_headers([(name, value)])
        return cname + b":" + cvalue

    def signature(self, recipient_headers: Sequence[tuple[bytes, bytes]], body: bytes) -> bytes:
        """Return the ``DKIM-Signature:`` header (CRLF-terminated) for one copy, given its
        per-recipient headers (in :data:`NOTICE_HEADERS` order, after the fixed ones) and its body.

        Raises:
            DkimError: the first signature of this notice does not verify with dkimpy.
        """
        h = self._fixed_hash.copy()
        for name, value in recipient_headers:
            h.update(self._canon(name, value))
        # Simple body canonicalisation: the body as sent, trailing empty lines reduced to one CRLF.
        body_hash = base64.b64encode(hashlib.sha256(body.rstrip(b"\r\n") + b"\r\n").digest()).decode()
        tags = (f"v=1; a=rsa-sha256; c=relaxed/simple; d={self.key.domain}; s={self.key.selector}; "
                f"t={self._stamp}; h={self.names}; bh={body_hash}; b=")
        value = (" " + _fold(tags)).encode()
        # The signature header itself, b= empty, is hashed last and without its CRLF (RFC 6376 3.7).
        h.update(self._canon(b"dkim-signature", value)[:-2])
        signed = self._rsa.sign(h.digest(), padding.PKCS1v15(), Prehashed(hashes.SHA256()))
        b64 = base64.b64encode(signed)
        # b= on lines of its own, folded at 72 (whitespace in b= is ignored by verifiers).
        folded = b"\r\n ".join(b64[i:i + 72] for i in range(0, len(b64), 72))
        return b"DKIM-Signature:" + value + b"\r\n " + folded + b"\r\n"

    def sign(self, message: bytes, recipient_headers: Sequence[tuple[bytes, bytes]], body: bytes) -> bytes:
        """Return ``message`` (the whole copy) with its signature in front; the first one is checked."""
        signed = self.signature(recipient_headers, body) + message
        if not self._checked:
            if not verify(signed, self._record):
                raise DkimError("the DKIM signature of this notice does not verify (dkimpy); nothing sent")
            self._checked = True
        return signed


def _parse(block: bytes) -> dict[bytes, bytes]:
    """``{lower name: raw value}`` of a CRLF header block (folded lines kept in the value)."""
    out: dict[bytes, bytes] = {}
    name = b""
    for line in block.split(b"\r\n"):
        if not line:
            continue
        if line[:1] in b" \t" and name:
            out[name] += b"\r\n" + line
            continue
        raw_name, _, value = line.partition(b":")
        name = raw_name.strip().lower()
        out[name] = value
    return out
