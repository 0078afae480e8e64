"""Every hard-case mail file ends processed or quarantined with a reason:
none crashes, hangs or is lost.  Also cut in half, and with its line endings
switched, as mail arrives in real life."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from daemon.context import AppContext
from daemon.pipeline import PIPELINE, build_stages
from daemon.intake.store import NewMessage, insert_messages
from daemon.worker import drain
from models.core import DONE, FAILED, NEW, QUARANTINED, InboundMessage, QuarantineRecord
from models.session import transaction

HERE = Path(__file__).parent / "data" / "corpora"
SHARED = Path(__file__).parents[2] / "shared" / "corpora" / "mime"


def corpus_files() -> list[Path]:
    files = {p.name: p for p in HERE.iterdir() if p.suffix in (".eml", ".msg")}
    if SHARED.is_dir():  # the GPL files are used from ../shared when it is there
        files.update({p.name: p for p in SHARED.iterdir() if p.suffix in (".eml", ".msg")})
    return [files[name] for name in sorted(files)]


def variants(raw: bytes) -> list[bytes]:
    lf = raw.replace(b"\r\n", b"\n")
    return [raw, raw[: len(raw) // 2], lf, lf.replace(b"\n", b"\r\n")]


def test_the_corpus_copy_is_complete():
    assert len([p for p in HERE.iterdir() if p.suffix in (".eml", ".msg")]) >= 140


@pytest.mark.slow
def test_every_corpus_file_is_processed_or_quarantined(sessions, engine, config_factory, db_url):
    ctx = AppContext(config=config_factory(db_url), engine=engine, sessions=sessions, instance="test")
    items = []
    for path in corpus_files():
        for i, raw in enumerate(variants(path.read_bytes())):
            items.append(NewMessage(desk="helpdesk@ace-support.example", source="cli", raw=raw,
                                    envelope_from=None, envelope_to=(path.name, str(i))))
    with transaction(sessions) as s:
        stored = insert_messages(s, items)
    # A message whose line endings alone changed is the same message (stored once, by design): each
    # file is stored whole and cut in half.
    assert stored >= 2 * 140
    stages = build_stages(ctx)
    started = time.monotonic()
    drain(sessions, stages, ctx.config.pipeline)
    elapsed = time.monotonic() - started
    with sessions() as s:
        states = dict(s.execute(select(InboundMessage.state, func.count()).group_by(InboundMessage.state)).all())
        quarantined = s.scalars(select(InboundMessage).where(InboundMessage.state == QUARANTINED)).all()
        reasons = {r.message_id: r.reason for r in s.scalars(select(QuarantineRecord))}
    assert states.get(NEW, 0) == 0 and states.get(FAILED, 0) == 0, states
    assert sum(states.values()) == stored
    for row in quarantined:
        assert reasons.get(row.id), f"message {row.id} quarantined without a reason"
    # Most of the corpus is readable mail; only non-mail and sender-less fragments are set aside.
    assert states.get(QUARANTINED, 0) < stored * 0.3, states
    # The whole pipeline is there (a missing stage would leave its messages waiting), so
    # everything readable is finished.
    assert len(stages) == len(PIPELINE), [s.name for s in stages]
    assert set(states) <= {DONE, QUARANTINED}, states
    assert elapsed < 120, f"{stored} messages took {elapsed:.0f} s"


def test_outlook_msg_is_quarantined_with_its_reason_and_bytes(sessions, engine, config_factory, db_url):
    ctx = AppContext(config=config_factory(db_url), engine=engine, sessions=sessions, instance="test")
    raw = (HERE / "spamscope__mail_outlook_1.msg").read_bytes()
    with transaction(sessions) as s:
        insert_messages(s, [NewMessage("helpdesk@ace-support.example", "cli", raw)])
    drain(sessions, build_stages(ctx), ctx.config.pipeline)
    with sessions() as s:
        row = s.scalars(select(InboundMessage)).one()
        record = s.scalars(select(QuarantineRecord)).one()
        assert row.state == QUARANTINED and row.raw == raw
    assert record.reason == "not_rfc5322" and "Outlook" in record.detail
