"""Delivery status notifications (RFC 3464 ``multipart/report;
report-type=delivery-status``) read into per-recipient reports.

``Action: failed`` with a 5.x.x status is a **hard** bounce (counted toward
disabling the address); ``delayed``, ``relayed``/``delivered`` or any 4.x.x
status is **soft** (recorded, never counted as a failure: a full mailbox or a
greylisting relay says nothing about the address).  Which subscriber a DSN
is about comes from the VERP return path it was sent to, not from these
fields; they are kept as evidence.
"""

from __future__ import annotations

import email
import re
from dataclasses import dataclass
from email import policy
from email.message import Message

HARD = "hard"
SOFT = "soft"

_STATUS_RE = re.compile(r"\b([245])\.\d{1,3}\.\d{1,3}\b")


@dataclass(frozen=True)
class BounceReport:
    recipient: str
    action: str
    status: str
    diagnostic: str
    kind: str


def classify(action: str, status: str) -> str:
    """Return ``hard`` or ``soft`` for one per-recipient block (RFC 3464 section 2.3)."""
    action = action.strip().lower()
    if action == "failed" and status.startswith("5"):
        return HARD
    return SOFT


def _field(block: Message, name: str) -> str:
    value = block.get(name)
    return str(value).strip() if value is not None else ""


def _address(value: str) -> str:
    # "rfc822; jo@example.com" (RFC 3464 section 2.3.2)
    return value.split(";", 1)[-1].strip().strip("<>").lower()


def parse_dsn(raw: bytes) -> list[BounceReport]:
    """Return the per-recipient reports of a DSN; ``[]`` when ``raw`` is not one."""
    msg = email.message_from_bytes(raw, policy=policy.compat32)
    reports: list[BounceReport] = []
    for part in msg.walk():
        if part.get_content_type() != "message/delivery-status":
            continue
        payload = part.get_payload()
        blocks: list[Message] = [b for b in payload if isinstance(b, Message)] if isinstance(payload, list) else []
        if not blocks and isinstance(payload, str):
            # Some MTAs mislabel the part's encoding; parse the text as header blocks.
            blocks = [email.message_from_string(chunk) for chunk in re.split(r"\r?\n\r?\n", payload) if chunk.strip()]
        for block in blocks[1:] if len(blocks) > 1 else blocks:
            recipient = _address(_field(block, "Final-Recipient") or _field(block, "Original-Recipient"))
            if not recipient:
                continue
            action = _field(block, "Action").lower()
            match = _STATUS_RE.search(_field(block, "Status"))
            status = match.group(0) if match else ""
            diagnostic = _field(block, "Diagnostic-Code")[:1000]
            reports.append(BounceReport(recipient, action, status, diagnostic, classify(action, status)))
    return reports


def is_dsn(raw: bytes) -> bool:
    """Return whether ``raw`` is a delivery-status report."""
    head = raw[:8192].lower()
    return b"multipart/report" in head and b"delivery-status" in raw.lower()


# --- bounces in other formats (flufl.bounce, what Mailman uses) ------------------------------


def parse_other(raw: bytes) -> BounceReport | None:
    """Read a bounce that is not an RFC 3464 DSN (qmail, Exim, Postfix's old format, Microsoft's,
    Yahoo's, ...) with flufl.bounce's detectors; None when none of them recognises it.

    A permanent failure is hard, a temporary one soft, as with DSNs.
    """
    from flufl.bounce import all_failures

    msg = email.message_from_bytes(raw, policy=policy.compat32)
    try:
        temporary, permanent = all_failures(msg)
    except Exception:  # noqa: BLE001 - a detector choking on odd mail means "not recognised"
        return None
    if permanent:
        address = sorted(permanent)[0]
        return BounceReport(_decode(address), "failed", "5.0.0", "non-DSN bounce (permanent)", HARD)
    if temporary:
        address = sorted(temporary)[0]
        return BounceReport(_decode(address), "delayed", "4.0.0", "non-DSN bounce (temporary)", SOFT)
    return None


def _decode(address: bytes | str) -> str:
    return (address.decode("utf-8", "replace") if isinstance(address, bytes) else address).lower()


# --- complaints: ARF feedback reports (RFC 5965) -------------------------------------------


@dataclass(frozen=True)
class Complaint:
    """A mailbox provider's report that a recipient marked our mail as spam."""

    feedback_type: str
    user_agent: str
    #: Where the reported message was delivered (often redacted by the provider).
    original_rcpt: str
    #: Headers of the reported message (those we need to know whose copy it was).
    list_unsubscribe: str
    return_path: str
    message_id: str


def is_arf(raw: bytes) -> bool:
    head = raw[:8192].lower()
    return b"multipart/report" in head and b"feedback-report" in head


def parse_arf(raw: bytes) -> Complaint | None:
    """Return the complaint in an ARF report (``multipart/report; report-type=feedback-report``),
    or None when ``raw`` is not one."""
    msg = email.message_from_bytes(raw, policy=policy.compat32)
    if msg.get_content_type() != "multipart/report" or \
            (msg.get_param("report-type") or "").lower() != "feedback-report":
        return None
    fields: Message | None = None
    original: Message | None = None
    for part in msg.walk():
        kind = part.get_content_type()
        if kind == "message/feedback-report":
            payload = part.get_payload()
            if isinstance(payload, list) and payload:
                fields = payload[0]
            elif isinstance(payload, str):
                fields = email.message_from_string(payload)
        elif kind in ("message/rfc822", "text/rfc822-headers") and original is None:
            payload = part.get_payload()
            if isinstance(payload, list) and payload:
                original = payload[0]
            elif isinstance(payload, str):
                original = email.message_from_string(payload)
    if fields is None:
        return None
    original = original or Message()
    return Complaint(
        feedback_type=_field(fields, "Feedback-Type").lower(), user_agent=_field(fields, "User-Agent"),
        original_rcpt=_address(_field(fields, "Original-Rcpt-To")),
        list_unsubscribe=_field(original, "List-Unsubscribe"),
        return_path=_field(original, "Return-Path").strip("<>") or _field(fields, "Original-Mail-From").strip("<>"),
        message_id=_field(original, "Message-ID"))
