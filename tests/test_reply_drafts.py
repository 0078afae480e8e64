"""Replies rendered before the write lock (``responders.render.Draft``) are the
replies the write would have built: byte for byte, for the adversarial corpus
and the parsing corpora, in English and Spanish, with ASCII, non-ASCII, long
and truncated subjects; and the respond stage writes the same tickets, outbox
rows, records and history with drafts as without them.  And the write still
counts, for the per-recipient cap, an answer another worker gave after the
plans' snapshot was read.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from sqlalchemy import select

from daemon.config import PipelineConfig
from daemon.intake.parse import Unparseable, parse_message
from daemon.worker import drain
from models.migrate import upgrade
from daemon.stages.respond import make_responder
from models.base import utcnow
from models.core import CLASSIFIED, DONE, InboundMessage
from models.outbox import OutboxMessage
from models.responders import AutoReplyLog, ResponseRecord, Ticket, TicketMessage, TriageItem
from models.session import make_engine, make_sessionmaker, transaction
from responders import render as render_module
from responders import service
from responders.redact import redact
from responders.render import RenderError, Renderer, build_reply, complete, draft_reply, stand_in
from responders.tickets import reply_subject
from tests.test_responders import SECRET, import_users, ingest, mail, make_ctx, stages

DATA = Path(__file__).parent / "data"
CORPUS = sorted((DATA / "adversarial").glob("*.eml")) + sorted((DATA / "corpora").glob("*.eml"))
DATE = "Sun, 22 Nov 2026 09:00:00 +0000"
SUBJECTS = ["Forgot my password", "Reembolso por ACH – información bancaria del año fiscal " * 2,
            "x" * 90 + " password reset", "Forgot password for ACE portal account " * 8,
            "SSN 123-45-6789 in the subject", "Re: Fwd: [ACE-2026-000003] still broken", "",
            "Urgent: ACE down ACE-2026-1234567 " + "é" * 40, "日本語の件名 password reset " * 3, "Locked " + "w" * 260,
            "ACE is down " + "ü" * 70, "tab\tand\x01control"]


@pytest.fixture
def fixed_randomness(monkeypatch: pytest.MonkeyPatch) -> None:
    """The boundary and the Message-ID nonce fixed (the marker stays random), so two builds compare."""
    real = secrets.token_hex

    def token_hex(n: int | None = None) -> str:
        return {12: "b" * 24, 6: "n" * 12}.get(n or 0) or real(n)

    monkeypatch.setattr(secrets, "token_hex", token_hex)
    monkeypatch.setattr(render_module, "formatdate", lambda usegmt=True: DATE)


def both_ways(renderer: Renderer, template: str, language: str, subject: str, number: str, stem: str,
              message_id: str | None, references: list[str]):
    """Return (what build_reply makes for ``number``, what a draft made with a stand-in completes to)."""
    args = dict(template=template, language=language, to="alice@broker.example",
                from_address="helpdesk@ace-support.example", from_name="ACE Help Desk", secret=SECRET,
                in_reply_to=message_id, references=references,
                context={"name": "Alice", "subject": redact(subject)[:200], "csms_address": "csms@x.example",
                         "target_hours": "4", "articles": [], "desk_hours": "8-5", "desk_closed": False,
                         "back_at": ""})
    old = build_reply(renderer, subject=redact(reply_subject(subject, number, "ACE", language)), ticket=number,
                      **args)
    shown = number if stem == number else stand_in(stem)
    draft = draft_reply(renderer, subject=redact(reply_subject(subject, shown, "ACE", language)), number=shown,
                        stem=stem, **args)
    new = complete(draft, number, redact(reply_subject(subject, number, "ACE", language)), SECRET)
    return old, new


@pytest.mark.parametrize("language", ["en", "es"])
def test_a_completed_draft_is_the_reply_build_reply_makes(fixed_randomness, language):
    renderer = Renderer()
    cases = [(s, None, []) for s in SUBJECTS]
    for path in CORPUS:
        try:
            msg = parse_message(path.read_bytes())
        except Unparseable:  # quarantined: never answered
            continue
        cases.append((msg.subject or "", msg.message_id, list(msg.references)))
    compared = 0
    for i, (subject, message_id, refs) in enumerate(cases):
        template = ("password_reset", "ticket_ack", "security_neutral", "ach_refund")[i % 4]
        for number, stem in (("ACE-2026-000042", "ACE-2026-"), ("ACE-2026-987654", "ACE-2026-"),
                             ("ACE-2025-000007", "ACE-2025-000007")):  # the last: a follow-up's known number
            old, new = both_ways(renderer, template, language, subject, number, stem, message_id, refs)
            assert new is not None, subject
            assert new == old, (subject, number)
            compared += 1
    assert compared > 2 * len(CORPUS)


def test_a_number_of_another_shape_is_not_spliced(fixed_randomness):
    # A seventh digit (ticket 1,000,000): the draft cannot hold it; the write builds the reply itself.
    old, new = both_ways(Renderer(), "password_reset", "en", "Forgot my password", "ACE-2026-1000000", "ACE-2026-",
                         None, [])
    assert new is None and b"ACE-2026-1000000" in old.raw


def test_a_template_that_does_more_than_print_the_number_gets_no_draft(tmp_path):
    for lang in ("en", "es"):
        (tmp_path / lang).mkdir()
        (tmp_path / lang / "shout.txt.j2").write_text("Ticket {{ ticket|lower }}\n")
        (tmp_path / lang / "shout.html.j2").write_text("<p>Ticket {{ ticket }}</p>\n")
        (tmp_path / lang / "plain.txt.j2").write_text('{% extends "' + lang + '/base.txt.j2" %}\n')
        (tmp_path / lang / "base.txt.j2").write_text("{% filter upper %}{{ ticket }}{% endfilter %}\n")
        (tmp_path / lang / "plain.html.j2").write_text("<p>{{ ticket }}</p>\n")
        (tmp_path / lang / "fine.txt.j2").write_text("{% if name %}{{ name }}{% endif %} {{ ticket }}\n")
        (tmp_path / lang / "fine.html.j2").write_text("<p>{% for _ in [1, 2] %}{{ ticket }}{% endfor %}</p>\n")
    renderer = Renderer(tmp_path)
    assert not renderer.prints_as_is("shout", "en")
    assert not renderer.prints_as_is("plain", "es")  # the layout it extends filters the number
    assert renderer.prints_as_is("fine", "en")
    with pytest.raises(RenderError):
        draft_reply(renderer, template="shout", language="en", to="a@b.example", from_address="h@d.example",
                    from_name="", subject="s", number="ACE-2026-123456", stem="ACE-2026-", secret=SECRET,
                    in_reply_to=None, references=[], context={})


def written(url: str, config_factory, drafts: bool) -> list:
    """Run the corpus through the pipeline (stub classifier) and return what the respond step wrote."""
    completed: list[bool] = []
    with pytest.MonkeyPatch.context() as patch:
        if not drafts:
            patch.setattr(service, "drafted", lambda *a, **k: None)
        patch.setattr(service, "complete", lambda *a, **k: completed.append(True) or complete(*a, **k))
        found = _written(url, config_factory)
    # With drafts, the replies are completed drafts; without, none is (the write builds them all).
    assert (len(completed) > 20) if drafts else not completed
    return found


def _written(url: str, config_factory) -> list:
    engine = make_engine(url)
    upgrade(engine)
    sessions = make_sessionmaker(engine)
    try:
        ctx = make_ctx(config_factory(url), engine)
        import_users(sessions)
        raws = [path.read_bytes() for path in CORPUS]
        raws += [mail(subject=s + " password", sender=("alice@broker.example", "carla@importadora.example")[i % 2])
                 for i, s in enumerate(SUBJECTS)]
        ingest(sessions, *raws)
        drain(sessions, stages(ctx), PipelineConfig())
        with sessions() as s:
            numbers = [t.number for t in s.scalars(select(Ticket).order_by(Ticket.id))][:6]
        # Follow-ups quoting those numbers, from their requesters and from someone else.
        ingest(sessions, *[mail(subject=f"Re: password [{n}]", body=f"Still locked out, ticket {n}.",
                                sender=("alice@broker.example", "bob@carrier.example")[i % 2])
                           for i, n in enumerate(numbers)])
        drain(sessions, stages(ctx), PipelineConfig())
        with sessions() as s:
            out = [(o.id, o.inbound_message_id, o.ticket_id, o.message_id, o.template, o.raw, o.rcpt_to)
                   for o in s.scalars(select(OutboxMessage).order_by(OutboxMessage.id))]
            tickets = [(t.id, t.number, t.status, t.priority, t.label, t.language, t.requester, t.subject,
                        t.security) for t in s.scalars(select(Ticket).order_by(Ticket.id))]
            records = [(r.inbound_message_id, r.action, r.template, r.recipient, r.ticket_id, r.reasons)
                       for r in s.scalars(select(ResponseRecord).order_by(ResponseRecord.id))]
            history = [(h.ticket_id, h.direction, h.outbox_id, h.message_id, h.text)
                       for h in s.scalars(select(TicketMessage).order_by(TicketMessage.id))]
            triage = [(t.ticket_id, t.inbound_message_id, t.reason, t.suggestion)
                      for t in s.scalars(select(TriageItem).order_by(TriageItem.id))]
        return [out, tickets, records, history, triage]
    finally:
        engine.dispose()


def test_the_stage_writes_the_same_with_drafts_as_without(tmp_path, config_factory, fixed_randomness):
    with_drafts = written(f"sqlite:///{tmp_path / 'drafts.db'}", config_factory, True)
    without = written(f"sqlite:///{tmp_path / 'plain.db'}", config_factory, False)
    assert len(with_drafts[0]) > 20 and any(t[2] == "answered" for t in with_drafts[1])
    assert with_drafts == without


def answered_meanwhile(url: str, config_factory, cap: int, answered: str, *raws: bytes):
    """Plan ``raws`` on a snapshot (as a worker does before the lock), let another worker answer
    ``answered`` meanwhile, then write the plans; return the session factory and the plans' templates."""
    config = config_factory(url, responders={"autoreply_max": cap})
    engine = make_engine(url)
    upgrade(engine)
    sessions = make_sessionmaker(engine)
    ctx = make_ctx(config, engine)
    import_users(sessions)
    ingest(sessions, *raws)
    drain(sessions, stages(ctx)[:2], PipelineConfig())  # parsed and classified, not answered
    responder = make_responder(config)
    with sessions() as reader:
        rows = list(reader.scalars(select(InboundMessage).where(InboundMessage.state == CLASSIFIED)))
        planned = service.plan_rows(reader, responder, rows)
    with transaction(sessions) as s:  # meanwhile, the other worker answers someone
        s.add(AutoReplyLog(recipient=answered, at=utcnow()))
    with transaction(sessions) as s:
        claimed = list(s.scalars(select(InboundMessage).where(InboundMessage.id.in_(list(planned)))))
        service.act_on_plans(s, responder, claimed, planned)
    return engine, sessions, [p.plan.decision.template for p in planned.values() if p.plan]


@pytest.mark.parametrize("answered, replies", [("alice@broker.example", 0), ("someone@else.example", 1)])
def test_the_cap_counts_an_answer_another_worker_gave_after_the_snapshot(sqlite_url, config_factory, answered,
                                                                         replies):
    engine, sessions, planned = answered_meanwhile(sqlite_url, config_factory, 1, answered, mail())
    try:
        assert planned == ["password_reset"]
        with sessions() as s:
            assert len(s.scalars(select(OutboxMessage)).all()) == replies
            assert s.scalars(select(InboundMessage.state)).all() == [DONE]
            record = s.scalars(select(ResponseRecord)).one()
            assert (record.template is not None) == bool(replies)
    finally:
        engine.dispose()


@pytest.mark.parametrize("answered, replies", [("alice@broker.example", 1), ("someone@else.example", 2)])
def test_the_cap_counts_the_batch_own_answers_with_one_given_after_the_snapshot(sqlite_url, config_factory,
                                                                               answered, replies):
    # Cap 2, two requests from one sender in one batch: both answered, unless another worker answered
    # her after the snapshot -- then her count reaches the cap at the batch's second answer.
    engine, sessions, planned = answered_meanwhile(
        sqlite_url, config_factory, 2, answered,
        mail(), mail(subject="Password reset", body="Please reset my ACE portal password."))
    try:
        assert planned == ["password_reset"] * 2
        with sessions() as s:
            assert len(s.scalars(select(OutboxMessage)).all()) == replies
    finally:
        engine.dispose()
