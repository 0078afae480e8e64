"""Rendering replies: Jinja2 templates (en, es; text and HTML) into a ready
RFC 5322 message.

Safety, by construction:

* a :class:`~jinja2.sandbox.SandboxedEnvironment` with ``StrictUndefined``;
  templates come only from the template folder, and whatever the sender wrote
  (subject, name) is passed as *data*, never as template source, so
  ``{{ 7*7 }}`` in a message stays literally ``{{ 7*7 }}``;
* HTML templates are autoescaped;
* every header value goes through :func:`responders.tickets.clean_header_text`
  or a strict shape check (addresses, Message-IDs), non-ASCII text is RFC 2047
  encoded, and :func:`assemble` refuses any CR/LF left in a value: a header
  cannot be injected;
* replies are threaded (``In-Reply-To``/``References``, RFC 5322 section
  3.6.4), marked ``Auto-Submitted: auto-replied`` (RFC 3834 section 5) and
  ``X-Auto-Response-Suppress: All`` (so Exchange does not answer the answer),
  and carry our signed Message-ID (``responders.msgid``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
import binascii
import secrets
from email.header import Header
from email.utils import formataddr, formatdate
from pathlib import Path
from typing import Any

from jinja2 import FileSystemLoader, StrictUndefined, Template
from jinja2.sandbox import SandboxedEnvironment

from responders.msgid import make_message_id
from responders.tickets import clean_header_text

TEMPLATES = Path(__file__).with_name("templates")
LANGUAGES = ("en", "es")
_ADDR = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})$")
_MSGID = re.compile(r"^<[!-;=?-~]{1,900}>$")  # printable, no spaces, no < >; RFC 5322 msg-id


def _encode_text(value: str, name: str) -> str:
    """Return an unstructured header value, RFC 2047-encoded when not ASCII, folded with CRLF."""
    if value.isascii() and len(name) + 2 + len(value) <= 78:
        # What Header would return for a short ASCII value: itself (and it is several times faster).
        return value
    charset = "us-ascii" if value.isascii() else "utf-8"
    return Header(value, charset, header_name=name).encode(linesep="\r\n")


def _body_part(content_type: str, text: str) -> bytes:
    # Quoted-printable: readable as text (in the spool, in a relay's queue), safe over 7-bit SMTP.
    lines = text.replace("\r\n", "\n").split("\n")
    data = b"\r\n".join(binascii.b2a_qp(line.encode("utf-8"), header=False).replace(b"=\n", b"=\r\n")
                          for line in lines)
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return (f"Content-Type: {content_type}; charset=\"utf-8\"\r\n"
            "Content-Transfer-Encoding: quoted-printable\r\n\r\n").encode() + data


def assemble(headers: list[tuple[str, str]], text: str, html: str) -> bytes:
    """Return a ``multipart/alternative`` message (text, then HTML) with CRLF line ends.

    Built directly rather than with ``EmailMessage`` (about 6 ms a message
    here, the respond stage's largest cost): every value has already been
    cleaned or shape-checked, and this refuses any bare CR or LF anyway, so
    no header can be injected.
    """
    boundary = "=_acedesk_" + secrets.token_hex(12)
    lines = []
    for name, value in headers:
        unfolded = value.replace("\r\n ", " ")
        if "\r" in unfolded or "\n" in unfolded:
            raise RenderError(f"header {name}: CR or LF in value")
        lines.append(f"{name}: {value}")
    lines.append("MIME-Version: 1.0")
    lines.append(f'Content-Type: multipart/alternative; boundary="{boundary}"')
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
    sep = f"--{boundary}\r\n".encode()
    return (head + sep + _body_part("text/plain", text) + sep + _body_part("text/html", html)
            + f"--{boundary}--\r\n".encode())


class RenderError(Exception):
    """A reply could not be built (a missing template, an invalid address)."""


def valid_address(address: str) -> str:
    """Return ``address`` lower-cased if it is a plain addr-spec without anything to inject; else raise."""
    address = (address or "").strip()
    if not _ADDR.match(address) or ".." in address:
        raise RenderError(f"not a deliverable address: {address[:80]!r}")
    return address.lower()


def clean_msgid(value: str | None) -> str | None:
    """Return ``value`` if it is a well-formed Message-ID (nothing to inject), else None."""
    value = (value or "").strip()
    return value if _MSGID.match(value) else None


@dataclass(frozen=True)
class Reply:
    """A rendered reply, ready for the outbox."""

    to: str
    mail_from: str
    subject: str
    message_id: str
    text: str
    html: str
    template: str
    language: str
    raw: bytes


class Renderer:
    """Loads the templates once; :meth:`render` is cheap and pure."""

    def __init__(self, templates_dir: str | Path | None = None) -> None:
        folder = Path(templates_dir) if templates_dir else TEMPLATES
        self.env = SandboxedEnvironment(
            loader=FileSystemLoader(str(folder)),
            undefined=StrictUndefined,
            autoescape=lambda name: bool(name and name.endswith(".html.j2")),
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=True,
            # A reload builds a new Renderer (SIGHUP): no stat() of the template file on every reply.
            auto_reload=False,
        )
        self._compiled: dict[str, Template] = {}

    def template(self, name: str) -> Template:
        """Return the compiled template ``name`` (loaded and compiled once per Renderer)."""
        found = self._compiled.get(name)
        if found is None:
            found = self._compiled[name] = self.env.get_template(name)
        return found

    def has(self, template: str, language: str = "en") -> bool:
        try:
            self.env.get_template(f"{language}/{template}.txt.j2")
            return True
        except Exception:  # noqa: BLE001 - any load problem means "no such template"
            return False

    def bodies(self, template: str, language: str, context: dict[str, Any]) -> tuple[str, str]:
        """Return the text and HTML bodies of ``template`` in ``language`` (falling back to English)."""
        lang = language if language in LANGUAGES else "en"
        try:
            text = self.template(f"{lang}/{template}.txt.j2").render(context)
            html = self.template(f"{lang}/{template}.html.j2").render(context)
        except Exception as exc:  # TemplateNotFound, UndefinedError: a configuration problem
            raise RenderError(f"template {lang}/{template}: {type(exc).__name__}: {exc}") from exc
        return text, html


def build_reply(renderer: Renderer, *, template: str, language: str, to: str, from_address: str,
                from_name: str, subject: str, ticket: str, secret: bytes, in_reply_to: str | None,
                references: list[str], context: dict[str, Any], date: str | None = None,
                auto: bool = True, auto_submitted: str = "auto-replied") -> Reply:
    """Render ``template`` and build the whole reply message (bytes with CRLF).

    ``auto=False`` is an analyst's reply: a person wrote it, so no ``Auto-Submitted``;
    mail that answers nobody (an alert) is ``auto_submitted="auto-generated"``.
    """
    to = valid_address(to)
    from_address = valid_address(from_address)
    subject = clean_header_text(subject, 250)
    domain = from_address.rpartition("@")[2]
    message_id = make_message_id(secret, ticket, to, domain)
    text, html = renderer.bodies(template, language, {**context, "ticket": ticket})

    parent = clean_msgid(in_reply_to)
    refs = [r for r in (clean_msgid(x) for x in references) if r][-10:]
    if parent and parent not in refs:
        refs.append(parent)
    headers: list[tuple[str, str]] = [
        ("From", formataddr((clean_header_text(from_name, 80), from_address))),
        ("To", to),
        ("Subject", _encode_text(subject, "Subject")),
        ("Date", clean_header_text(date, 80) if date else formatdate(usegmt=True)),
        ("Message-ID", message_id),
    ]
    if parent:
        headers.append(("In-Reply-To", parent))
    if refs:
        # Folded one msg-id a line (RFC 5322 section 2.2.3): never longer than 998 octets.
        headers.append(("References", "\r\n ".join(refs)))
    if auto:
        # RFC 3834 section 5: this is an automatic answer; Exchange's header asks for no answer to it.
        headers.append(("Auto-Submitted", auto_submitted))
        headers.append(("X-Auto-Response-Suppress", "All"))
    headers.append(("X-ACEDesk-Ticket", clean_header_text(ticket, 40)))
    headers.append(("Content-Language", language if language in LANGUAGES else "en"))
    raw = assemble(headers, text, html)
    return Reply(to=to, mail_from=from_address, subject=subject, message_id=message_id, text=text,
                 html=html, template=template, language=language, raw=raw)
