"""Sender verification: is the sender the user on file the message is about?

Authentication comes from :mod:`responders.trust` (only our border's
``Authentication-Results``, by position; or, optionally, a local DKIM check
of every signature).  Then the chain :data:`VERIFY` runs: small named checks
over the message and the users on file, each recording its finding as data.
A finding's effect is

* ``impersonation`` -- dressed up as somebody else (a forged trusted AR, an
  address in the display name, a lookalike domain, two senders): never
  verified, flagged for security;
* ``mismatch`` -- about somebody else: another user's UserID, an identifier
  on file only for other companies, a request on another person's behalf,
  an Account Owner asking for one of their users (seed 001: ACE Support
  resets passwords and locks only for the individual on file for that
  UserID; owners reactivate their users in the portal);
* ``note`` -- recorded, changes nothing (Reply-To is never used for replies).

Outcomes (design.md step 5): ``mismatch`` if any mismatch finding;
``unknown`` when no user is on file for the address; ``unauthenticated``
without an aligned pass, or with an impersonation finding; else ``verified``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from models.parsed import ParsedMessage
from responders.checks import Check, Finding, run, with_effect
from responders.identity import DirectoryIndex, mentions, on_behalf
from responders.lookalike import lookalike_of
from responders.trust import FAIL, PASS, Trust, authenticate

VERIFIED = "verified"
MISMATCH = "mismatch"
UNAUTHENTICATED = "unauthenticated"
UNKNOWN = "unknown"

IMPERSONATION = "impersonation"
NOTE = "note"

#: Identifier kinds from ``classifiers.identifiers.extract_identifiers`` compared with ``User.identifier``.
IDENTIFIER_KEYS = ("scac", "ior", "filer_codes", "ein", "surety_codes")


@dataclass(frozen=True)
class UserRecord:
    user_id: str
    email: str
    name: str = ""
    role: str = ""
    identifier: str = ""
    account_owner_email: str = ""
    language: str = "en"


#: What a text mentions: the UserIDs on file (as on file) and the normalised identifiers on file.
Mentions = tuple[tuple[str, ...], tuple[str, ...]]


@dataclass(frozen=True)
class Directory:
    """The users relevant to one batch (plain data; the caller queries the table) and the index of all.

    It also remembers, for the batch, what each text mentions and whom each sender concerns: the
    batch's query needs the first, and every message's verification both (worked out once each).
    """

    users: tuple[UserRecord, ...] = ()
    #: Domains of addresses on file, for the lookalike check.
    domains: frozenset[str] = frozenset()
    #: Every UserID and identifier on file; None = just ``users`` (tests, a dry run without a database).
    index: DirectoryIndex | None = None
    #: Text -> what it mentions (:meth:`mentions`), filled as texts are looked at (not copied by
    #: ``dataclasses.replace``: another index may mention other users).
    mentioned: dict[str, Mentions] = field(default_factory=dict, init=False, compare=False, repr=False)

    def full_index(self) -> DirectoryIndex:
        return self.index if self.index is not None else self._users_index

    @cached_property
    def _users_index(self) -> DirectoryIndex:
        return DirectoryIndex.build((u.user_id, u.identifier) for u in self.users)

    def mentions(self, text: str) -> Mentions:
        """Return the UserIDs (as on file) and identifiers (normalised) on file that ``text`` mentions."""
        found = self.mentioned.get(text)
        if found is None:
            users, identifiers = mentions(text, self.full_index())
            found = self.mentioned[text] = (tuple(users), tuple(identifiers))
        return found

    def concerning(self, sender: str) -> tuple[tuple[UserRecord, ...], frozenset[str], frozenset[str]]:
        """Return the records of ``sender`` (lower-case), the UserIDs (lower-case) it is Account Owner of,
        and its company (:func:`company_of`; empty for an address with neither)."""
        found = self._concerning.get(sender)
        if found is None:
            own = tuple(self.by_email(sender))
            owned = frozenset(u.user_id.lower() for u in self.by_owner(sender))
            company = company_of(own, self, sender) if own or owned else frozenset()
            found = self._concerning[sender] = (own, owned, company)
        return found

    @cached_property
    def _concerning(self) -> dict[str, tuple[tuple[UserRecord, ...], frozenset[str], frozenset[str]]]:
        return {}

    @cached_property
    def _keyed(self) -> dict[str, dict[str, list[UserRecord]]]:
        # Built once per batch: every message's lookups are dict hits, not scans of the
        # batch's users (a batch of 200 senders brings up to ~1,000 colleagues).
        keyed: dict[str, dict[str, list[UserRecord]]] = {"email": {}, "owner": {}, "identifier": {}}
        for u in self.users:
            keyed["email"].setdefault(u.email, []).append(u)
            if u.account_owner_email:
                keyed["owner"].setdefault(u.account_owner_email.lower(), []).append(u)
            if u.identifier:
                keyed["identifier"].setdefault(u.identifier.upper(), []).append(u)
        return keyed

    def user_ids(self, key: str, value: str) -> frozenset[str]:
        """Return the UserIDs (lower-case) of :meth:`by_email`, :meth:`by_owner` or :meth:`by_identifier`
        (``key``: ``email``, ``owner``, ``identifier``) of ``value``; worked out once per batch (the
        colleagues of one Account Owner are every one of their users' company)."""
        normalised = value.upper() if key == "identifier" else value.lower()
        found = self._user_ids.get((key, normalised))
        if found is None:
            found = self._user_ids[key, normalised] = frozenset(
                u.user_id.lower() for u in self._keyed[key].get(normalised, ()))
        return found

    @cached_property
    def _user_ids(self) -> dict[tuple[str, str], frozenset[str]]:
        return {}

    def by_email(self, email: str) -> list[UserRecord]:
        return list(self._keyed["email"].get(email.lower(), ()))

    def by_owner(self, owner_email: str) -> list[UserRecord]:
        """Return the users whose Account Owner is ``owner_email`` (any case)."""
        return list(self._keyed["owner"].get(owner_email.lower(), ()))

    def by_identifier(self, identifier: str) -> list[UserRecord]:
        """Return the users holding ``identifier`` (compared upper-case, as on file)."""
        return list(self._keyed["identifier"].get(identifier.upper(), ()))

    def by_user_id(self, user_id: str) -> UserRecord | None:
        key = user_id.lower()
        return next((u for u in self.users if u.user_id.lower() == key), None)


@dataclass(frozen=True)
class Verification:
    status: str
    user_id: str | None = None
    #: The address on file for ``user_id`` (only ever set when verified).
    email_on_file: str | None = None
    name: str = ""
    language: str | None = None
    reasons: tuple[str, ...] = ()
    #: Looks like someone pretending to be a user: flag the ticket for security.
    impersonation: bool = False
    #: ``pass``, ``fail`` or ``none``: the aligned authentication result used.
    authentication: str = "none"
    findings: tuple[Finding, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "user_id": self.user_id, "reasons": list(self.reasons),
                "impersonation": self.impersonation, "authentication": self.authentication,
                "findings": [f.to_dict() for f in self.findings]}


@dataclass(frozen=True)
class Subject:
    """What the checks look at: the message, its authentication, and the users it concerns."""

    msg: ParsedMessage
    trust: Trust
    directory: Directory
    index: DirectoryIndex
    sender: str
    #: The sender's own records, and the UserIDs (lower-case) of the sender's company.
    own: tuple[UserRecord, ...]
    company: frozenset[str]
    #: UserIDs the sender is Account Owner of (lower-case).
    owned: frozenset[str]
    mentioned_users: tuple[str, ...] = ()
    mentioned_identifiers: tuple[str, ...] = ()
    #: ``msg.classifier_text`` (a property that builds it anew each time it is read).
    text: str = ""


# --- the checks ------------------------------------------------------------------------------


def forged_ar(s: Subject) -> str | None:
    return f"{s.trust.forged} trusted-id Authentication-Results below our border line" if s.trust.forged else None


def display_name_address(s: Subject) -> str | None:
    name = (s.msg.sender_name or "").lower()
    return "the display name carries another address" if "@" in name and s.sender not in name else None


def reply_to_differs(s: Subject) -> str | None:
    others = [r for r in s.msg.reply_to if r.lower() != s.sender]
    return "Reply-To differs from From (never used for replies)" if others else None


def lookalike_domain(s: Subject) -> str | None:
    imitated = lookalike_of(s.sender.rpartition("@")[2], s.directory.domains)
    return f"imitates {imitated}" if imitated else None


def several_senders(s: Subject) -> str | None:
    codes = [d for d in s.msg.defects if d in ("multiple_from_headers", "multiple_from_mailboxes")]
    return codes[0] if codes else None


def other_users_userid(s: Subject) -> str | None:
    own = {u.user_id.lower() for u in s.own}
    outside = [u for u in s.mentioned_users if u.lower() not in own and u.lower() not in s.company]
    return ", ".join(outside[:5]) if outside else None


def colleague_userid(s: Subject) -> str | None:
    own = {u.user_id.lower() for u in s.own}
    inside = [u for u in s.mentioned_users if u.lower() not in own and u.lower() in s.company
              and u.lower() not in s.owned]
    return ", ".join(inside[:5]) if inside else None


def owner_for_user(s: Subject) -> str | None:
    own = {u.user_id.lower() for u in s.own}
    users = [u for u in s.mentioned_users if u.lower() in s.owned and u.lower() not in own]
    return ", ".join(users[:5]) if users else None


def other_company_identifier(s: Subject) -> str | None:
    foreign = [key for key in s.mentioned_identifiers if not (s.index.identifiers.get(key, frozenset()) & s.company)]
    # Never echo the identifier itself (an IOR may be an SSN): its kind is enough.
    return f"{len(foreign)} identifier(s) on file only for other companies" if foreign else None


def request_for_another(s: Subject) -> str | None:
    phrase = on_behalf(s.text or s.msg.classifier_text)
    return f"asks on another person's behalf ({phrase[:40]!r})" if phrase else None


#: The verification chain, in order.
VERIFY: tuple[Check[Subject], ...] = (
    Check("forged_authentication_results", IMPERSONATION, forged_ar,
          "a trusted-id AR below our border's Received line came with the message"),
    Check("display_name_address", IMPERSONATION, display_name_address,
          "an address in the display name other than the sender's"),
    Check("lookalike_domain", IMPERSONATION, lookalike_domain,
          "the From domain imitates a domain on file (punycode decoded, Unicode confusables)"),
    Check("several_senders", IMPERSONATION, several_senders, "two From headers or mailboxes"),
    Check("reply_to_differs", NOTE, reply_to_differs, "Reply-To is recorded, never used"),
    Check("other_users_userid", MISMATCH, other_users_userid,
          "a UserID on file for someone outside the sender's company"),
    Check("colleague_userid", MISMATCH, colleague_userid, "a colleague's UserID: only the individual gets help"),
    Check("owner_for_user", MISMATCH, owner_for_user,
          "an Account Owner asking for their user (owners reactivate users in the portal)"),
    Check("other_company_identifier", MISMATCH, other_company_identifier,
          "an identifier (IOR, EIN, filer code, SCAC, surety) on file only for other companies"),
    Check("request_for_another", MISMATCH, request_for_another, "a request on another person's behalf"),
)


# --- the outcome --------------------------------------------------------------------------------


def company_of(own: Iterable[UserRecord], directory: Directory, sender: str) -> frozenset[str]:
    """Return the UserIDs (lower-case) sharing an Account Owner or identifier with the sender's records."""
    own = list(own)
    owners = {u.account_owner_email.lower() for u in own if u.account_owner_email} | {sender}
    identifiers = {u.identifier.upper() for u in own if u.identifier}
    company = set(directory.user_ids("email", sender))
    for owner in owners:
        company |= directory.user_ids("owner", owner)
    for identifier in identifiers:
        company |= directory.user_ids("identifier", identifier)
    return frozenset(company)


def subject_of(msg: ParsedMessage, directory: Directory, trust: Trust) -> Subject:
    """Return what the checks need about ``msg`` (one pass over its text and the directory)."""
    sender = msg.sender.lower()
    own, owned, company = directory.concerning(sender)
    text = msg.classifier_text
    users, identifiers = directory.mentions(text)
    return Subject(msg=msg, trust=trust, directory=directory, index=directory.full_index(), sender=sender,
                   own=own, company=company, owned=owned, mentioned_users=users, mentioned_identifiers=identifiers,
                   text=text)


def local_trust(dkim_ok: bool | None, trust: Trust) -> Trust:
    """Return ``trust``, or the local DKIM result when no border AR gave a verdict."""
    if trust.result != "none" or dkim_ok is None:
        return trust
    if dkim_ok:
        return Trust(PASS, trust.reasons + ("dkim_local_pass: a DKIM signature aligned with From verified",),
                     trust.forged)
    return Trust(FAIL, trust.reasons + ("dkim_local_fail: no aligned DKIM signature verified",), trust.forged)


def verify(msg: ParsedMessage, directory: Directory, trusted_authserv_ids: Iterable[str],
           border_hosts: Iterable[str] = (), dkim_ok: bool | None = None) -> Verification:
    """Return the verification outcome for ``msg``'s sender, with every finding."""
    trust = local_trust(dkim_ok, authenticate(msg.trace, msg.sender.rpartition("@")[2],
                                              trusted_authserv_ids, border_hosts))
    s = subject_of(msg, directory, trust)
    findings = run(VERIFY, s)
    reasons = list(trust.reasons) + [str(f) for f in findings]
    impersonation = bool(with_effect(findings, IMPERSONATION)) or trust.result == FAIL
    if with_effect(findings, MISMATCH):
        impersonation = impersonation or any(f.check == "other_users_userid" for f in findings)
        return Verification(MISMATCH, None, None, "", None, tuple(reasons), impersonation, trust.result, findings)
    if not s.own:
        return Verification(UNKNOWN, None, None, "", None, tuple(reasons + ["no user on file for this address"]),
                            impersonation, trust.result, findings)
    if trust.result != PASS:
        return Verification(UNAUTHENTICATED, None, None, "", None,
                            tuple(reasons + ["address on file but not authenticated"]), impersonation,
                            trust.result, findings)
    if impersonation:
        return Verification(UNAUTHENTICATED, None, None, "", None,
                            tuple(reasons + ["authenticated, but the message imitates another identity"]),
                            True, trust.result, findings)
    mentioned = {u.lower() for u in s.mentioned_users}
    user = next((u for u in s.own if u.user_id.lower() in mentioned), s.own[0])
    return Verification(VERIFIED, user.user_id, user.email, user.name, user.language or None,
                        tuple(reasons + ["authenticated and on file"]), False, trust.result, findings)
