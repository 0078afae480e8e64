"""The policy: label x verification x confidence -> reply | ticket | triage | drop.

The rules come from ``[[responders.rules]]`` (first match wins; see
``responders.settings``).  The decision is the ordered tuple of named steps
:data:`DECIDE`, each recording why it changed the draft; around the table,
fixed safety steps that no configuration can turn off:

* screened automatic mail is dropped (with its record), never answered;
* a message that must not be answered automatically (a reply to our own
  auto-reply, the per-recipient cap) keeps its ticket/triage but loses the reply;
* a message that looks like impersonation is flagged for security, goes to
  triage, and any account template is replaced by the neutral one -- and an
  account answer only ever goes to the address on file of a verified user.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

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
    #: A follow-up on an existing ticket (it goes to that ticket's analyst).
    followup: bool = False

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


@dataclass
class Draft:
    """A decision being made: the facts, and the action so far (each step of :data:`DECIDE` may change it)."""

    label: str
    confidence: float
    auto: bool | None
    verification: Verification
    screen: Screen
    sender: str
    rules: list[PolicyRule]
    followup: bool
    kind: str = TRIAGE
    template: str | None = None
    to: str | None = None
    security: bool = False
    rule: int = -1
    #: The matching rule sends its answer to the address on file (``to = "on_file"``).
    to_on_file: bool = False
    reasons: list[str] = field(default_factory=list)
    final: bool = False
    #: The status of the account the message is from or about when it is not active
    #: (``inactive``, ``suspended``; ``responders.accounts.held_status``), else None.
    held: str | None = None
    #: The number of a ticket the message quotes whose requester is someone else.
    foreign_ticket: str | None = None


@dataclass(frozen=True)
class Step:
    """One named step of the decision: ``apply`` changes the draft and returns why, or None (no change)."""

    name: str
    apply: Callable[[Draft], str | None]
    description: str = ""


def screened_drop(d: Draft) -> str | None:
    if d.screen.verdict != DROP:
        return None
    d.kind, d.template, d.to, d.final = DROP_ACTION, None, None, True
    return ", ".join(d.screen.reasons)


def followup_to_triage(d: Draft) -> str | None:
    if not d.followup:
        return None
    d.kind, d.template, d.to, d.final = TRIAGE, None, None, True
    d.security = d.verification.impersonation or d.held is not None
    return "follow-up on an existing ticket"


def table_rule(d: Draft) -> str | None:
    d.rule, rule = next(((i, r) for i, r in enumerate(d.rules)
                         if _matches(r, d.label, d.verification.status, d.confidence, d.auto)),
                        (-1, PolicyRule(action=TRIAGE)))
    d.kind = rule.action
    d.template = rule.template or (d.label if d.kind == REPLY else None)
    d.security = rule.security
    d.to = d.sender
    d.to_on_file = rule.to == "on_file"
    return f"rule {d.rule}: {rule.action} for {d.label}/{d.verification.status} at {d.confidence:.2f}"


def account_on_file(d: Draft) -> str | None:
    if not (d.to_on_file or d.label in ACCOUNT_LABELS):
        return None
    # Account answers go only to the address on file of a verified user.
    if d.verification.status == VERIFIED and d.verification.email_on_file:
        d.to = d.verification.email_on_file
        return None
    if d.template in ACCOUNT_LABELS or d.kind == REPLY and d.label in ACCOUNT_LABELS:
        d.kind, d.template = (TICKET if d.kind == REPLY else d.kind), SECURITY_NEUTRAL
        return "account answer withheld: sender not verified"
    return None


def impersonation(d: Draft) -> str | None:
    if not d.verification.impersonation:
        return None
    d.security = True
    if d.kind in (REPLY, TICKET):
        d.kind = TRIAGE
    if d.template in ACCOUNT_LABELS:
        d.template = SECURITY_NEUTRAL
    return "looks like impersonation: flagged for security"


def foreign_ticket(d: Draft) -> str | None:
    # Someone else writing "about" a requester's ticket never joins it, and is never answered
    # automatically: it may be an attempt to read or steer another person's case.
    if d.foreign_ticket is None:
        return None
    d.kind, d.security = TRIAGE, True
    if d.template in ACCOUNT_LABELS:
        d.template = SECURITY_NEUTRAL
    return f"quotes ticket {d.foreign_ticket} of another requester: flagged for security"


def account_status(d: Draft) -> str | None:
    # Seed 002: accounts inactivated for cybersecurity get no self-service account help.
    if d.held is None:
        return None
    d.kind, d.security = TRIAGE, True
    if d.template:
        d.template = SECURITY_NEUTRAL
    return f"the account is {d.held}: no self-service account help, flagged for security"


def policy_drop(d: Draft) -> str | None:
    if d.kind != DROP_ACTION:
        return None
    d.template, d.to, d.final = None, None, True
    return ""


def no_automatic_answer(d: Draft) -> str | None:
    if d.screen.verdict != NO_REPLY:
        return None
    if d.kind == REPLY:
        d.kind = TICKET
    d.template = None
    return ", ".join(d.screen.reasons)


#: The decision, step by step, first to last; a step that sets ``final`` ends it.
DECIDE: tuple[Step, ...] = (
    Step("screened", screened_drop, "automatic mail is recorded and dropped, never answered"),
    Step("followup", followup_to_triage, "a follow-up goes to the analyst of its ticket"),
    Step("policy_table", table_rule, "the first [[responders.rules]] row that matches"),
    Step("account_to_address_on_file", account_on_file,
         "account answers only to a verified user, only to the address on file"),
    Step("impersonation", impersonation, "impersonation goes to security triage; account templates neutral"),
    Step("foreign_ticket", foreign_ticket,
         "a message quoting another requester's ticket number goes to security triage"),
    Step("policy_drop", policy_drop, "the table said drop"),
    Step("account_status", account_status,
         "an inactive or suspended account: security triage, and a reply (if any) that discloses nothing"),
    Step("no_automatic_answer", no_automatic_answer, "a reply to our auto-reply, or the cap: no answer"),
)


def decide(label: str, confidence: float, auto: bool | None, verification: Verification, screen: Screen,
           sender: str, rules: list[PolicyRule], followup: bool = False, held: str | None = None,
           foreign_ticket: str | None = None) -> Decision:
    """Return what to do with one message: :data:`DECIDE` run over the facts (pure)."""
    d = Draft(label, confidence, auto, verification, screen, sender, rules, followup, held=held,
              foreign_ticket=foreign_ticket)
    for step in DECIDE:
        why = step.apply(d)
        if why is not None:
            d.reasons.append(f"{step.name}: {why}" if why else step.name)
        if d.final:
            break
    if d.template is None:
        d.to = None
    return Decision(d.kind, d.template, d.to, d.security, tuple(d.reasons), d.rule,
                    followup=d.followup and d.screen.verdict != DROP)
