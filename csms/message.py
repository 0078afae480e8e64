"""Personalised notice messages built fast: render once, splice per recipient.

Building each message with ``EmailMessage`` costs about 1 ms; a notice to
100,000 subscribers would spend 100 s in MIME alone.  So the notice is
rendered once (:func:`csms.render.render` with markers), its header block
serialised once, and the text and HTML bodies cut at the markers into
segments that are **encoded once**: quoted-printable (RFC 2045 6.7, lines of
at most 76 characters, 7-bit whatever the relay offers, and readable in a
spool file), with a dot that starts a line encoded too (so SMTP's
dot-stuffing, RFC 5321 4.5.2, never has anything to do) and ended with a
soft line break.  Per recipient, :meth:`MessageTemplate.build` encodes only
that recipient's few values (C speed, each on lines of its own between soft
breaks, so no line grows past the limit and none starts with a dot), joins
them with the segments and prepends three header lines.  The result is
ready for DATA as it is (:data:`DOT_SAFE`): the SMTP client need not scan
or copy it again.
"""

from __future__ import annotations

import binascii
import datetime as dt
import email.utils
import re
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage

from markupsafe import escape

from csms import headers, render
from csms.dkim import DkimKey, NoticeSigner
from csms.tokens import UNSUBSCRIBE, Signer

_MARKER_RE = re.compile("\x00([0-9])\x00")


@dataclass(frozen=True)
class Sender:
    """Who a notice comes from and where its replies and bounces go."""

    domain: str
    from_address: str
    request_address: str
    bounce_address: str
    base_url: str
    from_name: str = "CBP CSMS"


#: What :meth:`MessageTemplate.build` returns has no line starting with a dot: DATA needs no stuffing.
DOT_SAFE = True

_SOFT_BREAK = b"=\r\n"
_LINE_START_DOT = re.compile(rb"(?m)^\.")
_HTML_SPECIAL = re.compile("[&<>\"']")
#: Printable ASCII but '=' and space: what quoted-printable leaves as it is (only lines are cut).
_QP_PLAIN = re.compile(rb"[!-<>-~]*")
#: Distinct topic lists whose encodings a template keeps (a notice has a few topics, so a few lists).
_TOPICS_CACHED = 4096


def _qp(data: bytes) -> bytes:
    """Quoted-printable (CRLF line breaks kept, lines <= 76) ending in a soft break, so that what
    follows starts a line of its own; a dot starting a line is encoded (``=2E``), so no line of
    the message needs SMTP's dot-stuffing and the bytes are the same in DATA, in a spool file and
    under a DKIM body hash."""
    if _QP_PLAIN.fullmatch(data) is not None:
        # Nothing to encode (most values: an address, a URL): only cut, as b2a_qp cuts, at 75
        # characters and a soft break while more than 76 are left; a few times faster.
        if len(data) > 76:
            lines = []
            while len(data) > 76:
                lines.append(data[:75])
                data = data[75:]
            lines.append(data)
            data = _SOFT_BREAK.join(lines)
        if data[:1] == b"." or b"\n." in data:
            data = _LINE_START_DOT.sub(b"=2E", data)
        return data + _SOFT_BREAK
    encoded = binascii.b2a_qp(data, istext=True)
    if b"\n" in encoded and b"\r\n" not in encoded:
        # Without a CRLF in the input (a value, a short segment) the encoder breaks lines with LF.
        encoded = encoded.replace(b"\n", b"\r\n")
    return _LINE_START_DOT.sub(b"=2E", encoded) + _SOFT_BREAK


def _encoded(value: str) -> tuple[bytes, bytes]:
    """``value`` quoted-printable for the text part, and escaped as the HTML part shows it."""
    plain = _qp(value.encode("utf-8"))
    escaped = _html_escape(value)
    return plain, plain if escaped is value else _qp(escaped.encode("utf-8"))


def _html_escape(value: str) -> str:
    """Escaped as the HTML template's autoescape would have (markupsafe); most values need nothing."""
    if _HTML_SPECIAL.search(value) is None:
        return value
    return str(escape(value))


def _segments(text: str, escape: bool) -> list[bytes | int]:
    """Split rendered text at the markers: encoded byte strings and field indices, alternating."""
    out: list[bytes | int] = []
    pos = 0
    for match in _MARKER_RE.finditer(text):
        out.append(_qp(_crlf(text[pos:match.start()]).encode("utf-8")))
        out.append(int(match.group(1)) * 2 + (1 if escape else 0))
        pos = match.end()
    last = _qp(_crlf(text[pos:]).encode("utf-8"))
    # The last segment ends the part: a hard line break, not a soft one.
    out.append(last[:-len(_SOFT_BREAK)] + (b"" if last.endswith(b"\r\n" + _SOFT_BREAK) else b"\r\n"))
    return out


def _layout(pieces: list[bytes | int]) -> tuple[list[bytes], list[tuple[int, int]]]:
    """Bytes and value indices -> a list to join (runs of bytes merged, a hole per value) and the
    holes: ``(position, value index)``."""
    parts: list[bytes] = []
    slots: list[tuple[int, int]] = []
    run: list[bytes] = []
    for i, piece in enumerate(pieces):
        if isinstance(piece, int) or i == 1:   # i == 1: the recipient's header lines
            parts.append(b"".join(run))
            run = []
            if isinstance(piece, int):
                slots.append((len(parts), piece))
            parts.append(b"")
        else:
            run.append(piece)
    parts.append(b"".join(run))
    return parts, slots


def _crlf(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\n", "\r\n")


class MessageTemplate:
    """One notice, ready to be personalised for any number of recipients."""

    def __init__(self, notice: render.NoticeView, sender: Sender, signer: Signer,
                 unsubscribe_ttl: float, boundary_seed: str = "", dkim: DkimKey | None = None) -> None:
        if notice.number is None:
            raise ValueError("a notice is sent only once it has a number")
        self.notice = notice
        self.sender = sender
        self.signer = signer
        self.ttl = unsubscribe_ttl
        self.bounce_local, _, self.bounce_domain = sender.bounce_address.partition("@")
        rendered = render.render(notice)
        self.subject = rendered.subject
        self._text = _segments(rendered.text, escape=False)
        self._html = _segments(rendered.html, escape=True)
        boundary = f"=_csms_{notice.number}_{boundary_seed or 'b'}"
        head = EmailMessage(policy=policy.SMTP)
        head["From"] = email.utils.formataddr((sender.from_name, sender.from_address))
        head["Reply-To"] = sender.request_address
        head["Subject"] = rendered.subject
        published = notice.published_at or dt.datetime.now(dt.timezone.utc)
        head["Date"] = email.utils.format_datetime(published)
        head["MIME-Version"] = "1.0"
        for name, value in headers.fixed_headers(domain=sender.domain, number=notice.number,
                                                 language=notice.language):
            head[name] = value
        head["Content-Type"] = f'multipart/alternative; boundary="{boundary}"'
        block = head.as_bytes(policy=policy.SMTP)
        self._head = block[:block.index(b"\r\n\r\n") + 2]
        self._text_head = (f"\r\n--{boundary}\r\nContent-Type: text/plain; charset=\"utf-8\"\r\n"
                           "Content-Transfer-Encoding: quoted-printable\r\n\r\n").encode("ascii")
        self._html_head = (f"--{boundary}\r\nContent-Type: text/html; charset=\"utf-8\"\r\n"
                           "Content-Transfer-Encoding: quoted-printable\r\n\r\n").encode("ascii")
        self._tail = f"--{boundary}--\r\n".encode("ascii")
        self._unsubscribe_base = headers.unsubscribe_url(sender.base_url, "")
        self._preamble = b"This is a multi-part message in MIME format.\r\n"
        #: Each subscriber's topic list ("ACE, ACH Refunds") encoded once: there are few of them.
        self._topics: dict[str, tuple[bytes, bytes]] = {}
        #: The whole copy as one list to join: the fixed bytes merged, holes for the recipient's
        #: header lines (index 1) and values (``self._slots``: position, value index).
        self._parts, self._slots = _layout([self._head, b"", b"\r\n" + self._preamble + self._text_head,
                                            *self._text, self._html_head, *self._html, self._tail])
        self._body_at = len(self._head)   # + the recipient's header lines: where the body starts
        #: Signs each copy (RFC 6376) when a DKIM key is configured.
        self.dkim = NoticeSigner(dkim, self._head) if dkim is not None else None

    def return_path(self, subscriber_id: int) -> str:
        """The per-recipient VERP return path: a DSN names the subscriber without guessing."""
        local = self.signer.verp_local(self.bounce_local, subscriber_id, self.notice.number or 0)
        return f"{local}@{self.bounce_domain}"

    def build(self, email_address: str, subscriber_id: int, topics: str) -> tuple[str, bytes]:
        """Return ``(return_path, message bytes)`` for one recipient.

        Raises:
            ValueError: ``email_address`` is not a plain ``local@domain`` (it could inject a header).
        """
        if not headers.is_plain_address(email_address):
            raise ValueError(f"not a plain address, not sent: {email_address[:100]!r}")
        token = self.signer.make(UNSUBSCRIBE, subscriber_id, self.ttl)
        unsub = self._unsubscribe_base + token
        topics_encoded = self._topics.get(topics)
        if topics_encoded is None:
            topics_encoded = _encoded(topics)
            if len(self._topics) < _TOPICS_CACHED:
                self._topics[topics] = topics_encoded
        values = (*_encoded(email_address), *topics_encoded, *_encoded(unsub), *_encoded(unsub + "?manage=1"))
        to = f"<{email_address}>"
        message_id = f"<csms.{self.notice.number}.{subscriber_id:x}@{self.sender.domain}>"
        list_unsubscribe = headers.list_unsubscribe(self.sender.request_address, self.sender.base_url, token)
        per_recipient = f"To: {to}\r\nMessage-ID: {message_id}\r\nList-Unsubscribe: {list_unsubscribe}\r\n".encode()
        parts = self._parts.copy()
        parts[1] = per_recipient
        for position, value in self._slots:
            parts[position] = values[value]
        data = b"".join(parts)
        if self.dkim is not None:
            body = data[self._body_at + len(per_recipient) + 2:]
            data = self.dkim.sign(data, ((b"to", f" {to}".encode()), (b"message-id", f" {message_id}".encode()),
                                         (b"list-unsubscribe", f" {list_unsubscribe}".encode())), body)
        return self.return_path(subscriber_id), data


class TemplateSet:
    """The language versions of one notice, each ready to be personalised; a subscriber gets the
    version in their language, else the notice's own."""

    def __init__(self, templates: dict[str, MessageTemplate], default: str) -> None:
        self.templates = templates
        self.default = default

    def language_for(self, language: str) -> str:
        return language if language in self.templates else self.default

    def build(self, email_address: str, subscriber_id: int, topics: str, language: str = "") -> tuple[str, bytes]:
        """Return ``(return_path, message bytes)`` of the version for ``language``."""
        return self.templates[self.language_for(language)].build(email_address, subscriber_id, topics)
