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

A reply can also be built in two steps (:func:`draft_reply`, then
:func:`complete`): rendered and encoded before its ticket has a number --
outside the database's write lock -- and given the number in the write,
byte for byte what :func:`build_reply` makes with it.
"""

from __future__ import annotations

import binascii
import re
import secrets
from dataclasses import dataclass
from email.header import Header
from email.utils import formataddr, formatdate
from pathlib import Path
from typing import Any

from jinja2 import FileSystemLoader, StrictUndefined, Template, nodes
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


def _qp_line(line: str) -> bytes:
    return binascii.b2a_qp(line.encode("utf-8"), header=False).replace(b"=\n", b"=\r\n")


def _part_head(content_type: str) -> bytes:
    return (f"Content-Type: {content_type}; charset=\"utf-8\"\r\n"
            "Content-Transfer-Encoding: quoted-printable\r\n\r\n").encode()


def _body_part(content_type: str, text: str) -> bytes:
    # Quoted-printable: readable as text (in the spool, in a relay's queue), safe over 7-bit SMTP.
    # Line by line (each line is encoded on its own), which is what lets a draft re-encode only
    # the lines that carry the ticket number (:class:`Draft`).
    data = b"\r\n".join(_qp_line(line) for line in text.replace("\r\n", "\n").split("\n"))
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return _part_head(content_type) + data


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
        self._as_is: dict[tuple[str, str, str], bool] = {}

    def template(self, name: str) -> Template:
        """Return the compiled template ``name`` (loaded and compiled once per Renderer)."""
        found = self._compiled.get(name)
        if found is None:
            found = self._compiled[name] = self.env.get_template(name)
        return found

    def prints_as_is(self, template: str, language: str, name: str = "ticket") -> bool:
        """Return whether both bodies of ``template`` print ``name`` only as a plain ``{{ name }}`` (in
        them and in what they extend or include): then a :class:`Draft` may print a marker for it."""
        lang = language if language in LANGUAGES else "en"
        key = (template, lang, name)
        found = self._as_is.get(key)
        if found is None:
            found = self._as_is[key] = all(self._source_prints_as_is(f"{lang}/{template}.{kind}.j2", name, set())
                                           for kind in ("txt", "html"))
        return found

    def _source_prints_as_is(self, template: str, name: str, seen: set[str]) -> bool:
        try:
            assert self.env.loader is not None
            source, _, _ = self.env.loader.get_source(self.env, template)
            tree = self.env.parse(source)
        except Exception:  # noqa: BLE001 - not loadable: not known to print it as it is
            return False
        for node in tree.find_all((nodes.Extends, nodes.Include, nodes.Import, nodes.FromImport)):
            ref = getattr(node, "template", None)
            if not isinstance(ref, nodes.Const) or not isinstance(ref.value, str):
                return False
            if ref.value not in seen:
                seen.add(ref.value)
                if not self._source_prints_as_is(ref.value, name, seen):
                    return False
        return _prints_as_is(tree, name)

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


# --- drafts: a reply built before its ticket number is known -------------------------------

#: What HTML autoescaping would change: a number without any prints the same in both bodies.
_HTML_SPECIAL = re.compile("[&<>\"']")
#: The Jinja2 nodes whose output is captured and transformed (a filter block, a macro, ``set``
#: blocks): a variable printed inside them is not printed as it is.
_CAPTURING = (nodes.Macro, nodes.CallBlock, nodes.FilterBlock, nodes.AssignBlock)


def _prints_as_is(node: nodes.Node, name: str, captured: bool = False) -> bool:
    """Return whether every use of ``name`` under ``node`` is a plain ``{{ name }}``."""
    for child in node.iter_child_nodes():
        if isinstance(child, nodes.Name) and child.name == name and child.ctx == "load":
            if captured or not isinstance(node, nodes.Output):
                return False
        if not _prints_as_is(child, name, captured or isinstance(child, _CAPTURING)):
            return False
    return True


@dataclass(frozen=True)
class Draft:
    """A reply rendered and encoded before its ticket number is known (outside the write lock).

    It is built with ``number``: the real number (a follow-up: ``known``) or a
    stand-in of the same shape (``stem`` and as many random digits as the
    number will have), and the bodies print ``marker`` (random: no sender can
    write it) where the templates print the number.  :func:`complete` splices
    the number in: Subject, Message-ID and ``X-ACEDesk-Ticket``, and it
    encodes only the body lines that print the number (quoted-printable
    encodes a body line by line).  A digit for a digit changes neither the
    Subject's folding nor its encoded words, so its header value is the
    stand-in's with the number in its place -- when the stand-in appears in it
    as it is (``encoded_subject``; not in base64 words: then it is encoded again).
    """

    number: str
    stem: str
    known: bool
    marker: str
    to: str
    mail_from: str
    template: str
    language: str
    subject: str
    encoded_subject: str | None
    text: str
    html: str
    #: Each body encoded (quoted-printable), in pieces: bytes as they are, the lines printing the number as text.
    text_lines: tuple[bytes | str, ...]
    html_lines: tuple[bytes | str, ...]
    head: str
    middle: str
    tail: bytes
    boundary: str
    domain: str


def _lines(text: str, marker: str) -> tuple[bytes | str, ...]:
    """Return a body encoded as :func:`_body_part` encodes it (without its final line end), in
    pieces: the runs of lines without ``marker`` encoded and joined, the lines with it as text."""
    pieces: list[bytes | str] = []
    run: list[bytes] = []
    for line in text.replace("\r\n", "\n").split("\n"):
        if marker and marker in line:
            pieces.extend((b"\r\n".join(run) + (b"\r\n" if run else b""), line))
            run = [b""]  # the line end after the marker's line starts the next run
        else:
            run.append(_qp_line(line))
    pieces.append(b"\r\n".join(run))
    return tuple(pieces)


def _header_lines(headers: list[tuple[str, str]]) -> str:
    """Return ``Name: value`` lines (CRLF), refusing CR or LF in a value as :func:`assemble` does."""
    for name, value in headers:
        unfolded = value.replace("\r\n ", " ")
        if "\r" in unfolded or "\n" in unfolded:
            raise RenderError(f"header {name}: CR or LF in value")
    return "".join(f"{name}: {value}\r\n" for name, value in headers)


def draft_reply(renderer: Renderer, *, template: str, language: str, to: str, from_address: str, from_name: str,
                subject: str, number: str, stem: str, secret: bytes, in_reply_to: str | None,
                references: list[str], context: dict[str, Any]) -> Draft:
    """Render what :func:`build_reply` would for ticket ``number`` (see :class:`Draft`); raise as it would.

    ``stem`` is the part of ``number`` that is the real number's (all of it when ``number`` is the real one).
    """
    del secret  # the Message-ID is signed when the number is known (:func:`complete`)
    known = stem == number
    to = valid_address(to)
    from_address = valid_address(from_address)
    subject = clean_header_text(subject, 250)
    lang = language if language in LANGUAGES else "en"
    marker = "" if known or not renderer.prints_as_is(template, language) else "tkt" + secrets.token_hex(16)
    if not known and not marker:
        raise RenderError(f"template {lang}/{template} does not print the ticket number as it is")
    text, html = renderer.bodies(template, language, {**context, "ticket": marker or number})
    encoded = _encode_text(subject, "Subject")
    spliceable = subject.count(number) == 1 and encoded.count(number) == 1
    parent = clean_msgid(in_reply_to)
    refs = [r for r in (clean_msgid(x) for x in references) if r][-10:]
    if parent and parent not in refs:
        refs.append(parent)
    middle: list[tuple[str, str]] = []
    if parent:
        middle.append(("In-Reply-To", parent))
    if refs:
        middle.append(("References", "\r\n ".join(refs)))
    middle.append(("Auto-Submitted", "auto-replied"))
    middle.append(("X-Auto-Response-Suppress", "All"))
    boundary = "=_acedesk_" + secrets.token_hex(12)
    head = _header_lines([("From", formataddr((clean_header_text(from_name, 80), from_address))), ("To", to)])
    tail = (f"Content-Language: {lang}\r\nMIME-Version: 1.0\r\n"
            f'Content-Type: multipart/alternative; boundary="{boundary}"\r\n\r\n')
    mid = _header_lines(middle)
    (head + mid).encode("ascii")  # as assemble: a header that is not ASCII raises here
    return Draft(number=number, stem=stem, known=known, marker=marker, to=to, mail_from=from_address,
                 template=template, language=language, subject=subject,
                 encoded_subject=encoded if spliceable else None, text=text, html=html,
                 text_lines=_lines(text, marker), html_lines=_lines(html, marker), head=head, middle=mid,
                 tail=tail.encode("ascii"), boundary=boundary, domain=from_address.rpartition("@")[2])


def _part(pieces: tuple[bytes | str, ...], marker: str, number: str) -> bytes:
    data = b"".join([piece if isinstance(piece, bytes) else _qp_line(piece.replace(marker, number))
                     for piece in pieces])
    return data if data.endswith(b"\r\n") else data + b"\r\n"


def complete(draft: Draft, number: str, subject: str, secret: bytes, date: str | None = None) -> Reply | None:
    """Return the reply of ``draft`` for ticket ``number`` and the (uncleaned) ``subject`` that
    :func:`build_reply` would have been given: the same message, byte for byte.

    None when the number does not fit the draft (another shape, characters HTML
    would escape, a CR or LF where assemble would refuse it): build the reply then.
    """
    if draft.known:
        if number != draft.number:
            return None
    elif (len(number) != len(draft.number) or not number.startswith(draft.stem)
          or not number[len(draft.stem):].isascii() or not number[len(draft.stem):].isdigit()
          or _HTML_SPECIAL.search(number)):
        return None
    subject = clean_header_text(subject, 250)
    if draft.encoded_subject is not None and subject == draft.subject.replace(draft.number, number):
        encoded = draft.encoded_subject.replace(draft.number, number)
    else:
        encoded = _encode_text(subject, "Subject")
    message_id = make_message_id(secret, number, draft.to, draft.domain)
    varying = [("Subject", encoded), ("Date", clean_header_text(date, 80) if date else formatdate(usegmt=True)),
               ("Message-ID", message_id)]
    try:
        head = (draft.head + _header_lines(varying) + draft.middle
                + _header_lines([("X-ACEDesk-Ticket", clean_header_text(number, 40))])).encode("ascii")
    except (RenderError, UnicodeEncodeError):
        return None
    marker = draft.marker
    text = draft.text.replace(marker, number) if marker else draft.text
    html = draft.html.replace(marker, number) if marker else draft.html
    sep = f"--{draft.boundary}\r\n".encode()
    raw = b"".join((head, draft.tail, sep, _part_head("text/plain"), _part(draft.text_lines, marker, number),
                    sep, _part_head("text/html"), _part(draft.html_lines, marker, number),
                    f"--{draft.boundary}--\r\n".encode()))
    return Reply(to=draft.to, mail_from=draft.mail_from, subject=subject, message_id=message_id, text=text,
                 html=html, template=draft.template, language=draft.language, raw=raw)


def stand_in(stem: str, digits: int = 6) -> str:
    """Return ``stem`` and random digits: what a :class:`Draft` prints until the real number is known."""
    return f"{stem}{secrets.randbelow(10 ** digits):0{digits}d}"
