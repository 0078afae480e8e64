"""The policy: label x verification x confidence -> reply | ticket | triage | drop.

The rules come from ``[[responders.rules]]`` (first match wins; see
``responders.settings``).  On top of the table, three fixed safety rules that
no configuration can turn off:

* screened automatic mail is dropped (with its record), never answered;
* a message that must not be answered automatically (a reply to our own
  auto-reply, the per-recipient cap) keeps its ticket/triage but loses the reply;
* a message that looks like impersonation is flagged for security, goes to
  triage, and any account template is replaced by the neutral one -- and an
  account answer only ever goes to the address on file of a verified user.
"""

from __future__ import annotations

from dataclasses import dataclass

from responders.screen import DROP, NO_REPLY, Screen
from responders.settings import ACCOUNT_LABELS, PolicyRule
from responders.verify import VERIFIED, Verification

REPLY = "reply"
TICKET = "ticket"
TRIAGE = "triage"
DROP_ACTION = "drop"
KINDS = (REPLY, TICKET, TRIAGE, DROP_ACTION)
SECURITY_NEUTRAL = "security_neutral"


@dataclass(frozen=True)
class Decision:
    kind: str
    #: The reply template (for ``reply``: the answer; for ``ticket``/``triage``: an acknowledgement), or None.
    template: str | None
    #: Where the reply goes (None: no reply).
    to: str | None
    security: bool = False
    reasons: tuple[str, ...] = ()
    #: Index of the matching rule in the table (-1: a fixed rule decided).
    rule: int = -1

    def to_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "template": self.template, "to": self.to, "security": self.security,
                "reasons": list(self.reasons)}


def _matches(rule: PolicyRule, label: str, verification: str, confidence: float, auto: bool | None) -> bool:
    if "*" not in rule.labels and label not in rule.labels:
        return False
    if "*" not in rule.verification and verification not in rule.verification:
        return False
    if confidence < rule.min_confidence:
        return False
    if rule.require_auto and auto is False:
        return False
    return True


def decide(label: str, confidence: float, auto: bool | None, verification: Verification, screen: Screen,
           sender: str, rules: list[PolicyRule], followup: bool = False) -> Decision:
    """Return what to do with one message (pure; see the module docstring)."""
    if screen.verdict == DROP:
        return Decision(DROP_ACTION, None, None, reasons=("screened: " + ", ".join(screen.reasons),))
    if followup:
        return Decision(TRIAGE, None, None, security=verification.impersonation,
                        reasons=("follow-up on an existing ticket",))
    index, rule = next(((i, r) for i, r in enumerate(rules)
                        if _matches(r, label, verification.status, confidence, auto)),
                       (-1, PolicyRule(action=TRIAGE)))
    reasons = [f"rule {index}: {rule.action} for {label}/{verification.status} at {confidence:.2f}"]
    kind = rule.action
    template: str | None = rule.template or (label if kind == REPLY else None)
    security = rule.security
    to: str | None = sender
    if rule.to == "on_file" or label in ACCOUNT_LABELS:
        # Account answers go only to the address on file of a verified user.
        if verification.status == VERIFIED and verification.email_on_file:
            to = verification.email_on_file
        elif template in ACCOUNT_LABELS or kind == REPLY and label in ACCOUNT_LABELS:
            kind, template = (TICKET if kind == REPLY else kind), SECURITY_NEUTRAL
            reasons.append("account answer withheld: sender not verified")
    if verification.impersonation:
        security = True
        if kind in (REPLY, TICKET):
            kind = TRIAGE
        if template in ACCOUNT_LABELS:
            template = SECURITY_NEUTRAL
        reasons.append("looks like impersonation: flagged for security")
    if kind == DROP_ACTION:
        return Decision(DROP_ACTION, None, None, security, tuple(reasons), index)
    if screen.verdict == NO_REPLY:
        if kind == REPLY:
            kind = TICKET
        template = None
        reasons.append("no automatic answer: " + ", ".join(screen.reasons))
    if template is None:
        to = None
    return Decision(kind, template, to, security, tuple(reasons), index)
