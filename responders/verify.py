"""Sender verification: is the sender the user on file they claim to be?

Only the ``Authentication-Results`` header (RFC 8601) added by our own
receiving server counts.  Our server adds its header on top of the ones
already there (RFC 8601 section 5: trace headers are prepended), so only the
*topmost* ``Authentication-Results`` is considered, and only when its
``authserv-id`` is in ``trusted_authserv_ids``; every copy below it, even one
that names our authserv-id, was written by someone else and is ignored.
Optionally (``verify_dkim``) the daemon checks DKIM itself with dkimpy when no
trusted header exists, and hands the result in.

Authentication passes only when it is aligned with the ``From`` domain (as in
DMARC, RFC 7489 section 3.1): ``dmarc=pass``, or ``dkim=pass`` with ``header.d``
aligned, or ``spf=pass`` with ``smtp.mailfrom`` aligned.

Outcomes (design.md step 5):

* ``verified`` -- authenticated, and the address is on file for the user concerned;
* ``mismatch`` -- a UserID or identifier quoted in the body belongs to another
  user (or the address is on file, but for another user);
* ``unauthenticated`` -- on file, but DMARC/SPF/DKIM failed or are absent;
* ``unknown`` -- no user on file for the address.

Display names, ``Reply-To`` and lookalike domains never verify anyone; they
are recorded as reasons and raise the impersonation flag.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import authres

from models.parsed import ParsedMessage

VERIFIED = "verified"
MISMATCH = "mismatch"
UNAUTHENTICATED = "unauthenticated"
UNKNOWN = "unknown"

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


@dataclass(frozen=True)
class Directory:
    """The users relevant to one message (plain data; the caller queries the table)."""

    users: tuple[UserRecord, ...] = ()
    #: Domains of addresses on file, for the lookalike check.
    domains: frozenset[str] = frozenset()

    def by_email(self, email: str) -> list[UserRecord]:
        email = email.lower()
        return [u for u in self.users if u.email == email]

    def by_user_id(self, user_id: str) -> UserRecord | None:
        key = user_id.lower()
        return next((u for u in self.users if u.user_id.lower() == key), None)

    def by_identifier(self, value: str) -> list[UserRecord]:
        key = value.upper()
        return [u for u in self.users if u.identifier and u.identifier.upper() == key]


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

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "user_id": self.user_id, "reasons": list(self.reasons),
                "impersonation": self.impersonation, "authentication": self.authentication}


_USERID_SHAPED = re.compile(r"(?<![\w@.-])([A-Za-z][A-Za-z0-9_-]{1,28}[0-9][A-Za-z0-9_-]*)(?![\w@-])")


def with_userid_candidates(identifiers: dict[str, Any] | None, text: str) -> dict[str, Any]:
    """Return ``identifiers`` plus UserID-shaped tokens of ``text`` (letters then digits, e.g. ``JSMITH01``).

    The classifier takes a UserID only after words like "UserID is"; a bare
    ``ALICE01`` in "please unlock ALICE01" must still be checked against the
    users on file, or quoting someone else's UserID would go unnoticed.
    """
    merged = dict(identifiers or {})
    found = list(merged.get("user_ids", []) or [])
    for token in _USERID_SHAPED.findall(text[:5000]):
        if token not in found and len(found) < 50:
            found.append(token)
    if found:
        merged["user_ids"] = found
    return merged


def quoted_identifiers(identifiers: dict[str, Any] | None) -> tuple[list[str], list[str]]:
    """Return ``(user_ids, other identifiers)`` from the classifier's identifier record."""
    identifiers = identifiers or {}
    user_ids = [str(v) for v in identifiers.get("user_ids", []) or []]
    others: list[str] = []
    for key in IDENTIFIER_KEYS:
        others.extend(str(v) for v in identifiers.get(key, []) or [])
    return user_ids, others


def _aligned(domain: str, from_domain: str) -> bool:
    # Relaxed alignment: the same domain, or one a subdomain of the other's organisational domain.
    domain, from_domain = domain.lower().strip("."), from_domain.lower().strip(".")
    if not domain or not from_domain:
        return False
    return domain == from_domain or from_domain.endswith("." + domain) or domain.endswith("." + from_domain)


@functools.lru_cache(maxsize=4096)
def _parse_header(value: str) -> tuple[str, tuple[tuple[str, str, tuple[tuple[str, str], ...]], ...]]:
    """Parse one Authentication-Results value with authres; memoised (the same sender's headers repeat).

    Returns ``(authserv_id, ((method, result, ((ptype.property, value), ...)), ...))`` as plain tuples.
    """
    header = authres.AuthenticationResultsHeader.parse(f"Authentication-Results: {value}")
    results = tuple(
        ((r.method or "").lower(), (r.result or "").lower(),
         tuple((f"{p.type}.{p.name}".lower(), p.value or "") for p in r.properties))
        for r in header.results)
    return (header.authserv_id or ""), results


def trusted_results(msg: ParsedMessage, trusted: Iterable[str]) -> tuple[list[Any] | None, list[str]]:
    """Return the results of the one header that counts (or None), and why."""
    values = msg.headers.get("authentication-results", [])
    if not values:
        return None, ["no Authentication-Results header"]
    trusted_ids = {t.lower() for t in trusted}
    reasons: list[str] = []
    try:
        authserv_id, results = _parse_header(values[0])
    except Exception as exc:  # noqa: BLE001 - authres raises several kinds on garbage
        return None, [f"topmost Authentication-Results unparseable: {type(exc).__name__}"]
    if authserv_id.lower() not in trusted_ids:
        reasons.append(f"topmost Authentication-Results is from untrusted authserv-id {authserv_id!r}")
        return None, reasons
    if len(values) > 1:
        ignored = sum(1 for v in values[1:] if any(t in v.lower() for t in trusted_ids))
        if ignored:
            reasons.append(f"ignored {ignored} lower Authentication-Results claiming a trusted authserv-id")
    return list(results), reasons


def authentication(msg: ParsedMessage, trusted: Iterable[str], dkim_ok: bool | None = None) -> tuple[str, list[str]]:
    """Return ``pass``/``fail``/``none`` for the From domain, and the reasons."""
    from_domain = msg.sender.rpartition("@")[2]
    results, reasons = trusted_results(msg, trusted)
    if results is None:
        if dkim_ok is True:
            return "pass", reasons + ["DKIM signature verified locally for the From domain"]
        if dkim_ok is False:
            return "fail", reasons + ["local DKIM check failed"]
        return "none", reasons
    failed = False
    for method, result, properties in results:
        props = dict(properties)
        if result == "pass":
            if method == "dmarc" and _aligned(props.get("header.from", from_domain), from_domain):
                return "pass", reasons + ["dmarc=pass"]
            if method == "dkim" and _aligned(props.get("header.d", "") or props.get("header.i", "").lstrip("@").rpartition("@")[2], from_domain):
                return "pass", reasons + ["dkim=pass aligned with From"]
            if method == "spf" and _aligned(props.get("smtp.mailfrom", "").rpartition("@")[2], from_domain):
                return "pass", reasons + ["spf=pass aligned with From"]
        if result in ("fail", "softfail", "permerror") and method in ("dmarc", "dkim", "spf"):
            failed = True
            reasons.append(f"{method}={result}")
    if failed:
        return "fail", reasons
    return "none", reasons + ["no aligned pass in the trusted Authentication-Results"]


_CONFUSABLE = str.maketrans({"0": "o", "1": "l", "3": "e", "5": "s", "@": "a", "|": "l", "i": "l"})


def _skeleton(domain: str) -> str:
    text = unicodedata.normalize("NFKD", domain.lower())
    text = "".join(c for c in text if not unicodedata.combining(c))
    return text.replace("rn", "m").replace("vv", "w").translate(_CONFUSABLE).replace("-", "")


def _distance(a: str, b: str) -> int:
    if abs(len(a) - len(b)) > 2:
        return 3
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def lookalike_of(domain: str, known: Iterable[str]) -> str | None:
    """Return a domain on file that ``domain`` imitates (not equal to it), or None."""
    domain = domain.lower()
    if not domain:
        return None
    for good in known:
        if good == domain:
            return None
    skel = _skeleton(domain.encode("ascii", "ignore").decode() if domain.startswith("xn--") else domain)
    for good in known:
        if len(good) < 6:
            continue
        if _skeleton(good) == skel or _distance(good, domain) <= 1:
            return good
    return None


def verify(msg: ParsedMessage, identifiers: dict[str, Any] | None, directory: Directory,
           trusted_authserv_ids: Iterable[str], dkim_ok: bool | None = None) -> Verification:
    """Return the verification outcome for ``msg``'s sender, with every reason."""
    sender = msg.sender.lower()
    reasons: list[str] = []
    impersonation = False
    auth, auth_reasons = authentication(msg, trusted_authserv_ids, dkim_ok)
    reasons.extend(auth_reasons)

    # Display names and Reply-To never verify anyone; an address hidden in a
    # display name that differs from the real one is a classic spoof.
    name = msg.sender_name or ""
    if "@" in name and sender not in name.lower():
        reasons.append("display name carries another address")
        impersonation = True
    if msg.reply_to and any(r.lower() != sender for r in msg.reply_to):
        reasons.append("Reply-To differs from From (never used for replies)")
    domain = sender.rpartition("@")[2]
    imitated = lookalike_of(domain, directory.domains)
    if imitated:
        reasons.append(f"lookalike of a domain on file ({imitated})")
        impersonation = True

    own = directory.by_email(sender)
    own_ids = {u.user_id.lower() for u in own}
    owned = {u.user_id.lower() for u in directory.users if u.account_owner_email.lower() == sender}
    own_identifiers = {u.identifier.upper() for u in own if u.identifier}
    user_ids, others = quoted_identifiers(identifiers)
    foreign: list[str] = []
    chosen: UserRecord | None = None
    for uid in user_ids:
        user = directory.by_user_id(uid)
        if user is None:
            continue
        if user.user_id.lower() in own_ids:
            chosen = chosen or user
        elif user.user_id.lower() in owned:
            reasons.append("quoted UserID belongs to a user this sender is Account Owner of")
        else:
            foreign.append("a quoted UserID belongs to another user")
    for value in others:
        holders = directory.by_identifier(value)
        if not holders or value.upper() in own_identifiers:
            continue
        if all(u.account_owner_email.lower() == sender for u in holders):
            continue
        foreign.append("a quoted identifier belongs to another user")

    if foreign:
        return Verification(MISMATCH, None, None, "", None, tuple(reasons + sorted(set(foreign))),
                            impersonation=True, authentication=auth)
    if not own:
        return Verification(UNKNOWN, None, None, "", None, tuple(reasons + ["no user on file for this address"]),
                            impersonation=impersonation, authentication=auth)
    if auth != "pass":
        if auth == "fail":
            impersonation = True
        return Verification(UNAUTHENTICATED, None, None, "", None,
                            tuple(reasons + ["address on file but not authenticated"]),
                            impersonation=impersonation, authentication=auth)
    if impersonation:
        # Authenticated but dressed up as someone else: never verified.
        return Verification(UNAUTHENTICATED, None, None, "", None,
                            tuple(reasons + ["authenticated, but the message imitates another identity"]),
                            impersonation=True, authentication=auth)
    user = chosen or own[0]
    return Verification(VERIFIED, user.user_id, user.email, user.name, user.language or None,
                        tuple(reasons + ["authenticated and on file"]), impersonation=False, authentication=auth)
