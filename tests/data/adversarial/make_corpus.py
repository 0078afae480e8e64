"""Write the adversarial corpus: one ``.eml`` per attack, and ``expected.csv``.

Written from the attack classes of issue 9, independently of the project's
other test messages.  Run ``python tests/data/adversarial/make_corpus.py``
to regenerate (the output is deterministic); ``tests/test_adversarial.py``
runs every file through ``acedesk triage --json`` and a sample through a
running daemon, and checks each expectation.

Expectation columns (empty = anything):

* ``verification`` -- an outcome, ``a|b`` for any of them, ``!x`` for "not x";
* ``impersonation`` -- ``true`` / ``false``;
* ``action`` -- a kind, ``a|b``, or ``!x``;
* ``account_answer`` -- ``no``: no account template (password/lock steps) goes out;
* ``screen`` -- ``set`` (exempt from replies) or ``null``;
* ``reply_to`` -- ``none`` (no reply), an address every reply must go to, or ``!address``;
* ``reply_not_contains`` -- text no reply subject or body may contain.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import sys
from pathlib import Path

import idna

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parents[2]))
from responders.msgid import make_message_id  # noqa: E402 - the repository's own, for our Message-ID shape
BORDER = "mx.ace-support.example"
DESK = "helpdesk@ace-support.example"
DATE = "Thu, 03 Dec 2026 09:00:00 +0000"

ALICE = "alice@broker.example"          # ALICE01, broker, filer code K4M, owner owner@broker.example
OWNER = "owner@broker.example"          # OWNER01, Account Owner of ALICE01 and jsmith
JSMITH = "jsmith@broker.example"        # jsmith: a UserID without digits
BOB = "bob@carrier.example"             # BOB02, carrier, SCAC BOBC
CARLA = "carla@importadora.example"     # CARLA03, importer, SSN-shaped IOR 123-45-6789, owner of mgarcia
MGARCIA = "mgarcia@importadora.example"  # mgarcia: Carla's colleague, the same IOR
DAVE = "dave@exporter.example"          # DAVE04, exporter, EIN 12-3456789
SURE = "sure@surety.example"            # SURE05, surety code 999
MALLORY = "mallory@evil.example"        # nobody on file

USERS = """user_id,email,name,role,identifier,account_owner_email,language
OWNER01,owner@broker.example,Olga Owner,broker,K4M,owner@broker.example,en
ALICE01,alice@broker.example,Alice Broker,broker,K4M,owner@broker.example,en
jsmith,jsmith@broker.example,John Smith,broker,K4M,owner@broker.example,en
BOB02,bob@carrier.example,Bob Carrier,carrier,BOBC,bob@carrier.example,en
CARLA03,carla@importadora.example,Carla Importadora,importer,123-45-6789,carla@importadora.example,es
mgarcia,mgarcia@importadora.example,Maria Garcia,importer,123-45-6789,carla@importadora.example,es
DAVE04,dave@exporter.example,Dave Exporter,exporter,12-3456789,dave@exporter.example,en
SURE05,sure@surety.example,Sue Surety,surety,999,sure@surety.example,en
"""

PASSWORD = "I forgot my ACE Portal password and cannot log in. Please help me reset my password."
LOCKED = "My ACE Portal account is locked after too many attempts. Please unlock my account."


def received(domain: str, by: str = BORDER) -> str:
    return (f"Received: from mail.{domain} (mail.{domain} [192.0.2.10])\r\n\tby {by} (Postfix) with ESMTPS "
            f"id 4R1x2; {DATE}\r\n")


def ar(domain: str, result: str = "pass", authserv: str = BORDER, mailfrom: str | None = None) -> str:
    mailfrom = mailfrom or f"bounce@{domain}"
    return (f"Authentication-Results: {authserv};\r\n\tdkim={result} header.d={domain} header.s=s1;\r\n"
            f"\tspf={result} smtp.mailfrom={mailfrom};\r\n\tdmarc={result} header.from={domain}\r\n")


def message(sender: str = ALICE, *, display: str | None = None, subject: str = "Forgot my password",
            body: str = PASSWORD, top: str | None = None, below: str = "", border: bool = True,
            headers: str = "", from_line: str | None = None, content_type: str = "text/plain; charset=utf-8",
            msgid: str | None = None, raw_body: bytes | None = None, to: str = DESK) -> bytes:
    """Return one message as our border left it.

    ``top`` goes above the border's Received line (default: a passing AR for
    the sender's domain, as our MX adds it); ``below`` comes with the message.
    """
    domain = sender.rpartition("@")[2]
    if top is None:
        top = ar(domain)
    head = top + (received(domain) if border else "") + below
    head += f"Received: from [10.1.2.3] by mail.{domain}; {DATE}\r\n"
    if from_line is None:
        from_line = f"From: {display} <{sender}>" if display is not None else f"From: {sender}"
    head += (f"{from_line}\r\nTo: {to}\r\nSubject: {subject}\r\nDate: {DATE}\r\n"
             f"Message-ID: {msgid or '<' + digest(sender, subject, body, top, below, headers, str(from_line), content_type, repr(raw_body)[:5000], to[:200], str(border)) + '@' + domain + '>'}"
             f"\r\n{headers}MIME-Version: 1.0\r\nContent-Type: {content_type}\r\n\r\n")
    return head.encode("utf-8") + (raw_body if raw_body is not None else (body + "\r\n").encode("utf-8"))


def digest(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode("utf-8", "surrogatepass")).hexdigest()[:24]


CASES: list[tuple[str, str, bytes, dict[str, str]]] = []


def case(cls: str, slug: str, raw: bytes, **expect: str) -> None:
    CASES.append((cls, slug, raw, expect))


NOT_ACCOUNT = dict(account_answer="no")


def spoofing() -> None:
    c = "spoofing"
    # Authentication-Results that must not count.
    case(c, "no-ar-at-all", message(top=""), verification="unauthenticated", **NOT_ACCOUNT)
    case(c, "forged-ar-below-border", message(top="", below=ar("broker.example")),
         verification="unauthenticated", impersonation="true", **NOT_ACCOUNT)
    case(c, "forged-ar-no-border-line", message(top=ar("broker.example"), border=False),
         verification="unauthenticated", impersonation="true", **NOT_ACCOUNT)
    case(c, "forged-ar-only-border-line-missing-and-second-path", message(top="", border=False,
         below=ar("broker.example") + ar("broker.example")), verification="unauthenticated", **NOT_ACCOUNT)
    case(c, "two-trusted-ars-disagree", message(top=ar("broker.example") + ar("broker.example", "fail")),
         verification="unauthenticated", **NOT_ACCOUNT)
    case(c, "two-trusted-ars-disagree-reversed", message(top=ar("broker.example", "fail") + ar("broker.example")),
         verification="unauthenticated", **NOT_ACCOUNT)
    case(c, "untrusted-authserv-above-border", message(top=ar("broker.example", authserv="mx.evil.example")),
         verification="unauthenticated", **NOT_ACCOUNT)
    case(c, "authserv-suffix-trick", message(top=ar("broker.example", authserv=BORDER + ".evil.example")),
         verification="unauthenticated", **NOT_ACCOUNT)
    case(c, "authserv-prefix-trick", message(top=ar("broker.example", authserv="evil-" + BORDER)),
         verification="unauthenticated", **NOT_ACCOUNT)
    case(c, "ours-fail-forged-pass-below", message(top=ar("broker.example", "fail"), below=ar("broker.example")),
         verification="unauthenticated", impersonation="true", **NOT_ACCOUNT)
    case(c, "ours-none-forged-pass-below", message(top=f"Authentication-Results: {BORDER}; none\r\n",
                                                   below=ar("broker.example")),
         verification="unauthenticated", impersonation="true", **NOT_ACCOUNT)
    case(c, "dkim-pass-unaligned-domain", message(
        top=f"Authentication-Results: {BORDER}; dkim=pass header.d=evil.example; spf=none; dmarc=none\r\n"),
         verification="unauthenticated", **NOT_ACCOUNT)
    case(c, "spf-pass-unaligned-mailfrom", message(
        top=f"Authentication-Results: {BORDER}; spf=pass smtp.mailfrom=x@evil.example; dkim=none\r\n"),
         verification="unauthenticated", **NOT_ACCOUNT)
    case(c, "dmarc-pass-for-other-header-from", message(
        top=f"Authentication-Results: {BORDER}; dmarc=pass header.from=evil.example\r\n"),
         verification="unauthenticated", **NOT_ACCOUNT)
    case(c, "dkim-pass-public-suffix-only", message(
        sender="alice@broker.co.uk", top=f"Authentication-Results: {BORDER}; dkim=pass header.d=co.uk\r\n"),
         verification="!verified", **NOT_ACCOUNT)
    case(c, "forged-border-received-below-real", message(
        top="", below=ar("broker.example") + received("broker.example")),
         verification="unauthenticated", impersonation="true", **NOT_ACCOUNT)
    case(c, "arc-ar-with-trusted-id", message(top="", below=f"ARC-Authentication-Results: i=1; {BORDER}; "
                                                            "dmarc=pass header.from=broker.example\r\n"),
         verification="unauthenticated", **NOT_ACCOUNT)
    case(c, "ar-in-body-only", message(top="", body=PASSWORD + "\r\n\r\nAuthentication-Results: "
                                       f"{BORDER}; dmarc=pass header.from=broker.example"),
         verification="unauthenticated", **NOT_ACCOUNT)
    # Found by tests/test_fuzz_trust.py: an AR with an empty authserv-id crashed verification.
    case(c, "fuzz-empty-authserv-id", message(top="Authentication-Results: ; dmarc=pass header.from=broker.example\r\n"),
         verification="unauthenticated", **NOT_ACCOUNT)
    case(c, "garbage-ar-above-border", message(top=f"Authentication-Results: {BORDER}; ;;;; ===\r\n"),
         verification="unauthenticated", **NOT_ACCOUNT)
    # Display names, Reply-To, two senders.
    case(c, "display-name-carries-victim-address", message(sender=MALLORY, display=f'"{ALICE}"'),
         verification="!verified", impersonation="true", reply_to=f"!{ALICE}", **NOT_ACCOUNT)
    case(c, "display-name-victim-but-on-file-sender", message(display=f'"{BOB}"'),
         verification="!verified", impersonation="true", **NOT_ACCOUNT)
    case(c, "encoded-display-name-address", message(
        sender=MALLORY, from_line=f"From: =?utf-8?b?{base64.b64encode(ALICE.encode()).decode()}?= <{MALLORY}>"),
         verification="!verified", impersonation="true", reply_to=f"!{ALICE}", **NOT_ACCOUNT)
    case(c, "reply-to-attacker", message(headers=f"Reply-To: {MALLORY}\r\n"), reply_to=f"!{MALLORY}")
    case(c, "reply-to-victim-from-attacker", message(sender=MALLORY, headers=f"Reply-To: {ALICE}\r\n"),
         verification="unknown", reply_to=f"!{ALICE}", **NOT_ACCOUNT)
    case(c, "two-from-mailboxes", message(from_line=f"From: {ALICE}, {MALLORY}"),
         verification="!verified", impersonation="true", **NOT_ACCOUNT)
    case(c, "two-from-headers", message(headers=f"From: {MALLORY}\r\n"),
         verification="!verified", impersonation="true", **NOT_ACCOUNT)
    case(c, "from-address-in-comment", message(sender=MALLORY, from_line=f"From: ({ALICE}) <{MALLORY}>"),
         verification="unknown", reply_to=f"!{ALICE}", **NOT_ACCOUNT)
    case(c, "sender-header-victim", message(sender=MALLORY, headers=f"Sender: {ALICE}\r\n"),
         verification="unknown", reply_to=f"!{ALICE}", **NOT_ACCOUNT)
    # Lookalike domains (an AR that passes for the lookalike itself).
    for slug, addr in (("digit-zero", "alice@br0ker.example"), ("rn-for-m", "alice@carrnier.example"),
                       ("cyrillic-o-utf8", "alice@brоker.example"), ("punycode-cyrillic", "alice@xn--brker-kye.example"),
                       ("punycode-latin-accent", "alice@" + idna.encode("bröker.example").decode()), ("one-letter-added", "alice@brokers.example"),
                       ("i-for-l", "bob@carrler.example"), ("greek-omicron-utf8", "alice@brοker.example"),
                       ("subdomain-of-lookalike", "alice@mail.br0ker.example"), ("hyphenated", "alice@bro-ker.example")):
        case(c, f"lookalike-{slug}", message(sender=addr, top=ar(addr.rpartition("@")[2])),
             verification="!verified", reply_to=f"!{ALICE}", **NOT_ACCOUNT)


def identity() -> None:
    c = "identity"
    mismatch = dict(verification="mismatch", **NOT_ACCOUNT)
    case(c, "other-userid-upper", message(body=f"{PASSWORD} My colleague's UserID is BOB02."), **mismatch)
    case(c, "other-userid-lower", message(subject="password reset for bob02", body=PASSWORD), **mismatch)
    case(c, "other-userid-mixed-case", message(body="Please reset the password of Bob02 today."), **mismatch)
    case(c, "other-userid-parentheses", message(body="Password reset needed (BOB02) asap."), **mismatch)
    case(c, "other-userid-trailing-dot", message(body="Reset password for user BOB02."), **mismatch)
    case(c, "userid-without-digits-my-user", message(body="Please reset the password for my user jsmith."),
         **mismatch)
    case(c, "userid-without-digits-prose", message(body="jsmith cannot log in, his password expired."),
         **mismatch)
    case(c, "usuario-mgarcia", message(body="Necesito restablecer la contraseña del usuario mgarcia.",
                                       subject="Contraseña olvidada"), **mismatch)
    case(c, "id-de-usuario", message(body="La cuenta con ID de usuario CARLA03 está bloqueada.",
                                     subject="Cuenta bloqueada"), **mismatch)
    case(c, "userid-colon", message(body="UserID: DAVE04\r\nPassword expired, please reset."), **mismatch)
    case(c, "userid-in-subject-only", message(subject="Locked: SURE05", body=LOCKED), **mismatch)
    case(c, "html-table-cells", message(content_type="text/html; charset=utf-8",
                                        body="<html><body><p>Please reset my password.</p><table><tr><td>UserID"
                                             "</td><td>BOB02</td></tr></table></body></html>"), **mismatch)
    case(c, "html-table-th", message(content_type="text/html; charset=utf-8",
                                     body="<table><tr><th>User</th><th>Issue</th></tr><tr><td>DAVE04</td>"
                                          "<td>account locked</td></tr></table>"), **mismatch)
    case(c, "unknown-sender-quotes-userid", message(sender=MALLORY, top=ar("evil.example"),
                                                    body="Unlock ALICE01 please, I am Alice."),
         verification="mismatch", impersonation="true", reply_to=f"!{ALICE}", **NOT_ACCOUNT)
    # Identifiers on file for other companies, in every shape.
    for slug, shape in (("ssn-dashes", "123-45-6789"), ("ssn-spaces", "123 45 6789"), ("ssn-plain", "123456789"),
                        ("ssn-dots", "123.45.6789")):
        case(c, f"other-company-ior-{slug}", message(body=f"{PASSWORD} Our IOR number is {shape}."),
             reply_not_contains=shape, **mismatch)
    case(c, "other-company-ein", message(sender=BOB, top=ar("carrier.example"),
                                         body=f"{LOCKED} Importer EIN 12-3456789."), **mismatch)
    case(c, "other-company-ein-suffix", message(sender=BOB, top=ar("carrier.example"),
                                                body=f"{LOCKED} IOR 12-3456789AB."), **mismatch)
    case(c, "other-company-scac", message(body=f"{LOCKED} Our SCAC is BOBC."), **mismatch)
    case(c, "other-company-surety", message(body=f"{LOCKED} Surety code 999."), **mismatch)
    case(c, "other-company-filer", message(sender=BOB, top=ar("carrier.example"),
                                           body=f"{PASSWORD} Filer code K4M."), **mismatch)
    # Colleagues share their company's identifiers: no mismatch for that alone.
    case(c, "colleague-shares-company-ior", message(sender=MGARCIA, top=ar("importadora.example"),
                                                    body=f"{PASSWORD} Our IOR is 123-45-6789."),
         verification="verified", reply_not_contains="123-45-6789")
    case(c, "colleague-shares-filer-code", message(body=f"{PASSWORD} Our filer code is K4M."),
         verification="verified")
    # Requests on another person's behalf, whoever asks.
    for slug, text in (("for-my-boss", "I need the password reset for my boss, he is travelling."),
                       ("para-mi-jefe", "Necesito restablecer la contraseña para mi jefe."),
                       ("for-my-user", "Please unlock the account for my user, she is locked out."),
                       ("on-behalf-of", "I am writing on behalf of our director to reset her password."),
                       ("de-parte-de", "Le escribo de parte de mi compañero, su cuenta está bloqueada."),
                       ("my-colleagues-account", "My colleague's account is locked, can you unlock it?"),
                       ("for-a-client", "Password reset for a client of ours please."),
                       ("la-cuenta-de-mi-jefe", "La cuenta de mi jefe está bloqueada.")):
        case(c, f"on-behalf-{slug}", message(body=text, subject="Account help"), **mismatch)
    # Account Owners asking the desk for their users (seed 001: owners do it in the portal).
    case(c, "owner-resets-users-password", message(sender=OWNER, top=ar("broker.example"),
                                                   body="Please reset the password of ALICE01."), **mismatch)
    case(c, "owner-unlocks-user-no-digits", message(sender=OWNER, top=ar("broker.example"), subject="Locked account",
                                                    body="Our user jsmith is locked out, please unlock."),
         **mismatch)
    case(c, "owner-for-my-user", message(sender=OWNER, top=ar("broker.example"),
                                         body="Please reset the password for my user."), **mismatch)


def controls() -> None:
    c = "control"
    case(c, "verified-alice-password", message(), verification="verified", impersonation="false",
         reply_to=ALICE)
    case(c, "verified-alice-own-userid", message(body=f"{PASSWORD} My UserID is ALICE01."),
         verification="verified", reply_to=ALICE)
    case(c, "verified-bob-locked", message(sender=BOB, top=ar("carrier.example"), subject="Account locked",
                                           body=LOCKED), verification="verified", reply_to=BOB)
    case(c, "verified-carla-spanish", message(sender=CARLA, top=ar("importadora.example"),
                                              subject="Olvidé mi contraseña",
                                              body="Olvidé mi contraseña del Portal ACE, ayuda por favor."),
         verification="verified", reply_to=CARLA)
    case(c, "verified-two-agreeing-ars", message(top=ar("broker.example") + ar("broker.example")),
         verification="verified")
    case(c, "verified-subdomain-dkim", message(
        top=f"Authentication-Results: {BORDER}; dkim=pass header.d=mail.broker.example\r\n"),
         verification="verified")
    case(c, "verified-dave-own-ein", message(sender=DAVE, top=ar("exporter.example"),
                                             body=f"{PASSWORD} EIN 12-3456789."), verification="verified")
    case(c, "unknown-sender-general-question", message(sender="newuser@trade.example", top=ar("trade.example"),
                                                       subject="AESDirect error",
                                                       body="How do I file EEI in AESDirect? I get an error."),
         verification="unknown", impersonation="false")


def loops() -> None:
    c = "loops"
    drop = dict(screen="set", action="drop", reply_to="none")
    for slug, subject in (("out-of-office", "Out of Office: Forgot my password"),
                          ("automatic-reply", "Automatic reply: Forgot my password"),
                          ("respuesta-automatica", "Respuesta automática: Olvidé mi contraseña"),
                          ("fuera-de-la-oficina", "Fuera de la oficina"),
                          ("auto-reply-hyphen", "Auto-Reply: your message"),
                          ("out-of-the-office-lower", "out of the office until Monday")):
        case(c, f"ooo-subject-{slug}", message(subject=subject, body="I am out of the office until Monday."),
             **drop)
    case(c, "auto-submitted", message(headers="Auto-Submitted: auto-replied\r\n"), **drop)
    case(c, "auto-submitted-comment", message(headers="Auto-Submitted: auto-generated (bot)\r\n"), **drop)
    case(c, "precedence-bulk", message(headers="Precedence: bulk\r\n"), **drop)
    case(c, "precedence-junk", message(headers="Precedence: junk\r\n"), **drop)
    case(c, "list-id", message(headers="List-Id: <trade.lists.example>\r\n"), **drop)
    case(c, "x-autoreply", message(headers="X-Autoreply: yes\r\n"), **drop)
    case(c, "x-auto-response-suppress", message(headers="X-Auto-Response-Suppress: OOF, AutoReply\r\n"), **drop)
    case(c, "mailer-daemon", message(sender="MAILER-DAEMON@mail.broker.example", top=""), **drop)
    case(c, "null-return-path", message(headers="Return-Path: <>\r\n"), **drop)
    case(c, "our-own-address", message(sender=DESK, top=""), **drop)
    case(c, "x-loop-ours", message(headers=f"X-Loop: {DESK}\r\n"), **drop)
    case(c, "our-message-id-back", message(msgid=make_message_id(b"any secret", "ACE-2026-000042", ALICE,
                                                                  "ace-support.example", "0123456789ab")), **drop)
    case(c, "dsn-report", message(
        sender="postmaster@mail.broker.example", top="", subject="Undelivered Mail Returned to Sender",
        content_type="multipart/report; report-type=delivery-status; boundary=R",
        raw_body=b"--R\r\nContent-Type: text/plain\r\n\r\nDelivery failed.\r\n--R\r\nContent-Type: "
                 b"message/delivery-status\r\n\r\nReporting-MTA: dns; mail.broker.example\r\n\r\nFinal-Recipient: "
                 b"rfc822; x@y.example\r\nAction: failed\r\nStatus: 5.1.1\r\n--R--\r\n"), **drop)


def injection() -> None:
    c = "header-injection"
    for slug, word in (("crlf-q", "=?utf-8?q?Help=0D=0ABcc:_victim@evil.example?="),
                       ("crlf-b", "=?utf-8?b?" + base64.b64encode(b"Help\r\nBcc: victim@evil.example").decode() + "?="),
                       ("lf-only", "=?utf-8?q?Help=0ABcc:_victim@evil.example?="),
                       ("nul", "=?utf-8?q?Help=00Bcc:_victim@evil.example?="),
                       ("line-separator", "=?utf-8?b?" + base64.b64encode("Help\u2028Bcc: victim@evil.example".encode()).decode() + "?="),
                       ("paragraph-separator", "=?utf-8?b?" + base64.b64encode("Help\u2029Bcc: x@evil.example".encode()).decode() + "?="),
                       ("next-line", "=?utf-8?b?" + base64.b64encode("Help\u0085Bcc: x@evil.example".encode()).decode() + "?="),
                       ("vertical-tab", "=?utf-8?q?Help=0BBcc:_x@evil.example?="),
                       ("latin1-cr", "=?iso-8859-1?q?Ayuda=0D=0ABcc:_x@evil.example?="),
                       ("ssn-in-subject", "My IOR 123-45-6789 password")):
        case(c, f"subject-{slug}", message(subject=word + " forgot password"),
             reply_not_contains="123-45-6789" if "ssn" in slug else "")
    # Found by tests/test_fuzz_trust.py: raw (unencoded) UTF-8 line separators in a Subject.
    case(c, "fuzz-subject-raw-utf8-separators", message(subject="Help\u2029Bcc: x@evil.example\u2028\x85 password"))
    case(c, "from-display-crlf", message(from_line=f"From: =?utf-8?q?Alice=0D=0ABcc:_x@evil.example?= <{ALICE}>"))
    case(c, "message-id-crlf", message(msgid="<a=0D=0Ab@broker.example>"))
    c = "template-injection"
    for slug, text in (("jinja-expression", "{{ 7*7 }} {{ config }} forgot password"),
                       ("jinja-statement", "{% for x in range(3) %}X{% endfor %} password"),
                       ("jinja-attribute", "{{ ''.__class__.__mro__[1].__subclasses__() }} password"),
                       ("dollar-template", "${7*7} #{7*7} password reset"),
                       ("html-script", "<script>alert(1)</script> password reset")):
        case(c, f"subject-{slug}", message(subject=text, body=PASSWORD + "\r\n" + text),
             reply_not_contains={"jinja-expression": "49", "dollar-template": "49",
                                 "jinja-statement": "XXX"}.get(slug, ""))


def resources() -> None:
    c = "resource-abuse"
    case(c, "from-nested-comments-5000", message(from_line="From: " + "(" * 5000 + "x" + ")" * 5000 + f" <{ALICE}>"))
    case(c, "from-unclosed-comments-5000", message(from_line="From: " + "(" * 5000 + f" <{ALICE}>"))
    case(c, "to-5000-recipients", message(to=", ".join(f"u{i}@many.example" for i in range(5000))))
    case(c, "subject-100k", message(subject="password " * 11000))
    case(c, "header-line-200k", message(headers="X-Filler: " + "a" * 200_000 + "\r\n"))
    case(c, "3000-parts", message(content_type="multipart/mixed; boundary=P", raw_body=b"".join(
        b"--P\r\nContent-Type: text/plain\r\n\r\npart %d\r\n" % i for i in range(3000)) + b"--P--\r\n"))
    nested = b"".join(b"--B%d\r\nContent-Type: multipart/mixed; boundary=B%d\r\n\r\n" % (i, i + 1) for i in range(300))
    case(c, "multipart-nested-300", message(content_type="multipart/mixed; boundary=B0", raw_body=nested
                                            + b"--B300\r\nContent-Type: text/plain\r\n\r\nforgot password\r\n"))
    case(c, "invalid-utf8-body", message(raw_body=b"forgot password \xff\xfe\xc3\x28 \xed\xa0\x80 end\r\n"))
    case(c, "invalid-utf8-header", message(subject="pass\udcffword".encode("utf-8", "surrogateescape").decode(
        "utf-8", "surrogateescape").encode("utf-8", "replace").decode()))
    case(c, "nul-in-body", message(raw_body=b"forgot\x00password\x00\x00\r\n"))
    case(c, "nul-in-headers", message(headers="X-Nul: a\x00b\r\n"), action="quarantine")
    case(c, "html-nested-divs-20000", message(content_type="text/html", raw_body=b"<div>" * 20000
                                              + b"forgot password" + b"</div>" * 20000))
    case(c, "encoded-words-5000", message(subject=" ".join(["=?utf-8?q?p=C3=A1ss?="] * 5000)))
    case(c, "base64-bad-padding", message(content_type="text/plain", headers="Content-Transfer-Encoding: base64\r\n",
                                          raw_body=b"Zm9yZ290IHBhc3N3b3Jk===!!**\r\n"))
    case(c, "references-10000", message(headers="References: " + " ".join(f"<r{i}@x.example>" for i in range(10000))
                                        + "\r\n"))
    case(c, "long-line-no-newline", message(raw_body=b"password " * 50000))
    case(c, "boundary-never-closed", message(content_type="multipart/alternative; boundary=Q",
                                             raw_body=b"--Q\r\nContent-Type: text/plain\r\n\r\nforgot password\r\n"))
    case(c, "unknown-charset", message(content_type="text/plain; charset=x-klingon", raw_body=b"forgot password\r\n"))
    case(c, "not-mail-binary", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, action="quarantine")
    case(c, "empty-file", b"", action="quarantine")


def main() -> None:
    for make in (spoofing, identity, controls, loops, injection, resources):
        make()
    for old in HERE.glob("*.eml"):
        old.unlink()
    rows = []
    for number, (cls, slug, raw, expect) in enumerate(CASES, 1):
        name = f"{number:03d}-{cls}-{slug}.eml"
        (HERE / name).write_bytes(raw)
        rows.append({"file": name, "attack_class": cls, **expect})
    columns = ["file", "attack_class", "verification", "impersonation", "action", "account_answer", "screen",
               "reply_to", "reply_not_contains"]
    with (HERE / "expected.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, columns)
        writer.writeheader()
        writer.writerows(rows)
    (HERE / "users.csv").write_text(USERS, encoding="utf-8")
    print(f"{len(rows)} messages written to {HERE}")


if __name__ == "__main__":
    main()
