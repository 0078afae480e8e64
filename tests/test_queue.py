"""The desk's operations as an analyst meets them through ``acedesk queue``,
``acedesk tickets`` and ``acedesk users``: a person's reply is a person's,
an approval sends the label's answer (never "will review"), the queue refuses
what makes no sense, every ticket is reachable by its number, and each act is
in the audit log under the analyst's name."""

from __future__ import annotations

import json
from email import message_from_bytes, policy

from sqlalchemy import select

from daemon.config import PipelineConfig
from daemon.worker import drain
from models.analysts import Analyst
from models.core import AuditEntry
from models.outbox import OutboxMessage
from models.responders import Ticket, TicketMessage
from models.session import transaction
from tests.test_responders import _cli, import_users, ingest, mail, make_ctx, stages


def _queue(tmp_path, engine, sessions, config_factory, *raws: bytes) -> str:
    url = engine.url.render_as_string(hide_password=False)
    import_users(sessions)
    ingest(sessions, *raws)
    drain(sessions, stages(make_ctx(config_factory(url), engine)), PipelineConfig())
    return url


def _on_file(sessions, *names: str) -> None:
    """Analyst accounts, for the command line to act as (``--as``)."""
    with transaction(sessions) as s:
        s.add_all(Analyst(name=name, role="analyst", password_hash="", disabled=False) for name in names)


def _items(tmp_path, url, capsys) -> list[dict]:
    code, out, _ = _cli(tmp_path, url, "queue", "list", "--json", capsys=capsys)
    assert code == 0
    return [json.loads(line) for line in out.splitlines()]


def test_a_persons_reply_is_theirs_threaded_and_audited(tmp_path, engine, sessions, capsys, config_factory):
    url = _queue(tmp_path, engine, sessions, config_factory,
                 mail(subject="hello", sender="dan@new.example", ar=None, body="thanks", msgid="<first@new.example>"))
    [item] = _items(tmp_path, url, capsys)
    _on_file(sessions, "maria")
    # Given an analyst's own words, sent by the ticket's number,
    code, out, err = _cli(tmp_path, url, "queue", "reply", item["ticket"], "--text", "Hello Jo,\n\nDone.",
                          "--as", "maria", capsys=capsys)
    assert code == 0, err
    with sessions() as s:
        out_row = s.scalars(select(OutboxMessage).where(OutboxMessage.template == "analyst_reply")).one()
        history = s.scalars(select(TicketMessage).where(TicketMessage.outbox_id == out_row.id)).one()
        audit = s.scalars(select(AuditEntry).where(AuditEntry.action == "queue.replied")).one()
        sent = message_from_bytes(out_row.raw, policy=policy.default)
    text = sent.get_body(("plain",)).get_content().replace("\r\n", "\n")
    # the message is theirs: no greeting added, no automatic footer, no Auto-Submitted,
    assert text.startswith("Hello Jo,\n\nDone."), text
    assert "automatic" not in text.lower() and "Hello,\n" not in text
    assert sent["Auto-Submitted"] is None and sent["X-Auto-Response-Suppress"] is None
    # threaded to the latest message of the ticket, from the desk address, and audited with who sent it.
    assert sent["In-Reply-To"] == "<first@new.example>" and "<first@new.example>" in sent["References"]
    assert sent["From"].addresses[0].addr_spec == "helpdesk@ace-support.example"
    assert history.author == "maria" and audit.actor == "maria"


def test_approve_sends_the_labels_answer_never_will_review(tmp_path, engine, sessions, capsys, config_factory):
    url = _queue(tmp_path, engine, sessions, config_factory,
                 mail(subject="hello", sender="dan@new.example", ar=None, body="thanks"))
    [item] = _items(tmp_path, url, capsys)
    assert item["label"] == "other"
    # An item labelled 'other' has no answer of its own: approving it is refused with what to do.
    code, _, err = _cli(tmp_path, url, "queue", "approve", str(item["id"]), capsys=capsys)
    assert code == 2 and "relabel" in err and "no answer" in err
    with sessions() as s:
        assert s.scalars(select(OutboxMessage).where(OutboxMessage.inbound_message_id.is_(None))).all() == []
    # Relabelled by the analyst, it sends that label's answer.
    assert _cli(tmp_path, url, "queue", "relabel", str(item["id"]), "account_setup", capsys=capsys)[0] == 0
    code, out, _ = _cli(tmp_path, url, "queue", "approve", str(item["id"]), capsys=capsys)
    assert code == 0 and "account_setup" in out
    with sessions() as s:
        answer = s.scalars(select(OutboxMessage).where(OutboxMessage.inbound_message_id.is_(None))).one()
        body = message_from_bytes(answer.raw, policy=policy.default).get_body(("plain",)).get_content()
    assert answer.template == "account_setup" and "will review" not in body


def test_the_queue_refuses_what_makes_no_sense(tmp_path, engine, sessions, capsys, config_factory):
    url = _queue(tmp_path, engine, sessions, config_factory,
                 mail(subject="hello", sender="dan@new.example", ar=None, body="thanks"))
    [item] = _items(tmp_path, url, capsys)
    ref = str(item["id"])
    _on_file(sessions, "ana", "ben")
    assert _cli(tmp_path, url, "queue", "claim", ref, "--as", "ana", capsys=capsys)[0] == 0
    code, _, err = _cli(tmp_path, url, "queue", "claim", ref, "--as", "ben", capsys=capsys)
    assert code == 2 and "with ana" in err
    # Items go to analysts on file only.
    code, _, err = _cli(tmp_path, url, "queue", "assign", ref, "nobody", "--as", "ana", capsys=capsys)
    assert code == 2 and "no analyst account 'nobody'" in err
    assert _cli(tmp_path, url, "queue", "note", ref, "called him", "--as", "ana", capsys=capsys)[0] == 0
    assert _cli(tmp_path, url, "queue", "close", ref, "--as", "ana", capsys=capsys)[0] == 0
    # Once closed: no relabel, no approve, no second close.
    for args in (("relabel", ref, "account_setup", "--as", "ben"), ("approve", ref, "--as", "ben"),
                 ("close", ref, "--as", "ben")):
        code, _, err = _cli(tmp_path, url, "queue", *args, capsys=capsys)
        assert code == 2 and ("already" in err), (args, err)
    code, _, err = _cli(tmp_path, url, "queue", "show", "ACE-1999-999999", capsys=capsys)
    assert code == 2 and "no ticket" in err


def test_every_ticket_is_reachable_by_number_list_and_search(tmp_path, engine, sessions, capsys, config_factory):
    url = _queue(tmp_path, engine, sessions, config_factory,
                 mail(subject="ACE is down", body="ACE is very slow and not processing since this morning."),
                 mail(subject="hello", sender="dan@new.example", ar=None, body="thanks"))
    with sessions() as s:
        numbers = sorted(t.number for t in s.scalars(select(Ticket)))
    code, out, _ = _cli(tmp_path, url, "tickets", "list", capsys=capsys)
    assert code == 0 and out.splitlines()[0].startswith("TICKET") and all(n in out for n in numbers)
    code, out, _ = _cli(tmp_path, url, "tickets", "search", "slow", "--json", capsys=capsys)
    found = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [f["requester"] for f in found] == ["alice@broker.example"]
    code, out, _ = _cli(tmp_path, url, "tickets", "show", numbers[0].lower(), capsys=capsys)
    assert code == 0 and numbers[0] in out and "history" in out
    code, _, err = _cli(tmp_path, url, "tickets", "show", "ACE-1999-000001", capsys=capsys)
    assert code == 2 and "no ticket" in err


def test_users_list_and_show(tmp_path, engine, sessions, capsys):
    url = engine.url.render_as_string(hide_password=False)
    import_users(sessions)
    code, out, _ = _cli(tmp_path, url, "users", "list", capsys=capsys)
    assert code == 0 and out.splitlines()[0].startswith("USERID") and "ALICE01" in out and "BOB02" in out
    code, out, _ = _cli(tmp_path, url, "users", "show", "carla@importadora.example", capsys=capsys)
    assert code == 0 and "CARLA03" in out and "importer" in out
    code, _, err = _cli(tmp_path, url, "users", "show", "NOBODY", capsys=capsys)
    assert code == 2 and "no user" in err
