"""Mutated hard-case mail never makes the parser raise anything but
``Unparseable``, nor take long: a poison message must not stall the worker."""

from __future__ import annotations

import random
import time
from pathlib import Path

from daemon.intake.parse import Unparseable, parse_message

CORPUS = Path(__file__).parent / "data" / "corpora"
NASTY = [b"\x00", b"\r", b"\n", b"=?", b"?=", b"--", b"\r\n\r\n", b";", b"\"", b"boundary=", b"\xff",
         b"Content-Type: multipart/mixed; boundary=\"", b"=?utf-8?b?", b"<", b">", b"\x1b$B"]


def mutate(raw: bytes, rng: random.Random) -> bytes:
    data = bytearray(raw[:20_000])
    for _ in range(rng.randint(1, 12)):
        pos = rng.randrange(len(data) + 1)
        choice = rng.random()
        if choice < 0.4:
            data[pos:pos] = rng.choice(NASTY)
        elif choice < 0.7 and data:
            del data[pos:pos + rng.randint(1, 40)]
        else:
            data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
    return bytes(data)


def test_mutated_corpus_mail_parses_or_is_refused_quickly():
    rng = random.Random(20261122)
    files = sorted(p for p in CORPUS.iterdir() if p.suffix in (".eml", ".msg"))
    worst = 0.0
    outcomes = {"parsed": 0, "refused": 0}
    for i in range(600):
        raw = mutate(files[i % len(files)].read_bytes(), rng)
        started = time.perf_counter()
        try:
            record = parse_message(raw)
        except Unparseable as exc:
            assert exc.reason
            outcomes["refused"] += 1
        else:
            # What is stored must be clean text: no NUL, no lone surrogate, no CR/LF in the subject.
            assert "\x00" not in record.text and "\n" not in record.subject
            record.text.encode("utf-8")
            outcomes["parsed"] += 1
        worst = max(worst, time.perf_counter() - started)
    assert outcomes["parsed"] > 300, outcomes
    assert worst < 5.0, f"slowest mutated message took {worst:.1f} s"
