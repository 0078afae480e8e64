"""Which ``Authentication-Results`` count: trust anchored to our border, by position.

RFC 8601 section 5: a receiving server adds its ``Authentication-Results``
at the top, and the border MTA must remove any copy carrying its own
authserv-id that arrived with the message; section 7.1 warns that a header
below the border's ``Received:`` line is the sender's own words.  So an AR
counts only when

* its authserv-id is in ``trusted_authserv_ids``, and
* it sits *above* the topmost ``Received:`` field added ``by`` a border host
  (``border_hosts``; the SMTP/LMTP ingress is one when ``[ingress] border``).

A trusted-id AR below that line (or anywhere, when no border line exists)
was in the message on arrival: it is ignored and recorded as a forgery.
Zero usable ARs -> no authentication; two or more usable ones that disagree
-> no authentication, with the reason.  Alignment with the From domain is
DMARC's (RFC 7489 section 3.1), with the organisational domain from the
Public Suffix List.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import authres
from publicsuffixlist import PublicSuffixList

PASS = "pass"
FAIL = "fail"
NONE = "none"

_BY = re.compile(r"\bby\s+\[?([A-Za-z0-9.:_-]+)", re.IGNORECASE)


@dataclass(frozen=True)
class Trust:
    """The aligned authentication of one message, and why."""

    #: ``pass``, ``fail`` or ``none`` for the From domain.
    result: str
    #: Reason codes with their details, in the order found.
    reasons: tuple[str, ...] = ()
    #: Trusted-id ARs that were in the message on arrival (forgeries).
    forged: int = 0


@functools.lru_cache(maxsize=1)
def _psl() -> PublicSuffixList:
    return PublicSuffixList()


@functools.lru_cache(maxsize=8192)
def organisational_domain(domain: str) -> str:
    """Return the organisational domain of ``domain`` (RFC 7489 section 3.2, via the Public Suffix List)."""
    domain = domain.lower().strip(".")
    if not domain:
        return ""
    try:
        return _psl().privatesuffix(domain) or domain
    except Exception:  # noqa: BLE001 - odd labels: compare the domain as it is
        return domain


def aligned(domain: str, from_domain: str) -> bool:
    """Relaxed DMARC alignment: both domains have the same organisational domain."""
    if not domain or not from_domain:
        return False
    return organisational_domain(domain) == organisational_domain(from_domain)


def received_by(value: str) -> str:
    """Return the host a ``Received:`` value names after ``by`` (lower-case), or ``""``."""
    found = _BY.search(value.split(";", 1)[0])
    return found.group(1).lower().rstrip(".") if found else ""


@functools.lru_cache(maxsize=4096)
def parse_ar(value: str) -> tuple[str, tuple[tuple[str, str, tuple[tuple[str, str], ...]], ...]]:
    """Parse one AR value: ``(authserv_id, ((method, result, ((ptype.property, value), ...)), ...))``."""
    header = authres.AuthenticationResultsHeader.parse(f"Authentication-Results: {value}")
    results = tuple(
        ((r.method or "").lower(), (r.result or "").lower(),
         tuple((f"{p.type}.{p.name}".lower(), p.value or "") for p in r.properties))
        for r in header.results)
    return (header.authserv_id or "").lower(), results


def authserv_id(value: str) -> str:
    """Return the authserv-id of an AR value (the text before the first ``;``), lower-case."""
    words = value.split(";", 1)[0].split()
    return words[0].lower() if words else ""


def verdict(results: Sequence[tuple[str, str, tuple[tuple[str, str], ...]]], from_domain: str) -> tuple[str, str]:
    """Return ``(pass|fail|none, why)`` of one AR's results for ``from_domain``."""
    failed: list[str] = []
    for method, result, properties in results:
        props = dict(properties)
        if result == "pass":
            if method == "dmarc" and aligned(props.get("header.from", from_domain), from_domain):
                return PASS, "dmarc=pass"
            if method == "dkim" and aligned(props.get("header.d", "")
                                            or props.get("header.i", "").rpartition("@")[2], from_domain):
                return PASS, "dkim=pass aligned with From"
            if method == "spf" and aligned(props.get("smtp.mailfrom", "").rpartition("@")[2], from_domain):
                return PASS, "spf=pass aligned with From"
        if result in ("fail", "softfail", "permerror") and method in ("dmarc", "dkim", "spf"):
            failed.append(f"{method}={result}")
    if failed:
        return FAIL, ", ".join(failed)
    return NONE, "no aligned pass"


def border_line(trace: Sequence[Sequence[str]], border_hosts: Iterable[str]) -> int | None:
    """Return the position of the topmost ``Received:`` added by a border host, or None."""
    hosts = {h.lower().rstrip(".") for h in border_hosts}
    for position, (name, value) in enumerate(trace):
        if name == "received" and received_by(value) in hosts:
            return position
    return None


def authenticate(trace: Sequence[Sequence[str]], from_domain: str, trusted_ids: Iterable[str],
                 border_hosts: Iterable[str]) -> Trust:
    """Return the aligned authentication of a message from its trace fields (top first)."""
    trusted = {t.lower() for t in trusted_ids}
    line = border_line(trace, border_hosts)
    usable: list[str] = []
    forged = 0
    reasons: list[str] = []
    for position, (name, value) in enumerate(trace):
        if name != "authentication-results" or authserv_id(value) not in trusted:
            continue
        if line is not None and position < line:
            usable.append(value)
        else:
            forged += 1
    if forged:
        where = "below our border's Received line" if line is not None else "with no Received line from our border"
        reasons.append(f"forged_authentication_results: {forged} trusted-id header(s) {where}")
    if line is None:
        reasons.append("no_border_received: no Received line added by a border host")
    if not usable:
        reasons.append("no_usable_authentication_results")
        return Trust(NONE, tuple(reasons), forged)
    verdicts: list[tuple[str, str]] = []
    for value in usable:
        try:
            verdicts.append(verdict(parse_ar(value)[1], from_domain))
        except Exception as exc:  # noqa: BLE001 - authres raises several kinds on garbage
            verdicts.append((NONE, f"unparseable ({type(exc).__name__})"))
    if len({v for v, _why in verdicts}) > 1:
        reasons.append("authentication_results_disagree: " + "; ".join(f"{v} ({why})" for v, why in verdicts))
        return Trust(NONE, tuple(reasons), forged)
    result, why = verdicts[0]
    reasons.append(f"authentication_{result}: {why}")
    return Trust(result, tuple(reasons), forged)
