"""Parsing raw bytes into a :class:`~models.parsed.ParsedMessage`.

The stdlib ``email`` parser with the ``compat32`` policy reads the structure
(it never raises on malformed MIME; it records defects instead): about ten
times cheaper than mail-parser, whose extras (address, date and ``Received``
parsing of every header) we never read, and than ``policy=default``.  A
single-part message with a plain header section (most mail) skips the
parser's line-by-line machinery: :func:`simple_message` builds the very
``Message`` it would build.  The text
is then decoded part by part with the declared charset, falling back to UTF-8
and a detected charset when the declaration is missing or wrong, so that
ISO-2022-JP, windows-125x and RFC 2047 subjects split over several encoded
words come out right.  HTML is turned into text.  Input that is not a mail
message at all raises :class:`Unparseable` with a reason for the quarantine.

Everything here is bounded: text is capped, nesting is capped, and the HTML
converter is linear, so no input can hang the worker.
"""

from __future__ import annotations

import email
import email.header
import email.utils
import html
import io
import logging
import re
import time
from email.message import Message
from typing import Any
from html.parser import HTMLParser

from classifiers.text import split_body
from models.parsed import Attachment, ParsedMessage

log = logging.getLogger("acedesk.parse")

#: Text kept per message; beyond this it is history or noise.
MAX_TEXT = 200_000
#: HTML converted per part.
MAX_HTML = 1_000_000
MAX_PARTS = 500
#: Addresses kept per address header (To, Cc, Reply-To): beyond this it is a mass mailing.
MAX_ADDRESSES = 200
#: Trace fields (Received, Authentication-Results) kept, top first.
MAX_TRACE = 100
#: Largest header section parsed; a bigger one is quarantined (``over_budget``), not expanded.
MAX_HEADER_BYTES = 1024 * 1024

#: Headers kept on the record for screening and verification.
KEPT_HEADERS = (
    "from", "sender", "reply-to", "return-path", "to", "cc", "subject", "date", "message-id",
    "in-reply-to", "references", "auto-submitted", "precedence", "x-autoreply", "x-autorespond",
    "x-auto-response-suppress", "list-id", "list-unsubscribe", "list-post", "list-help",
    "authentication-results", "arc-authentication-results", "dkim-signature", "received-spf",
    "content-type", "x-mailer", "x-loop", "x-failed-recipients", "errors-to", "delivered-to",
    "x-acedesk-ticket", "feedback-id", "x-ms-exchange-generated-message-source",
)

_KEPT = frozenset(KEPT_HEADERS)
_ADDRESS_HEADERS = frozenset({"from", "sender", "reply-to", "to", "cc", "return-path"})
_TRACE_FIELDS = frozenset({"received", "authentication-results"})
#: White space as str.isspace() sees it (the same characters, checked over every code point).
_WHITESPACE = re.compile(r"\s")
_OLE2_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_HEADER_LINE = re.compile(rb"^[!-9;-~]+[ \t]*:")
_CRLF = re.compile(r"[\r\n]+")
_HEADER_END = re.compile(rb"\r?\n\r?\n")
#: Line breaks a header must never carry into anything we write: CR, LF, NEL, LS, PS, VT, FF.
_LINE_BREAKS = re.compile(r"[\r\n\x0b\x0c\x85\u2028\u2029]+")


#: Peak memory of :func:`parse_message` per byte of message, measured with tracemalloc (10-17x over
#: large text, HTML, base64 and 3,000-part messages): what the memory budget is checked against.
PARSE_MEMORY_FACTOR = 16


class Unparseable(Exception):
    """The bytes are not a mail message we can read; ``reason`` names why for the quarantine."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def parse_message(raw: bytes, envelope_from: str | None = None) -> ParsedMessage:
    """Return the normalised record of ``raw``.

    Raises:
        Unparseable: binary data, no header section, or no sender at all.
    """
    # A message whose first header line was folded (starts with white space)
    # is still a message; mail readers read it (enmime "bad-header-start").
    raw = raw.lstrip(b" \t")
    check_looks_like_mail(raw)
    check_header_size(raw)
    try:
        simple = simple_message(raw)
        msg: Message = simple[0] if simple else email.message_from_bytes(raw)
    except RecursionError:
        # One recursion per multipart nesting level: a crafted deep nest is a quarantine reason.
        raise Unparseable("parser_error", "message nesting too deep to parse") from None
    except Exception as exc:  # noqa: BLE001 - any parser failure is a quarantine reason
        raise Unparseable("parser_error", f"{type(exc).__name__}: {exc}") from None
    headers, trace = header_fields(msg)
    from_pairs = address_pairs(headers.get("from", []))
    sender_name, sender = first_address(headers.get("from", []), from_pairs)
    if not sender:
        sender_name, sender = first_address(headers.get("sender", []))
    if not sender:
        raise Unparseable("no_sender", "no usable From or Sender address")
    content_type = simple[1] if simple else msg.get_content_type()
    text, attachments, defects = extract_text(msg, content_type)
    defects = from_defects(headers.get("from", []), from_pairs) + defects
    # Every string is made safe for storage (clean()) once.  The fields cleaned here are the ones
    # taken from the message without going through clean(): the body text, the envelope sender,
    # the content type, defect notes and attachments.  Every other field is built from header
    # values that one_line() / clean() already returned (slices, joins, lower case, address
    # parts of them), and cleaning a clean string gives the same string: cleaning them all again
    # cost a tenth of the parse.
    text = clean(text)
    new, quoted, signature = split_body(text)
    envelope = return_path(envelope_from, headers)
    return ParsedMessage(
        sender=sender,
        sender_name=sender_name,
        return_path=None if envelope is None else clean(envelope),
        to=addresses(headers.get("to", [])),
        cc=addresses(headers.get("cc", [])),
        reply_to=addresses(headers.get("reply-to", [])),
        subject=one_line(first(headers, "subject")),
        date=first(headers, "date") or None,
        message_id=msg_id(first(headers, "message-id")),
        in_reply_to=msg_id(first(headers, "in-reply-to")),
        references=re.findall(r"<[^<>\s]+>", " ".join(headers.get("references", [])))[-50:],
        text=text,
        new_text=new,
        quoted_text=quoted,
        signature=signature,
        content_type=clean(content_type),
        defects=[clean(d) for d in defects + [type(d).__name__ for d in getattr(msg, "defects", [])][:20]],
        attachments=[Attachment(clean(a.filename), clean(a.content_type), a.size) for a in attachments],
        headers=headers,
        trace=trace,
    )


def parse_within_budget(raw: bytes, envelope_from: str | None = None, *, seconds: float = 10.0,
                        memory: int = 512 * 1024 * 1024) -> ParsedMessage:
    """Return the record of ``raw`` as the parse stage makes it: guarded and within budget.

    The one entry point of the daemon's parse stage and of ``acedesk triage``
    / ``classify``.  Whatever goes wrong -- a parser bug, ``RecursionError``,
    ``MemoryError``, a message over the memory or time budget -- raises
    :class:`Unparseable` with a reason for the quarantine, never anything else.
    """
    if len(raw) * PARSE_MEMORY_FACTOR > memory:
        raise Unparseable("over_memory_budget", f"{len(raw)} bytes would need about "
                          f"{len(raw) * PARSE_MEMORY_FACTOR // 2**20} MiB to parse (budget {memory // 2**20} MiB)")
    started = time.monotonic()
    try:
        parsed = parse_message(raw, envelope_from)
    except Unparseable:
        raise
    except Exception as exc:  # noqa: BLE001 - RecursionError, MemoryError, a library's bug: a reason, not a crash
        raise Unparseable("parser_crash", f"{type(exc).__name__}: {str(exc)[:300]}") from None
    elapsed = time.monotonic() - started
    if elapsed > seconds:
        raise Unparseable("over_time_budget", f"parsing took {elapsed:.2f} s (budget {seconds:g} s)")
    return parsed


def clean(text: str) -> str:
    """Return ``text`` as valid Unicode without NULs.

    compat32 keeps undecodable header bytes as lone surrogates, and NUL is
    legal in mail but not in PostgreSQL text or JSON: neither may reach storage.
    """
    if text.isascii():
        return text.replace("\x00", "")
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace").replace("\x00", "")


def check_looks_like_mail(raw: bytes) -> None:
    """Raise :class:`Unparseable` for input that is not an RFC 5322 message at all."""
    if not raw or raw.isspace():  # what strip() would leave empty, without copying the message
        raise Unparseable("empty", "no bytes")
    if raw.startswith(_OLE2_MAGIC):
        raise Unparseable("not_rfc5322", "an Outlook .msg (OLE2 compound file), not an RFC 5322 message")
    head = raw[:4096].split(b"\n\n", 1)[0].split(b"\r\n\r\n", 1)[0]
    if b"\x00" in head:
        raise Unparseable("not_rfc5322", "NUL bytes in the header section")
    start = raw.lstrip(b"\r\n")
    end = start.find(b"\n")
    first_line = start if end < 0 else start[:end]  # split(b"\n", 1)[0], without copying the rest
    if first_line.startswith(b"From "):  # mbox framing line
        first_line = raw.lstrip(b"\r\n").split(b"\n", 2)[1] if raw.count(b"\n") > 1 else b""
    if not _HEADER_LINE.match(first_line):
        raise Unparseable("no_headers", f"does not start with a header field: {first_line[:60]!r}")


def check_header_size(raw: bytes) -> None:
    """Raise :class:`Unparseable` when the header section alone is over :data:`MAX_HEADER_BYTES`."""
    if len(raw) <= MAX_HEADER_BYTES:
        return  # the header section cannot be longer than the message
    end = _HEADER_END.search(raw, 0, MAX_HEADER_BYTES + 4)
    if end is None:
        raise Unparseable("over_budget", f"header section longer than {MAX_HEADER_BYTES} bytes")


#: A header field's first line as the stdlib parser recognises one: a non-empty name, a colon.
_FIELD_START = re.compile(r"[\041-\071\073-\176]+:")


def simple_message(raw: bytes) -> tuple[Message, str] | None:
    """Return what ``email.message_from_bytes(raw)`` returns, and its content type, for a
    message that is not multipart (nor message/*) and whose header section is plain fields
    ended by a blank line; None for anything else, which the stdlib parser then reads.

    The stdlib's FeedParser walks every line of the body through generators and a line
    buffer only to join them again; here the header lines are split the way it splits them
    (CR, LF or CRLF), stored as its compat32 policy stores them (``header_source_parse``,
    inlined), and the body taken whole.
    """
    text = raw.decode("ascii", "surrogateescape")  # as BytesParser decodes
    msg = Message()
    source: list[str] = []
    length = 0
    for line in io.StringIO(text, newline=""):  # lines split on CR, LF and CRLF, ends kept
        length += len(line)
        if line[0] in " \t":
            if not source:
                return None  # a continuation first: a defect the stdlib records
            source.append(line)
            continue
        if source:
            name, value = source[0].split(":", 1)
            value = value.lstrip(" \t") + "".join(source[1:]) if len(source) > 1 else value.lstrip(" \t")
            msg.set_raw(name, value.rstrip("\r\n"))
        if line[0] in "\r\n":
            break  # the blank line that ends the header section
        if _FIELD_START.match(line) is None:
            return None  # a unix From line, a nameless field, or body without a blank line
        source = [line]
    else:
        return None  # no body at all
    content_type = msg.get_content_type()
    if content_type.split("/")[0] in ("multipart", "message"):  # get_content_maintype()
        return None
    msg.set_payload(text[length:])
    return msg, content_type


# --- headers ------------------------------------------------------------------------


def decode_header_value(value: object) -> str:
    """Return a header value decoded from RFC 2047, tolerating unknown charsets and bad bytes."""
    if isinstance(value, email.header.Header):
        chunks = value._chunks  # noqa: SLF001 - the only way to reach undecodable bytes
        return one_line("".join(_decode_chunk(s, str(c) if c else None) for s, c in chunks))
    text = str(value)
    if "=?" not in text:
        return one_line(text)
    try:
        pieces = email.header.decode_header(text)
    except Exception:  # noqa: BLE001 - malformed encoded words: keep the text as it is
        return one_line(text)
    return one_line("".join(_decode_chunk(s, c) for s, c in pieces))


def _decode_chunk(chunk: bytes | str, charset: str | None) -> str:
    if isinstance(chunk, str):
        return chunk
    return decode_bytes(chunk, charset)


def header_fields(msg: Message) -> tuple[dict[str, list[str]], list[list[str]]]:
    """Return the screening/verification headers (:data:`KEPT_HEADERS`, decoded, every value in
    order) and the trace fields (``[name, value]`` of each Received and Authentication-Results
    field, top first), from one pass over the header fields."""
    kept: dict[str, list[str]] = {}
    trace: list[list[str]] = []
    for name, value in msg.raw_items() if hasattr(msg, "raw_items") else msg.items():
        key = str(name).strip().lower()
        if key in _TRACE_FIELDS and len(trace) < MAX_TRACE:
            trace.append([key, one_line(str(value))[:2000]])
        if key in _KEPT and len(kept.get(key, ())) < MAX_ADDRESSES:
            kept.setdefault(key, []).append(kept_value(key, value))
    return kept, trace


def kept_value(key: str, value: object) -> str:
    """Return the value of kept header ``key`` as the record stores it."""
    if key in _ADDRESS_HEADERS:
        # Addresses are split before encoded words are decoded (RFC 2047 section 5: an
        # encoded word is never an addr-spec), or "=?utf-8?b?<victim's address>?=
        # <attacker>" would read as two mailboxes, the victim's first.  Comments go
        # first, so that a padded comment cannot push the address past the cap.
        text = strip_comments(clean(one_line(str(value)))[:200_000])
    else:
        text = decode_header_value(value)
    return text[:4000]


def first(headers: dict[str, list[str]], name: str) -> str:
    values = headers.get(name)
    return values[0] if values else ""


def one_line(text: str) -> str:
    """Return ``text`` unfolded: no line break (CR, LF, or a Unicode one from an encoded word)
    and no NUL can travel from a header into anything we write."""
    # Raw 8-bit headers arrive as lone surrogates: decode them first, or a UTF-8 U+2028 would pass.
    text = clean(text)
    if text.isascii() and "\n" not in text and "\r" not in text and "\x0b" not in text and "\x0c" not in text:
        return text.strip()  # the commonest header value: nothing for _LINE_BREAKS to replace
    return _LINE_BREAKS.sub(" ", text).strip()


def strip_comments(value: str) -> str:
    """Return ``value`` without RFC 5322 comments, in one linear pass.

    ``email.utils.getaddresses`` parses comments recursively: thousands of
    nested parentheses raise ``RecursionError``.  Comments carry nothing we
    use, so they go before the address parser sees the value.
    """
    if "(" not in value:
        return value
    out: list[str] = []
    depth = 0
    quoted = False
    escaped = False
    for char in value:
        if escaped:
            escaped = False
            if depth == 0:
                out.append(char)
            continue
        if char == "\\":
            escaped = True
            if depth == 0:
                out.append(char)
            continue
        if char == '"' and depth == 0:
            quoted = not quoted
        elif not quoted and char == "(":
            depth += 1
            continue
        elif not quoted and char == ")" and depth:
            depth -= 1
            if depth == 0:
                out.append(" ")
            continue
        if depth == 0:
            out.append(char)
    return "".join(out)


_ADDR_SPEC = r"[A-Za-z0-9_+-]+(?:\.[A-Za-z0-9_+-]+)*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+"
#: One mailbox in its commonest shapes -- ``Plain Words <addr>``, ``<addr>``, ``addr`` -- with
#: nothing the RFC 5322 grammar treats specially (quotes, dots or commas in the name, comments,
#: groups): the stdlib's character-by-character address parser returns exactly these groups.
_SIMPLE_MAILBOX = re.compile(
    rf"\s*(?:(?:([A-Za-z0-9]+(?:[ \t]+[A-Za-z0-9]+)*)[ \t]*)?<({_ADDR_SPEC})>|({_ADDR_SPEC}))\s*")


def simple_pair(value: str) -> tuple[str, str] | None:
    """Return the ``(display name, addr-spec)`` of a value of one plain mailbox, else None."""
    found = _SIMPLE_MAILBOX.fullmatch(value)
    if found is None:
        return None
    name, angled, bare = found.groups()
    return (" ".join(name.split()) if name else ""), (angled or bare)


def address_pairs(values: list[str]) -> list[tuple[str, str]]:
    """Return ``(display name, addr-spec)`` pairs of address header values, safely and bounded."""
    cleaned = [strip_comments(v[:4000]) for v in values[:20]]
    simple = [simple_pair(v) for v in cleaned]
    if all(pair is not None for pair in simple):
        return [pair for pair in simple if pair is not None][:MAX_ADDRESSES]
    try:
        pairs = email.utils.getaddresses(cleaned)
    except (RecursionError, ValueError, IndexError):
        # The stdlib parser gave up: take what looks like an address.
        pairs = [("", a) for a in re.findall(r"[^\s<>,;:\"()]+@[^\s<>,;:\"()]+", " ".join(cleaned))]
    return pairs[:MAX_ADDRESSES]


def from_defects(values: list[str], pairs: list[tuple[str, str]] | None = None) -> list[str]:
    """Return ``multiple_from_headers`` / ``multiple_from_mailboxes`` when From names more than one sender
    (``pairs``: ``address_pairs(values)``, when the caller has them)."""
    if len(values) > 1:
        return ["multiple_from_headers"]
    if len([a for _n, a in (address_pairs(values) if pairs is None else pairs) if "@" in a]) > 1:
        return ["multiple_from_mailboxes"]
    return []


def addresses(values: list[str]) -> list[str]:
    """Return the lower-cased addr-specs found in address header values."""
    found = []
    for name, addr in address_pairs(values):
        addr = addr.strip().strip("<>").lower()
        if "@" in addr and _WHITESPACE.search(addr) is None:
            found.append(addr)
    return found


def first_address(values: list[str], pairs: list[tuple[str, str]] | None = None) -> tuple[str, str]:
    """Return ``(display name, addr-spec)`` of the first address, or ``("", "")``
    (``pairs``: ``address_pairs(values)``, when the caller has them).

    A bare local part ("From: foo", seen on old DSNs) is kept as it is: such a
    sender can never be verified, but the message is still readable.
    """
    if pairs is None:
        pairs = address_pairs(values)
    for name, addr in pairs:
        addr = addr.strip().strip("<>").lower()
        if "@" in addr and _WHITESPACE.search(addr) is None:
            return decode_header_value(name), addr
    for name, addr in pairs:
        addr = addr.strip().strip("<>").lower()
        if addr and _WHITESPACE.search(addr) is None:
            return decode_header_value(name), addr
    return "", ""


def return_path(envelope_from: str | None, headers: dict[str, list[str]]) -> str | None:
    """Return the envelope sender: ``""`` for the null path ``<>``, None when unknown."""
    value = envelope_from if envelope_from is not None else first(headers, "return-path") or None
    if value is None:
        return None
    value = value.strip().strip("<>").strip().lower()
    return value


def msg_id(value: str) -> str | None:
    found = re.search(r"<[^<>\s]+>", value or "")
    return found.group(0) if found else (value.strip()[:998] or None)


# --- body -----------------------------------------------------------------------------


def extract_text(msg: Message, content_type: str | None = None) -> tuple[str, list[Attachment], list[str]]:
    """Return the message's text (plain preferred, HTML converted), its attachments, and defects
    (``content_type``: ``msg.get_content_type()``, when the caller has it)."""
    plain: list[str] = []
    htmls: list[str] = []
    attachments: list[Attachment] = []
    defects: list[str] = []
    for count, part in enumerate(msg.walk()):
        if count >= MAX_PARTS:
            defects.append(f"more than {MAX_PARTS} MIME parts; the rest ignored")
            break
        if part.is_multipart():
            continue
        ctype = content_type if part is msg and content_type is not None else part.get_content_type()
        fields = part_fields(part)
        filename = part_filename(part, fields)
        disposition = str(fields.get("content-disposition", "")).split(";")[0].strip().lower()
        is_text = ctype in ("text/plain", "text/html")
        if filename or disposition == "attachment" or not is_text:
            if ctype not in ("message/delivery-status", "text/rfc822-headers"):
                attachments.append(Attachment(filename or "", ctype, payload_size(part)))
            continue
        text = part_text(part, defects, fields)
        if ctype == "text/html":
            htmls.append(html_to_text(text[:MAX_HTML]))
        else:
            plain.append(text)
    body = "\n\n".join(p for p in plain if p.strip()) or "\n\n".join(h for h in htmls if h.strip())
    return body[:MAX_TEXT], attachments[:200], defects


#: The fields :func:`extract_text` reads of every part.
_PART_FIELDS = ("content-type", "content-disposition")


def part_fields(part: Message) -> dict[str, Any]:
    """Return what ``part.get(name)`` returns for each of :data:`_PART_FIELDS` that the part has,
    from one pass over its fields (each get() is a pass)."""
    found: dict[str, Any] = {}
    for name, value in part.raw_items():
        key = name.lower()
        if key in _PART_FIELDS and key not in found:
            found[key] = part.policy.header_fetch_parse(name, value)
    return found


def part_filename(part: Message, fields: dict[str, Any] | None = None) -> str:
    """Return the part's file name, or "" (``fields``: its :func:`part_fields`, when at hand)."""
    # A filename is a parameter named filename (Content-Disposition) or name (Content-Type), also
    # in RFC 2231 pieces (name*0=): where neither header says "name", skip the costly parameter parse.
    try:
        if fields is None:
            fields = part_fields(part)
        if not any("name" in str(fields.get(h, "")).lower() for h in ("content-disposition", "content-type")):
            return ""
        name = part.get_filename()
    except Exception:  # noqa: BLE001 - malformed RFC 2231 parameters
        return "(unreadable name)"
    return decode_header_value(name)[:255] if name else ""


def payload_size(part: Message) -> int:
    payload = part.get_payload()
    if isinstance(payload, str):
        encoding = str(part.get("Content-Transfer-Encoding", "")).lower()
        return len(payload) * 3 // 4 if "base64" in encoding else len(payload)
    return 0


def part_text(part: Message, defects: list[str], fields: dict[str, Any] | None = None) -> str:
    """Return a text part decoded with its declared charset, or the best guess when that is wrong
    (``fields``: its :func:`part_fields`, when at hand)."""
    try:
        payload = part.get_payload(decode=True)
    except Exception as exc:  # noqa: BLE001 - broken transfer encodings
        defects.append(f"undecodable transfer encoding: {exc}")
        raw = part.get_payload()
        payload = raw.encode("ascii", "replace") if isinstance(raw, str) else b""
    if payload is None:
        payload = b""
    return decode_bytes(payload, content_charset(part, fields), defects)


#: A Content-Type of a type, one ``charset`` parameter (quoted or not) and nothing else.
_SIMPLE_CHARSET = re.compile(r"[ \t]*[A-Za-z0-9!#$%&'*+.^_`|~-]+/[A-Za-z0-9!#$%&'*+.^_`|~-]+[ \t]*;[ \t]*"
                             r"(?i:charset)=(\"?)([A-Za-z0-9_.:+-]+)\1[ \t]*")


def content_charset(part: Message, fields: dict[str, Any] | None = None) -> str | None:
    """Return ``part.get_content_charset()`` (``fields``: its :func:`part_fields`, when at hand).

    The commonest Content-Type (``text/plain; charset=utf-8``) is read with one
    regular expression; anything else goes through the stdlib's RFC 2231
    parameter parser, which cost half of reading a single-part message.
    """
    value = (part_fields(part) if fields is None else fields).get("content-type")
    if isinstance(value, str):
        simple = _SIMPLE_CHARSET.fullmatch(value)
        if simple is not None:
            return simple.group(2).lower()
    return part.get_content_charset()


def decode_bytes(data: bytes, charset: str | None, defects: list[str] | None = None) -> str:
    """Decode ``data``: the declared charset if it fits, else UTF-8, else a detected one."""
    candidates = []
    if charset:
        candidates.append(charset.strip().strip('"').lower())
    candidates.append("utf-8")
    for name in candidates:
        try:
            return data.decode(_codec(name))
        except (LookupError, UnicodeDecodeError):
            continue
    guess = detect_charset(data)
    if defects is not None:
        defects.append(f"charset {charset or '(none)'} did not fit; decoded as {guess}")
    try:
        return data.decode(guess, "replace")
    except LookupError:
        return data.decode("cp1252", "replace")


_ALIASES = {"x-unknown": "utf-8", "unknown-8bit": "utf-8", "us-ascii": "ascii", "ansi_x3.4-1968": "ascii",
            "x-sjis": "shift_jis", "ks_c_5601-1987": "cp949", "gb2312": "gb18030", "gbk": "gb18030"}


def _codec(name: str) -> str:
    return _ALIASES.get(name, name)


def detect_charset(data: bytes) -> str:
    """Return the most likely charset of ``data`` (charset-normalizer, falling back to cp1252)."""
    if b"\x1b$B" in data or b"\x1b$@" in data:
        return "iso2022_jp"
    try:
        from charset_normalizer import from_bytes

        best = from_bytes(data[:20000]).best()
        if best is not None:
            return best.encoding
    except Exception:  # noqa: BLE001 - detection is a best effort
        pass
    return "cp1252"


class _TextExtractor(HTMLParser):
    #: Table cells are separated, or "<td>UserID</td><td>JSMITH01</td>" would read "UserIDJSMITH01".
    CELL = {"td", "th"}
    BLOCK = {"p", "div", "br", "tr", "li", "h1", "h2", "h3", "h4", "h5", "h6", "table", "blockquote",
             "section", "article", "header", "footer", "ul", "ol", "hr", "pre"}
    SKIP = {"script", "style", "head", "title", "noscript", "template"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.skipping = 0
        self.quote_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.SKIP:
            self.skipping += 1
        elif tag in self.BLOCK:
            self.out.append("\n")
        elif tag in self.CELL:
            self.out.append(" ")
        if tag == "blockquote":
            self.quote_depth += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP and self.skipping:
            self.skipping -= 1
        elif tag in self.BLOCK:
            self.out.append("\n")
        elif tag in self.CELL:
            self.out.append(" ")
        if tag == "blockquote" and self.quote_depth:
            self.quote_depth -= 1

    def handle_data(self, data: str) -> None:
        if self.skipping:
            return
        if self.quote_depth:
            # Quoted history in HTML replies: mark it the way plain text does.
            data = "\n".join("> " + line if line.strip() else line for line in data.split("\n"))
        self.out.append(data)


def html_to_text(markup: str) -> str:
    """Return the readable text of an HTML body (scripts and styles dropped; quotes marked)."""
    parser = _TextExtractor()
    try:
        parser.feed(markup)
        parser.close()
    except Exception:  # noqa: BLE001 - malformed markup: fall back to stripping tags
        return html.unescape(re.sub(r"<[^>]*>", " ", markup))
    text = "".join(parser.out)
    text = re.sub(r"[ \t\xa0]+", " ", text)
    text = re.sub(r"\n\s*\n\s*\n+", "\n\n", text)
    return "\n".join(line.strip() for line in text.split("\n")).strip()
