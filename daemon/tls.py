"""Client TLS contexts for every outgoing connection (IMAP, SMTP relay, CSMS fan-out)."""

from __future__ import annotations

import ssl


def tls_context(verify: bool = True, ca_file: str = "") -> ssl.SSLContext:
    """A client TLS context checking certificates against the system's CAs (or ``ca_file``);
    ``verify=False`` only for loopback tests and private relays."""
    context = ssl.create_default_context(cafile=ca_file or None)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
