"""The list headers of a notice: List-Id and List-Unsubscribe (RFC 2369),
List-Unsubscribe-Post (RFC 8058), Precedence: bulk and Auto-Submitted
(RFC 3834), in the manner of Mailman's ``handlers/rfc_2369.py``.

The fixed headers are built once per notice; the per-recipient ones (To,
Message-ID, List-Unsubscribe with that recipient's signed token) are plain
string functions so the fan-out can build them in microseconds.
"""

from __future__ import annotations

import re
from urllib.parse import quote

# A dot-atom addr-spec (RFC 5322 3.4.1) in ASCII: what a subscriber's address
# must be to go into To: and RCPT TO: verbatim.  Anything else (CR, LF, spaces,
# angle brackets, commas, quotes, non-ASCII) could smuggle a header or a
# second recipient, so it is refused rather than escaped.
_PLAIN_ADDRESS = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
                            r"@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+")


_URL_SAFE = re.compile(r"[A-Za-z0-9_.~-]*")


def is_plain_address(address: str) -> bool:
    """Whether ``address`` is a plain ASCII ``local@domain`` safe to put in a header and an envelope."""
    return len(address) <= 254 and _PLAIN_ADDRESS.fullmatch(address) is not None


def list_id(domain: str) -> str:
    """RFC 2919 List-Id: a stable identifier of the CSMS list."""
    return f"CSMS notices <csms.{domain}>"


def unsubscribe_url(base_url: str, token: str) -> str:
    """The https URL one-click unsubscribe POSTs to (RFC 8058 section 3.1)."""
    return f"{base_url.rstrip('/')}/u/{token}"


def manage_url(base_url: str, token: str) -> str:
    return f"{base_url.rstrip('/')}/u/{token}?manage=1"


def list_unsubscribe(request_address: str, base_url: str, token: str) -> str:
    """RFC 2369 List-Unsubscribe with both a mailto and an https URI.

    RFC 8058 requires the https URI to identify the recipient on its own (no
    cookies, no login): the signed token does.  The mailto carries the same
    token so the request address can honour it without a confirmation round.
    """
    # A token is URL-safe as it is (base64url and a dot): quoting it would only cost time.
    subject = "unsubscribe%20" + (token if _URL_SAFE.fullmatch(token) else quote(token))
    mailto = f"mailto:{request_address}?subject={subject}"
    return f"<{mailto}>,\r\n <{unsubscribe_url(base_url, token)}>"


#: RFC 8058 section 3.1: the exact value that says "POST this to unsubscribe".
LIST_UNSUBSCRIBE_POST = "List-Unsubscribe=One-Click"


def fixed_headers(*, domain: str, number: int | None, language: str) -> list[tuple[str, str]]:
    """The headers every copy of a notice carries, besides From/Subject/Date."""
    headers = [
        ("List-Id", list_id(domain)),
        ("List-Unsubscribe-Post", LIST_UNSUBSCRIBE_POST),
        # RFC 3834: automatic mail; responders must not answer it.
        ("Auto-Submitted", "auto-generated"),
        ("Precedence", "bulk"),
        ("Content-Language", language),
    ]
    if number is not None:
        headers.append(("X-CSMS-Number", str(number)))
    return headers
