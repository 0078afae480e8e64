"""The CSMS mail use cases: subscription commands sent to the request
address, and delivery reports and complaints sent to a notice's VERP
return path.  The daemon's csms stage (``daemon/stages/csms.py``) only
claims the rows and calls :func:`csms_rows`.

Commands (``csms.commands``, English or Spanish) are double opt-in: a
``subscribe`` or ``unsubscribe`` creates a pending confirmation and sends a
confirmation request with a signed token to the From address -- the address
being (un)subscribed, so a forged From only ever mails its real owner, who
can ignore it.  Replying with the token (or the link in the message) carries
the request out.  An ``unsubscribe`` carrying a notice's own one-click token
(the ``mailto:`` of ``List-Unsubscribe``) is honoured at once: the token
proves the mail was received there.  Automatic mail (auto-replies, DSNs,
lists, our own) never gets an answer (``responders.screen``), and what the
request address sends is capped per address per day and in total per hour,
so it cannot be used to mail-bomb anyone.  Answers go through the
transactional outbox, in the same transaction as the decision.

Bounces: the VERP token of the address the report was delivered to names the
subscriber and the notice (signed: a forged report cannot disable anyone);
the report's own fields are evidence only.  ``Action: failed`` with a 5.x.x
status is a hard bounce and counts; delayed and 4.x.x reports are recorded
as soft and never count.  A bounce that is not an RFC 3464 DSN is read by
flufl.bounce's detectors (many real MTAs' formats), with the same rule.

Complaints: an ARF feedback report (RFC 5965) from a mailbox provider's
feedback loop, to the bounce or the request address, names the complainer
by the signed token in the reported copy's ``List-Unsubscribe`` (or its VERP
return path): that subscriber is unsubscribed from the list, and the
complaint is recorded with the bounces.  Control mail is DKIM-signed when
``[csms] dkim_key_file`` is set.  ``bounce_threshold`` hard bounces within
``bounce_window_days`` disable the address, with a warning in the log.

Every message ends ``done`` with an audit entry saying what was done and
why -- nothing is dropped in silence.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from classifiers.language import detect_language
from csms import bounces, commands, confirm, headers, service, subscribers
from csms.dkim import DkimKey
from csms.settings import CsmsConfig
from csms.tokens import CONFIRM, TOKEN_RE, UNSUBSCRIBE, BadToken, Signer
from models.base import utcnow
from models.core import DONE, AuditEntry, InboundMessage
from models.csms import ACTIVE, Subscriber
from models.parsed import ParsedMessage
from responders.screen import ScreenContext, automatic_reasons

log = logging.getLogger("acedesk.csms")

ACTOR = "csms-stage"


class DeskAddresses(Protocol):
    """The desk's addresses as the CSMS use cases need them (``[desk]`` in the configuration)."""

    @property
    def bounce_address(self) -> str: ...

    @property
    def csms_request_address(self) -> str: ...

    @property
    def domain(self) -> str: ...

    def is_bounce_address(self, address: str) -> bool: ...


@dataclass(frozen=True)
class CsmsDesk:
    """What the request and bounce addresses need of the configuration, built once."""

    desk: DeskAddresses
    cfg: CsmsConfig
    signer: Signer
    screen: ScreenContext
    #: Signs control mail (None: unsigned).
    dkim: DkimKey | None = None

    @property
    def request(self) -> str:
        return self.desk.csms_request_address


def _audit(session: Session, row: InboundMessage, action: str, now: dt.datetime, **detail: Any) -> None:
    session.add(AuditEntry(at=now, actor=ACTOR, action=f"csms.{action}", subject_type="message",
                           subject_id=str(row.id), detail=detail or None))


def _finish(session: Session, row: InboundMessage, action: str, now: dt.datetime, **detail: Any) -> None:
    row.state = DONE
    row.error = None
    _audit(session, row, action, now, **detail)
    log.info("message %s (Message-ID %s) to %s: %s %s", row.id, row.message_id, row.desk, action,
             " ".join(f"{k}={v}" for k, v in detail.items()))


# --- bounces -------------------------------------------------------------------------------


def handle_bounce(d: CsmsDesk, session: Session, row: InboundMessage, now: dt.datetime) -> None:
    """Attribute a DSN to the subscriber its VERP address names, and count it if hard."""
    named = d.signer.parse_verp(row.desk)
    if named is None:
        _finish(session, row, "bounce_unattributed", now,
                why="no valid VERP token in the address it was delivered to")
        return
    subscriber_id, number = named
    reports = bounces.parse_dsn(row.raw)
    source = "dsn"
    if not reports:
        other = bounces.parse_other(row.raw)
        if other is None:
            # A vacation reply or a report nobody recognises: evidence of nothing.
            _finish(session, row, "bounce_not_recognised", now, subscriber=subscriber_id, notice=number)
            return
        reports, source = [other], "nondsn"
    if session.get(Subscriber, subscriber_id) is None:
        _finish(session, row, "bounce_unknown_subscriber", now, subscriber=subscriber_id, notice=number)
        return
    # One report is one event: the worst of its recipient blocks (all are about this subscriber).
    report = next((r for r in reports if r.kind == bounces.HARD), reports[0])
    disabled = subscribers.record_bounce(
        session, subscriber_id, kind=report.kind, notice_number=number or None, action=report.action,
        status_code=report.status, diagnostic=report.diagnostic, inbound_message_id=row.id,
        threshold=d.cfg.bounce_threshold, window_days=d.cfg.bounce_window_days, now=now, source=source)
    if disabled:
        email_address = session.get(Subscriber, subscriber_id).email  # type: ignore[union-attr]
        log.warning("CSMS subscriber %s (%s) disabled: %d hard bounces within %d days (last: %s %s)",
                    subscriber_id, email_address, d.cfg.bounce_threshold, d.cfg.bounce_window_days,
                    report.status, report.diagnostic[:200])
    _finish(session, row, "bounce_disabled" if disabled else f"bounce_{report.kind}", now,
            subscriber=subscriber_id, notice=number, status=report.status, action_field=report.action,
            format=source)


# --- complaints (ARF, RFC 5965) ------------------------------------------------------------


def complainer(d: CsmsDesk, complaint: bounces.Complaint, delivered_to: str, now: dt.datetime) -> int | None:
    """The subscriber a complaint is about, from signed identifiers only (a forged report
    must not unsubscribe anyone): the reported copy's unsubscribe token, else its VERP return
    path, else the VERP address the report came to."""
    for token in TOKEN_RE.findall(complaint.list_unsubscribe):
        try:
            return d.signer.check(UNSUBSCRIBE, token, now=now.timestamp())
        except BadToken:
            continue
    for address in (complaint.return_path, delivered_to):
        named = d.signer.parse_verp(address) if address else None
        if named is not None:
            return named[0]
    return None


def handle_complaint(d: CsmsDesk, session: Session, row: InboundMessage, now: dt.datetime) -> bool:
    """Unsubscribe the subscriber an ARF report complains about; False when ``row`` is not one."""
    complaint = bounces.parse_arf(row.raw)
    if complaint is None:
        return False
    subscriber_id = complainer(d, complaint, row.desk, now)
    subscriber = session.get(Subscriber, subscriber_id) if subscriber_id is not None else None
    if subscriber is None:
        _finish(session, row, "complaint_unattributed", now, feedback_type=complaint.feedback_type,
                user_agent=complaint.user_agent[:200])
        return True
    subscribers.record_complaint(session, subscriber.id, feedback_type=complaint.feedback_type,
                                 user_agent=complaint.user_agent, inbound_message_id=row.id, now=now)
    was_active = subscriber.status == ACTIVE
    if was_active:
        subscribers.unsubscribe(session, subscriber)
    log.warning("CSMS subscriber %s (%s) complained (%s report from %s): %s", subscriber.id, subscriber.email,
                complaint.feedback_type or "feedback", complaint.user_agent[:100] or "a feedback loop",
                "unsubscribed" if was_active else "was not subscribed")
    _finish(session, row, "complaint_unsubscribed" if was_active else "complaint_recorded", now,
            subscriber=subscriber.id, feedback_type=complaint.feedback_type)
    return True


# --- commands --------------------------------------------------------------------------------


def _send(d: CsmsDesk, session: Session, row: InboundMessage, rcpt: str, kind: str, built: confirm.Built,
          now: dt.datetime) -> None:
    # The envelope sender is the bare bounce address: a confirmation that bounces comes
    # back to the csms stage, is recognised as unattributed, and is answered by nobody.
    raw = d.dkim.sign(built.raw) if d.dkim is not None else built.raw
    subscribers.queue_control_mail(session, rcpt=rcpt, mail_from=d.desk.bounce_address, kind=kind,
                                   raw=raw, message_id=built.message_id, inbound_message_id=row.id,
                                   now=now)


def _may_send(d: CsmsDesk, session: Session, rcpt: str, now: dt.datetime) -> bool:
    return subscribers.may_send_control_mail(session, rcpt, now,
                                             per_address_per_day=d.cfg.confirmations_per_address_per_day,
                                             per_hour=d.cfg.confirmations_per_hour)


def handle_command(d: CsmsDesk, session: Session, row: InboundMessage, now: dt.datetime) -> None:
    """Carry out, or ask to confirm, the command in a message to the request address."""
    msg = ParsedMessage.from_dict(row.parsed or {})
    automatic = automatic_reasons(msg, d.screen)
    if automatic:
        _finish(session, row, "ignored_automatic", now, reasons=automatic)
        return
    sender = msg.sender.lower()
    if not headers.is_plain_address(sender):
        # Nothing could be delivered to it (the fan-out sends only to plain local@domain addresses).
        _finish(session, row, "ignored_bad_sender", now, sender=sender[:200])
        return
    command = commands.parse_command(msg.subject, msg.new_text or msg.text)
    if command is not None and command.action == commands.CONFIRM and command.token \
            and _is_unsubscribe_token(d, command.token, now):
        # A reply to a notice quotes its footer, unsubscribe link and all: no command in it.
        command = None
    if command is not None and command.token and command.action in (commands.CONFIRM, commands.UNSUBSCRIBE) \
            and _token_command(d, session, row, msg, command, now):
        return
    if not _may_send(d, session, sender, now):
        _finish(session, row, "rate_limited", now, command=command.action if command else None, sender=sender)
        log.warning("CSMS: nothing sent to %s (confirmation rate limit reached); request ignored", sender)
        return
    known = service.topic_names(session)
    if command is None or command.action == commands.HELP:
        language = command.language if command else detect_language(msg.classifier_text, default="en")
        built = confirm.help_notice(sender=d.request, request=d.request, rcpt=sender, known_topics=known,
                                    language=language, domain=d.desk.domain, in_reply_to=msg.message_id)
        _send(d, session, row, sender, "help", built, now)
        _finish(session, row, "help_sent", now, sender=sender)
        return
    matched, unknown = commands.match_topics(command.topics, known)
    problem = _problem(session, command, sender, matched, unknown)
    if problem:
        built = confirm.error_notice(sender=d.request, request=d.request, rcpt=sender, reason=problem,
                                     known_topics=known, language=command.language, domain=d.desk.domain,
                                     in_reply_to=msg.message_id)
        _send(d, session, row, sender, "error", built, now)
        _finish(session, row, "error_sent", now, sender=sender, problem=problem)
        return
    hours = d.cfg.confirm_hours
    pending = subscribers.create_pending(session, sender, command.action, matched, command.language,
                                         now + dt.timedelta(hours=hours), row.id)
    token = d.signer.make(CONFIRM, pending.id, hours * 3600, now=now.timestamp())
    built = confirm.confirmation_request(
        sender=d.request, request=d.request, rcpt=sender, action=command.action, topics=matched, token=token,
        language=command.language, hours=hours, domain=d.desk.domain, in_reply_to=msg.message_id,
        confirm_url=f"{d.cfg.base_url.rstrip('/')}/c/{token}", unknown=unknown)
    _send(d, session, row, sender, "confirm", built, now)
    _finish(session, row, "confirmation_sent", now, command=command.action, sender=sender, topics=matched,
            pending=pending.id)


def _problem(session: Session, command: commands.Command, sender: str, matched: list[str],
             unknown: list[str]) -> str | None:
    """Why ``command`` cannot be asked for confirmation (in its language), or None."""
    reasons = _REASONS.get(command.language, _REASONS["en"])
    if command.action == commands.CONFIRM:
        return reasons["bad_confirm"]
    if command.action == commands.SUBSCRIBE and not matched:
        return reasons["unknown_topics" if command.topics else "no_topics"].format(names=", ".join(unknown))
    if command.action == commands.UNSUBSCRIBE:
        status = session.scalar(select(Subscriber.status).where(Subscriber.email == sender))
        if status != ACTIVE:
            return reasons["not_subscribed"].format(email=sender)
        if command.topics and not matched:
            return reasons["unknown_topics"].format(names=", ".join(unknown))
    return None


def _is_unsubscribe_token(d: CsmsDesk, token: str, now: dt.datetime) -> bool:
    try:
        d.signer.check(UNSUBSCRIBE, token, now=now.timestamp())
    except BadToken:
        return False
    return True


def _token_command(d: CsmsDesk, session: Session, row: InboundMessage, msg: ParsedMessage,
                   command: commands.Command, now: dt.datetime) -> bool:
    """Handle a command carrying a token; return False when the token is not ours (then it is a plain command)."""
    assert command.token is not None
    if command.action == commands.UNSUBSCRIBE:
        try:
            subscriber_id = d.signer.check(UNSUBSCRIBE, command.token, now=now.timestamp())
        except BadToken:
            return False
        subscriber = session.get(Subscriber, subscriber_id)
        if subscriber is not None and subscriber.status == ACTIVE:
            subscribers.unsubscribe(session, subscriber)
        # No answer: the List-Unsubscribe mailto is one-click too, and an answer would be backscatter.
        _finish(session, row, "unsubscribed_one_click", now, subscriber=subscriber_id)
        return True
    try:
        pending_id = d.signer.check(CONFIRM, command.token, now=now.timestamp())
    except BadToken as exc:
        _finish(session, row, "confirm_refused", now, why=str(exc))
        return True
    try:
        with session.begin_nested():
            pending = subscribers.confirm_pending(session, pending_id, now)
    except service.CsmsError as exc:
        _finish(session, row, "confirm_refused", now, why=str(exc), pending=pending_id)
        return True
    subscriber = session.scalar(select(Subscriber).where(Subscriber.email == pending.email))
    topics = subscribers.subscriber_topics(session, subscriber.id) if subscriber else []
    log.info("CSMS: %s confirmed %s %s", pending.email, pending.action, ", ".join(pending.topics) or "(all)")
    # The result goes to the address confirmed (it proved it reads it), not to whoever sent the token.
    if _may_send(d, session, pending.email, now):
        built = confirm.result_notice(sender=d.request, request=d.request, rcpt=pending.email, topics=topics,
                                      language=pending.language, domain=d.desk.domain, in_reply_to=msg.message_id)
        _send(d, session, row, pending.email, "result", built, now)
    _finish(session, row, "confirmed", now, pending=pending_id, action_done=pending.action, topics=topics)
    return True


_REASONS = {
    "en": {
        "no_topics": "name the topics to subscribe to, separated by ';'",
        "unknown_topics": "no such topic: {names}",
        "not_subscribed": "{email} is not subscribed",
        "bad_confirm": "the confirmation code is missing or not valid",
    },
    "es": {
        "no_topics": "indique los temas a los que desea suscribirse, separados por ';'",
        "unknown_topics": "no existe el tema: {names}",
        "not_subscribed": "{email} no está suscrito",
        "bad_confirm": "falta el código de confirmación o no es válido",
    },
}


def csms_rows(d: CsmsDesk, session: Session, rows: list[InboundMessage]) -> None:
    now = utcnow()
    # The configured topics exist before anyone asks for them, also on a fresh
    # database that no 'acedesk csms' command has touched yet.
    service.ensure_topics(session, d.cfg.default_topics)
    for row in rows:
        if bounces.is_arf(row.raw) and handle_complaint(d, session, row, now):
            continue
        if d.desk.is_bounce_address(row.desk):
            handle_bounce(d, session, row, now)
        else:
            handle_command(d, session, row, now)
