"""Screening: the ONE predicate every responder calls before anything answers.

Like Mailman's ``replybot.can_acknowledge`` but in one place (Mailman's two
guards disagreed).  :func:`screen` returns a :class:`Screen` whose verdict is

* ``drop`` -- automatic mail that must never be answered or ticketed: RFC 3834
  ``Auto-Submitted`` other than ``no``, ``X-Autoreply``/``X-Autorespond``,
  ``X-Auto-Response-Suppress``, ``Precedence: bulk|junk|list|auto_reply``,
  mailing-list traffic (RFC 2369/2919 ``List-*``), delivery reports (RFC 3464
  ``multipart/report``), the null return path ``<>`` (RFC 5321 section 4.5.5),
  MAILER-DAEMON/postmaster, our own addresses and our own messages coming back,
  out-of-office subjects that come without RFC 3834 headers, and a duplicate
  of a message already handled (stored, not answered twice);
* ``no_reply`` -- a person, but no automatic answer: a reply to one of our own
  auto-replies (recognised by our signed Message-ID; it threads into its
  ticket for an analyst), or the per-recipient cap on automatic answers is
  reached (sliding window; stops storms between two responders);
* ``ok`` -- may be answered.

The checks are ordered tuples of named checks (:data:`AUTOMATIC`, which the
parse stage also runs so that automatic mail is never classified; then
:data:`REPEAT` and :data:`PERSON`; see :mod:`responders.checks`); every
reason found is listed, so the record says exactly why.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from models.parsed import ParsedMessage
from responders.checks import Check, run
from responders.msgid import check_message_id, looks_like_ours

DROP = "drop"
NO_REPLY = "no_reply"
OK = "ok"

_PRECEDENCE_AUTOMATIC = {"bulk", "junk", "list", "auto_reply"}
_DAEMON_LOCALS = {"mailer-daemon", "postmaster", "mailer_daemon", "mail-daemon", "noreply-dsn"}


@dataclass(frozen=True)
class ScreenContext:
    """What screening needs besides the message: plain data, no I/O."""

    own_addresses: frozenset[str]
    domain: str
    secret: bytes
    #: Automatic answers already sent to this sender in the window, and the cap.
    recent_autoreplies: int = 0
    autoreply_max: int = 5
    #: The earlier inbound message this one repeats (same Message-ID, sender and desk), if any.
    duplicate_of: str | None = None


@dataclass(frozen=True)
class Screen:
    verdict: str
    reasons: tuple[str, ...] = ()
    #: The ticket of ours this message answers (a verified signed Message-ID), if any.
    our_ticket: str | None = None
    details: dict[str, str] = field(default_factory=dict)

    @property
    def reason(self) -> str | None:
        """The first reason, or None when the message may be answered."""
        return self.reasons[0] if self.reasons else None

    @property
    def may_reply(self) -> bool:
        return self.verdict == OK


def _token(value: str) -> str:
    # Strip RFC 5322 comments and parameters: "auto-replied (vacation); x=y" -> "auto-replied".
    value = re.sub(r"\([^()]*\)", " ", value[:1000])
    return value.split(";", 1)[0].strip().lower()


@dataclass(frozen=True)
class Subject:
    msg: ParsedMessage
    ctx: ScreenContext


def _h(s: Subject, name: str) -> list[str]:
    return s.msg.headers.get(name, [])


def auto_submitted(s: Subject) -> str | None:
    # RFC 3834 section 5: any Auto-Submitted value other than "no" means automatic.
    tokens = [_token(v) for v in _h(s, "auto-submitted")]
    return next((t for t in tokens if t and t != "no"), None)


def x_autoreply(s: Subject) -> str | None:
    return "" if _h(s, "x-autoreply") or _h(s, "x-autorespond") else None


def x_auto_response_suppress(s: Subject) -> str | None:
    # Microsoft's header: the sender asks for no automatic answers (All, AutoReply, OOF...).
    return "" if any(_token(v) not in ("", "none") for v in _h(s, "x-auto-response-suppress")) else None


def precedence(s: Subject) -> str | None:
    return next((_token(v) for v in _h(s, "precedence") if _token(v) in _PRECEDENCE_AUTOMATIC), None)


def mailing_list(s: Subject) -> str | None:
    return "" if _h(s, "list-id") or _h(s, "list-unsubscribe") or _h(s, "list-post") else None


def delivery_report(s: Subject) -> str | None:
    content_type = (s.msg.content_type or "").lower()
    header_ct = " ".join(_h(s, "content-type")).lower().strip()
    return "" if content_type.startswith("multipart/report") or header_ct.startswith("multipart/report") else None


def null_return_path(s: Subject) -> str | None:
    return "" if s.msg.return_path == "" else None


def mailer_daemon(s: Subject) -> str | None:
    locals_ = {a.rpartition("@")[0].lower() for a in (s.msg.sender, s.msg.return_path or "")}
    return "" if locals_ & _DAEMON_LOCALS else None


def own_address(s: Subject) -> str | None:
    return "" if s.msg.sender.lower() in s.ctx.own_addresses else None


def own_message(s: Subject) -> str | None:
    return "" if looks_like_ours(s.msg.message_id, s.ctx.domain) else None


def x_loop(s: Subject) -> str | None:
    return "" if any(own in v.lower() for v in _h(s, "x-loop") for own in s.ctx.own_addresses) else None


#: Out-of-office subjects that arrive without RFC 3834 headers (Outlook, Gmail, Exchange; en and es).
_OUT_OF_OFFICE = re.compile(
    r"^\s*(?:(?:re|aw|rv|fw|fwd)\s*:\s*)*(?:out\s+of\s+(?:the\s+)?office|automatic\s+reply|auto(?:matic)?[-\s]?reply|"
    r"autoreply|auto\s*response|away\s+from\s+(?:the\s+)?office|on\s+vacation|vacation\s+reply|"
    r"respuesta\s+autom[aá]tica|fuera\s+de\s+(?:la\s+)?oficina|ausente|ausencia|de\s+vacaciones|"
    r"r[eé]ponse\s+automatique|absence)\b",
    re.IGNORECASE)


def out_of_office(s: Subject) -> str | None:
    return "" if _OUT_OF_OFFICE.search(s.msg.subject or "") else None


#: Automatic mail, or our own: recorded and dropped, never answered (effect ``drop``).
AUTOMATIC: tuple[Check[Subject], ...] = (
    Check("auto_submitted", DROP, auto_submitted, "RFC 3834 Auto-Submitted other than 'no'"),
    Check("x_autoreply", DROP, x_autoreply, "X-Autoreply / X-Autorespond"),
    Check("x_auto_response_suppress", DROP, x_auto_response_suppress, "Microsoft's X-Auto-Response-Suppress"),
    Check("precedence", DROP, precedence, "Precedence: bulk, junk, list or auto_reply"),
    Check("mailing_list", DROP, mailing_list, "RFC 2369/2919 List-* headers"),
    Check("delivery_report", DROP, delivery_report, "RFC 3464 multipart/report"),
    Check("null_return_path", DROP, null_return_path, "the null return path <>"),
    Check("mailer_daemon", DROP, mailer_daemon, "MAILER-DAEMON, postmaster"),
    Check("own_address", DROP, own_address, "sent from one of our own addresses"),
    Check("own_message", DROP, own_message, "one of our own Message-IDs coming back"),
    Check("x_loop", DROP, x_loop, "X-Loop naming one of our addresses"),
    Check("out_of_office", DROP, out_of_office, "an out-of-office subject without RFC 3834 headers"),
)


def automatic_reasons(msg: ParsedMessage, ctx: ScreenContext) -> list[str]:
    """Return why ``msg`` is automatic or ours (reasons to drop it); empty for a person."""
    return [f"{f.check}:{f.detail}" if f.detail else f.check for f in run(AUTOMATIC, Subject(msg, ctx))]


def thread_ticket(msg: ParsedMessage, secret: bytes) -> str | None:
    """Return the ticket whose signed Message-ID ``msg`` answers (signed for its sender)."""
    for ref in [msg.in_reply_to, *reversed(msg.references)]:
        ours = check_message_id(secret, ref, [msg.sender])
        if ours:
            return ours.ticket
    return None


def rate_limited(s: Subject) -> str | None:
    return "" if s.ctx.recent_autoreplies >= s.ctx.autoreply_max else None


def duplicate(s: Subject) -> str | None:
    return s.ctx.duplicate_of


#: Repeats: the same message again (same Message-ID from the same sender to the same desk): stored, not
#: handled twice.
REPEAT: tuple[Check[Subject], ...] = (
    Check("duplicate", DROP, duplicate, "the same Message-ID from the same sender to the same desk, again"),
)

#: A person, but no automatic answer (effect ``no_reply``): checked after :data:`AUTOMATIC`.
PERSON: tuple[Check[Subject], ...] = (
    Check("rate_limited", NO_REPLY, rate_limited, "the per-recipient cap on automatic answers is reached"),
)


@dataclass(frozen=True)
class Examined:
    """What screening reads from the message alone (with the desk's addresses and secret): the same
    whatever the cap and the repeats, so a batch works it out once for its probe and its plan."""

    #: :func:`automatic_reasons`.
    automatic: tuple[str, ...]
    #: :func:`thread_ticket`.
    ticket: str | None


def examine(msg: ParsedMessage, ctx: ScreenContext) -> Examined:
    """Return what :func:`screen` reads from ``msg`` itself (``ctx``: only its addresses, domain, secret)."""
    ticket = thread_ticket(msg, ctx.secret)
    return Examined(tuple(automatic_reasons(msg, ctx)), ticket)


def screen(msg: ParsedMessage, ctx: ScreenContext, examined: Examined | None = None) -> Screen:
    """Return whether ``msg`` may get an automatic answer, and why not.

    ``examined``: :func:`examine` of ``msg`` under a context with the same addresses and secret, when
    the caller has it already.
    """
    seen = examined if examined is not None else examine(msg, ctx)
    ticket = seen.ticket
    subject = Subject(msg, ctx)
    reasons = list(seen.automatic) + [f"{f.check}:{f.detail}" for f in run(REPEAT, subject)]
    if reasons:
        return Screen(DROP, tuple(reasons), our_ticket=ticket)
    if ticket:
        reasons.append("reply_to_our_autoreply")
    reasons += [f.check for f in run(PERSON, subject)]
    if reasons:
        return Screen(NO_REPLY, tuple(reasons), our_ticket=ticket)
    return Screen(OK, (), our_ticket=None)
