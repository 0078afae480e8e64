"""Screening: the ONE predicate every responder calls before anything answers.

Like Mailman's ``replybot.can_acknowledge`` but in one place (Mailman's two
guards disagreed).  :func:`screen` returns a :class:`Screen` whose verdict is

* ``drop`` -- automatic mail that must never be answered or ticketed: RFC 3834
  ``Auto-Submitted`` other than ``no``, ``X-Autoreply``/``X-Autorespond``,
  ``X-Auto-Response-Suppress``, ``Precedence: bulk|junk|list|auto_reply``,
  mailing-list traffic (RFC 2369/2919 ``List-*``), delivery reports (RFC 3464
  ``multipart/report``), the null return path ``<>`` (RFC 5321 section 4.5.5),
  MAILER-DAEMON/postmaster, our own addresses and our own messages coming back;
* ``no_reply`` -- a person, but no automatic answer: a reply to one of our own
  auto-replies (recognised by our signed Message-ID; it threads into its
  ticket for an analyst), or the per-recipient cap on automatic answers is
  reached (sliding window; stops storms between two responders);
* ``ok`` -- may be answered.

Every reason found is listed, so the record says exactly why.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from models.parsed import ParsedMessage
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
    value = re.sub(r"\([^()]*\)", " ", value)
    return value.split(";", 1)[0].strip().lower()


def automatic_reasons(msg: ParsedMessage, ctx: ScreenContext) -> list[str]:
    """Return why ``msg`` is automatic or ours (reasons to drop it); empty for a person."""
    reasons: list[str] = []
    h = msg.headers
    # RFC 3834 section 5: any Auto-Submitted value other than "no" means automatic.
    for value in h.get("auto-submitted", []):
        token = _token(value)
        if token and token != "no":
            reasons.append(f"auto_submitted:{token}")
            break
    if h.get("x-autoreply") or h.get("x-autorespond"):
        reasons.append("x_autoreply")
    for value in h.get("x-auto-response-suppress", []):
        # Microsoft's header: the sender asks for no automatic answers (All, AutoReply, OOF...).
        if _token(value) not in ("", "none"):
            reasons.append("x_auto_response_suppress")
            break
    for value in h.get("precedence", []):
        if _token(value) in _PRECEDENCE_AUTOMATIC:
            reasons.append(f"precedence:{_token(value)}")
            break
    if h.get("list-id") or h.get("list-unsubscribe") or h.get("list-post"):
        reasons.append("mailing_list")
    content_type = (msg.content_type or "").lower()
    header_ct = " ".join(h.get("content-type", [])).lower()
    if content_type.startswith("multipart/report") or header_ct.strip().startswith("multipart/report"):
        reasons.append("delivery_report")
    if msg.return_path == "":
        reasons.append("null_return_path")
    for address in (msg.sender, msg.return_path or ""):
        local = address.rpartition("@")[0].lower()
        if local in _DAEMON_LOCALS:
            reasons.append("mailer_daemon")
            break
    if msg.sender.lower() in ctx.own_addresses:
        reasons.append("own_address")
    if looks_like_ours(msg.message_id, ctx.domain):
        reasons.append("own_message")
    for value in h.get("x-loop", []):
        if any(own in value.lower() for own in ctx.own_addresses):
            reasons.append("x_loop")
            break
    return reasons


def thread_ticket(msg: ParsedMessage, secret: bytes) -> str | None:
    """Return the ticket whose signed Message-ID ``msg`` answers (signed for its sender)."""
    for ref in [msg.in_reply_to, *reversed(msg.references)]:
        ours = check_message_id(secret, ref, [msg.sender])
        if ours:
            return ours.ticket
    return None


def screen(msg: ParsedMessage, ctx: ScreenContext) -> Screen:
    """Return whether ``msg`` may get an automatic answer, and why not."""
    ticket = thread_ticket(msg, ctx.secret)
    reasons = automatic_reasons(msg, ctx)
    if reasons:
        return Screen(DROP, tuple(reasons), our_ticket=ticket)
    if ticket:
        reasons.append("reply_to_our_autoreply")
    if ctx.recent_autoreplies >= ctx.autoreply_max:
        reasons.append("rate_limited")
    if reasons:
        return Screen(NO_REPLY, tuple(reasons), our_ticket=ticket)
    return Screen(OK, (), our_ticket=None)
