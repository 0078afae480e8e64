"""Fuzzing parse -> screen -> verify with hypothesis, for a fixed time.

Messages are assembled from the pieces attacks are made of: address headers
with comments, quotes, encoded words and line separators; Authentication-
Results and Received lines in any order and with any authserv-id; HTML,
multipart bodies, invalid UTF-8 and NUL bytes.  Whatever comes out, parsing
raises nothing but ``Unparseable`` (a quarantine reason), screening and
verification return, each within a second, the record holds clean text, and
nobody is ``verified`` without our border's pass above its line.

The suite runs it for ``ACEDESK_FUZZ_SECONDS`` (default 8), and for at least
``ACEDESK_FUZZ_MINIMUM`` messages (default 200) on a slow machine; run it longer by
hand with ``ACEDESK_FUZZ_SECONDS=600 .venv/bin/python -m pytest -s --timeout 0 tests/test_fuzz_trust.py``.
What it found went into the adversarial corpus.
"""

from __future__ import annotations

import json
import os
import time

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from daemon.intake.parse import Unparseable, parse_within_budget
from responders.screen import ScreenContext, screen
from responders.verify import VERIFIED, Directory, UserRecord, verify

BORDER = "mx.ace-support.example"
DIRECTORY = Directory(users=(UserRecord("ALICE01", "alice@broker.example", identifier="K4M",
                                        account_owner_email="owner@broker.example"),
                             UserRecord("jsmith", "jsmith@other.example", identifier="123-45-6789")),
                      domains=frozenset({"broker.example", "other.example"}))
SCREEN = ScreenContext(own_addresses=frozenset({"helpdesk@ace-support.example"}), domain="ace-support.example",
                       secret=b"s" * 32)

NASTY = st.sampled_from(["(", ")", "((", "))", "<", ">", "@", ",", ";", ":", '"', "\\", "=?", "?=", "=?utf-8?q?",
                         "=?utf-8?b?", "\r\n", "\n", "\r", "\x00", "\u2028", "\u2029", "\x85", "\t", " ", "\xff",
                         "alice@broker.example", "BOB02", "jsmith", "123-45-6789", "xn--brker-kye.example",
                         "brоker.example", "for my boss", BORDER, "{{ 7*7 }}", "%", "\ufeff", "=0D=0A"])
PIECE = st.one_of(NASTY, st.text(max_size=12))
VALUE = st.lists(PIECE, max_size=25).map("".join)
NESTED = st.integers(min_value=0, max_value=3000).map(lambda n: "(" * n + "x" + ")" * (n // 2))
DOMAIN = st.sampled_from(["broker.example", "br0ker.example", "xn--brker-kye.example", "evil.example",
                          "mail.broker.example", "co.uk", ""])


@st.composite
def from_header(draw: st.DrawFn) -> str:
    display = draw(st.one_of(VALUE, NESTED, st.just('"alice@broker.example"')))
    address = draw(st.one_of(st.just("alice@broker.example"), st.just("mallory@evil.example"), VALUE))
    shape = draw(st.sampled_from(["{d} <{a}>", "{a}", "{a} ({d})", "{d} <{a}>, {a}", "<{a}>"]))
    return "From: " + shape.format(d=display, a=address)


@st.composite
def trace(draw: st.DrawFn) -> list[str]:
    lines = []
    for _ in range(draw(st.integers(0, 5))):
        if draw(st.booleans()):
            authserv = draw(st.sampled_from([BORDER, BORDER.upper(), "mx.evil.example", BORDER + ".evil", ""]))
            result = draw(st.sampled_from(["pass", "fail", "none", "softfail", draw(VALUE)]))
            method = draw(st.sampled_from(["dmarc", "dkim", "spf", "arc"]))
            lines.append(f"Authentication-Results: {authserv}; {method}={result} header.from={draw(DOMAIN)} "
                         f"header.d={draw(DOMAIN)} smtp.mailfrom=x@{draw(DOMAIN)}")
        else:
            lines.append(f"Received: from {draw(VALUE)} by {draw(st.sampled_from([BORDER, 'relay.example', '']))}"
                         f"; {draw(VALUE)}")
    return lines


@st.composite
def body(draw: st.DrawFn) -> tuple[str, bytes]:
    kind = draw(st.sampled_from(["plain", "html", "multipart", "bytes"]))
    if kind == "bytes":
        return "text/plain; charset=utf-8", draw(st.binary(max_size=400))
    text = draw(VALUE)
    if kind == "html":
        cells = "".join(f"<td>{draw(VALUE)}</td>" for _ in range(draw(st.integers(0, 4))))
        return "text/html", f"<table><tr>{cells}</tr></table><div>{text}".encode("utf-8", "surrogatepass")
    if kind == "multipart":
        parts = draw(st.integers(0, 40))
        raw = "".join(f"--B\r\nContent-Type: {draw(st.sampled_from(['text/plain', 'text/html', 'multipart/mixed; boundary=B']))}"
                      f"\r\n\r\n{draw(VALUE)}\r\n" for _ in range(parts))
        return "multipart/mixed; boundary=B", (raw + draw(st.sampled_from(["--B--\r\n", ""]))).encode(
            "utf-8", "surrogatepass")
    return "text/plain; charset=utf-8", text.encode("utf-8", "surrogatepass")


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    headers = draw(trace()) + [draw(from_header())]
    headers += draw(st.lists(st.sampled_from([
        f"Subject: {draw(VALUE)}", f"Reply-To: {draw(VALUE)}", f"To: {draw(VALUE)}", "Auto-Submitted: no",
        f"Message-ID: <{draw(VALUE)}>", f"From: {draw(VALUE)}", f"Content-Transfer-Encoding: {draw(VALUE)}",
        f"Subject: =?utf-8?b?{draw(st.binary(max_size=30)).hex()}?="]), max_size=4))
    content_type, payload = draw(body())
    head = "\r\n".join(headers) + f"\r\nContent-Type: {content_type}\r\n\r\n"
    return head.encode("utf-8", "surrogatepass") + payload


class Budget(Exception):
    """The fuzzing time is up."""


def check(raw: bytes) -> str:
    # CPU time, not wall time: the bound is on our work, and a loaded machine stretches the wall.
    started = time.process_time()
    try:
        msg = parse_within_budget(raw, seconds=2.0)
    except Unparseable as exc:
        assert exc.reason
        return "quarantined"
    json.dumps(msg.to_dict(), ensure_ascii=False).encode("utf-8")  # valid Unicode, storable
    assert not any(c in msg.subject + msg.sender_name for c in "\r\n\x00\u2028\u2029\x85")
    result = screen(msg, SCREEN)
    verification = verify(msg, DIRECTORY, [BORDER], [BORDER])
    if verification.status == VERIFIED:
        # Only ever Alice, from her own address, with our border's pass above its line.
        assert msg.sender == "alice@broker.example" and verification.authentication == "pass"
        assert not verification.impersonation
    assert time.process_time() - started < 2.0, f"{time.process_time() - started:.1f} s of CPU"
    return result.verdict


def test_parse_screen_verify_survive_fuzzing_for_a_fixed_time():
    seconds = float(os.environ.get("ACEDESK_FUZZ_SECONDS", "8"))
    # At least this many messages however slow the machine, so a loaded CI run still fuzzes.
    minimum = int(os.environ.get("ACEDESK_FUZZ_MINIMUM", "200"))
    stop = time.monotonic() + seconds
    seen: dict[str, int] = {}

    # Rounds of 2,000 examples: hypothesis remembers every example of a run, so one endless run
    # would grow without bound; a fresh run per round keeps the memory flat.
    @settings(max_examples=2_000, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(messages())
    def run(raw: bytes) -> None:
        if time.monotonic() > stop and sum(seen.values()) >= minimum:
            raise Budget
        outcome = check(raw)
        seen[outcome] = seen.get(outcome, 0) + 1

    while time.monotonic() < stop or sum(seen.values()) < minimum:
        try:
            run()
        except Budget:
            break
    total = sum(seen.values())
    print(f"fuzzed {total} messages in {seconds:g} s or more: {seen}")
