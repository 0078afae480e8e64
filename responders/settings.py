"""The ``[responders]`` section of the configuration: verification, screening
limits, the Message-ID secret, ticket clocks and the reply policy table.

The policy is an ordered list of rules (``[[responders.rules]]``); the first
rule whose label, verification outcome and confidence match decides.  The
defaults below are what a careful Tier II desk would choose: account-lock and
password answers only to ``verified`` senders and only to the address on
file; everyone else gets a reply that discloses nothing plus a ticket or a
triage item.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from classifiers.labels import LABELS

#: What a policy rule may do with a message.
ACTIONS = ("reply", "ticket", "triage", "drop")
#: What a sender's verification may come out as (see :mod:`responders.verify`).
VERIFICATIONS = ("verified", "mismatch", "unauthenticated", "unknown")

ACCOUNT_LABELS = ("account_locked", "password_reset")
#: Labels whose answer is general guidance from the seeds: safe for anyone.
INFO_LABELS = (
    "account_setup", "account_management", "system_status", "third_party_software",
    "export_aesdirect", "pga_access", "entry_summary", "cargo_release", "ace_reports",
    "ach_refund", "notify_party", "csms_subscription",
)


@dataclass(frozen=True)
class PolicyRule:
    """One row of the policy table.

    ``labels`` and ``verification`` list what the rule matches (``"*"`` =
    anything); ``min_confidence`` is the lowest confidence it accepts (and
    ``require_auto`` asks the classifier's own per-label threshold too).
    ``action`` is ``reply`` (answer from ``template``), ``ticket`` (open a
    ticket; ``template`` is the acknowledgement, empty = none), ``triage``
    (a ticket plus an analyst queue item) or ``drop`` (recorded, nothing sent).
    ``security`` flags the ticket/triage item for the security analysts.
    ``to`` is ``sender`` or ``on_file`` (the address on file for the verified user).
    """

    action: str
    labels: list[str] = field(default_factory=lambda: ["*"])
    verification: list[str] = field(default_factory=lambda: ["*"])
    min_confidence: float = 0.0
    require_auto: bool = False
    template: str = ""
    security: bool = False
    to: str = "sender"

    def __post_init__(self) -> None:
        # Checked when the config loads: a typo here would otherwise match nothing, silently.
        if self.action not in ACTIONS:
            raise ValueError(f"action: expected one of {', '.join(map(repr, ACTIONS))}, got {self.action!r}")
        if self.to not in ("sender", "on_file"):
            raise ValueError(f"to: expected 'sender' or 'on_file', got {self.to!r}")
        unknown = [x for x in self.labels if x != "*" and x not in LABELS]
        if unknown:
            raise ValueError(f"labels: unknown label(s) {', '.join(map(repr, unknown))}")
        unknown = [x for x in self.verification if x != "*" and x not in VERIFICATIONS]
        if unknown:
            raise ValueError(f"verification: unknown outcome(s) {', '.join(map(repr, unknown))}; "
                             f"expected any of {', '.join(VERIFICATIONS)} or '*'")
        if not 0.0 <= self.min_confidence <= 1.0:
            raise ValueError(f"min_confidence: expected a number from 0 to 1, got {self.min_confidence}")
        if self.to == "on_file" and not set(self.verification) <= {"verified"}:
            raise ValueError("to = \"on_file\" needs verification = [\"verified\"]: only a verified "
                             "sender has an address on file")


def default_rules() -> list[PolicyRule]:
    """Return the shipped policy table (mirrored, commented, in ``config.toml``)."""
    acct = list(ACCOUNT_LABELS)
    return [
        # Account answers only to verified senders, only to the address on file.
        PolicyRule(action="reply", labels=acct, verification=["verified"], min_confidence=0.6,
                   template="", to="on_file"),
        # A verified sender but an unsure model: a person looks first.
        PolicyRule(action="triage", labels=acct, verification=["verified"], template="ticket_ack",
                   to="on_file"),
        # Someone else's UserID, or an address on file for another user: impersonation?
        PolicyRule(action="triage", labels=acct, verification=["mismatch"], template="security_neutral",
                   security=True),
        # Unauthenticated or unknown: a reply that says nothing about any account, and a ticket.
        PolicyRule(action="ticket", labels=acct, template="security_neutral"),
        # General guidance from the seeds: safe for anyone, when the model is sure.
        PolicyRule(action="reply", labels=list(INFO_LABELS), min_confidence=0.6, require_auto=True),
        PolicyRule(action="triage", labels=list(INFO_LABELS), template="ticket_ack"),
        # Thanks, spam, the unrelated: a person decides; no acknowledgement (no backscatter).
        PolicyRule(action="triage", labels=["other"]),
        PolicyRule(action="triage", template="ticket_ack"),
    ]


@dataclass(frozen=True)
class ResponderConfig:
    #: ``authserv-id``s of our own receiving servers; only their Authentication-Results count.
    trusted_authserv_ids: list[str] = field(default_factory=lambda: ["mx.ace-support.example"])
    #: Our border MTAs: an Authentication-Results counts only above the topmost ``Received:`` line
    #: one of these added (``by`` host).  Below it, a trusted-id header is a forgery (RFC 8601 section 5).
    border_hosts: list[str] = field(default_factory=lambda: ["mx.ace-support.example"])
    #: Verify DKIM ourselves (dkimpy, every signature) when no usable Authentication-Results exists.
    verify_dkim: bool = False
    #: Per-recipient cap on automatic answers: at most ``autoreply_max`` in ``autoreply_window`` seconds.
    autoreply_max: int = 5
    autoreply_window: float = 3600.0
    #: Secret for signing our Message-IDs (HMAC): an environment variable or a file; when
    #: neither is set, a per-install secret is generated in ``[daemon] state_dir``.
    secret_env: str = ""
    secret_file: str = ""
    #: Ticket numbers look like ``ACE-2026-000123``.
    ticket_prefix: str = "ACE"
    #: The desk's target: first response and resolution within this many hours.
    target_hours: float = 4.0
    #: Display name on replies.
    from_name: str = "ACE Help Desk"
    #: Folder of reply templates; empty = the templates shipped in ``responders/templates``.
    templates_dir: str = ""
    #: The policy table, first match wins (see :class:`PolicyRule`).
    rules: list[PolicyRule] = field(default_factory=default_rules)
