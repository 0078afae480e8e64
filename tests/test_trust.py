"""Issue 9: trust anchored to our border by position, identity against
everyone on file, total stages within a per-message budget, and the named
weak spots (lookalikes in punycode, the Public Suffix List, every DKIM
signature, HTML table cells, one SSN redaction, out-of-office subjects,
duplicates by line endings and Message-ID)."""

from __future__ import annotations

import smtplib
import time

import pytest
from sqlalchemy import func, select

from daemon.config import PipelineConfig
from daemon.intake.parse import Unparseable, html_to_text, parse_message, parse_within_budget
from daemon.intake.store import NewMessage, insert_messages
from daemon.pipeline import PIPELINE
from daemon.stages.respond import dkim_check
from daemon.worker import drain
from models.core import DONE, QUARANTINED, InboundMessage, QuarantineRecord
from models.outbox import OutboxMessage
from models.responders import ResponseRecord, Ticket
from models.session import transaction
from responders.checks import describe
from responders.identity import DirectoryIndex, mentioned_identifiers, mentioned_user_ids
from responders.lookalike import lookalike_of
from responders.policy import DECIDE
from responders.redact import redact
from responders.screen import AUTOMATIC
from responders.trust import authenticate, organisational_domain
from responders.verify import VERIFY
from tests.test_responders import DESK, TRUSTED, import_users, make_ctx, mail, stages, triage

BORDER_LINE = ["received", f"from relay.broker.example by {TRUSTED} (Postfix) with ESMTPS id 1; Thu, 3 Dec 2026"]


def ar(result: str = "pass", authserv: str = TRUSTED) -> list[str]:
    return ["authentication-results", f"{authserv}; dmarc={result} header.from=broker.example"]


@pytest.mark.parametrize("trace, result, forged, why", [
    ([ar(), BORDER_LINE], "pass", 0, "authentication_pass"),
    ([BORDER_LINE, ar()], "none", 1, "forged_authentication_results"),
    ([ar()], "none", 1, "no_border_received"),
    ([ar(), ar("fail"), BORDER_LINE], "none", 0, "authentication_results_disagree"),
    ([ar(), ar(), BORDER_LINE], "pass", 0, "authentication_pass"),
    ([ar("pass", "mx.evil.example"), BORDER_LINE], "none", 0, "no_usable_authentication_results"),
    ([ar("fail"), BORDER_LINE, ar()], "fail", 1, "forged_authentication_results"),
    # The topmost border line counts: a forged border line lower down moves nothing.
    ([ar(), BORDER_LINE, ar(), BORDER_LINE], "pass", 1, "forged_authentication_results"),
])
def test_an_authentication_results_counts_only_above_our_border_line(trace, result, forged, why):
    trust = authenticate(trace, "broker.example", [TRUSTED], [TRUSTED])
    assert (trust.result, trust.forged) == (result, forged)
    assert any(r.startswith(why) for r in trust.reasons), trust.reasons


def test_dmarc_alignment_uses_the_public_suffix_list():
    assert organisational_domain("mail.broker.co.uk") == "broker.co.uk"
    pass_for = lambda d: authenticate(  # noqa: E731
        [["authentication-results", f"{TRUSTED}; dkim=pass header.d={d}"], BORDER_LINE], "broker.co.uk",
        [TRUSTED], [TRUSTED]).result
    assert pass_for("mail.broker.co.uk") == "pass"
    assert pass_for("co.uk") == "none"          # a public suffix aligns with nobody
    assert pass_for("evil.co.uk") == "none"


@pytest.mark.parametrize("domain", ["br0ker.example", "xn--brker-kye.example", "brоker.example",
                                    "mail.br0ker.example", "bröker.example".encode("idna").decode()])
def test_lookalikes_in_unicode_and_punycode_are_caught(domain):
    assert lookalike_of(domain, ["broker.example", "carrier.example"]) == "broker.example"
    assert lookalike_of("broker.example", ["broker.example"]) is None


def test_identity_index_finds_userids_of_any_shape_and_identifiers_in_every_shape():
    index = DirectoryIndex.build([("ALICE01", "K4M"), ("jsmith", "123-45-6789"), ("BOB02", "BOBC")])
    text = "please reset (Jsmith) and bob02. IOR 123 45 6789, SCAC BOBC, the word bobc alone"
    assert mentioned_user_ids(text, index) == ["jsmith", "BOB02"]
    assert mentioned_identifiers(text, index) == ["123456789", "BOBC"]
    assert mentioned_identifiers("bobc is not a code here", index) == []


def test_the_index_stays_fast_with_100000_users():
    index = DirectoryIndex.build((f"USER{i:06d}", f"{i % 90 + 10:02d}-{i:07d}") for i in range(100_000))
    text = "Hello, please unlock my account. " * 50 + "My colleague USER054321 too, EIN 61-0054321."
    started = time.perf_counter()
    for _ in range(100):
        users = mentioned_user_ids(text, index)
        ids = mentioned_identifiers(text, index)
    per_message = (time.perf_counter() - started) / 100
    assert users == ["USER054321"] and ids == ["610054321"]
    assert per_message < 0.01, f"{per_message * 1000:.1f} ms a message"


@pytest.mark.parametrize("body, check", [
    ("Please reset the password of my user jsmith.", "other_users_userid"),
    ("Necesito la contraseña para mi jefe.", "request_for_another"),
    ("Our IOR is 123 45 6789, password please.", "other_company_identifier"),
])
def test_requests_about_somebody_else_are_a_mismatch(body, check):
    from responders.verify import Directory, UserRecord

    directory = Directory(users=(UserRecord("ALICE01", "alice@broker.example", identifier="K4M",
                                            account_owner_email="owner@broker.example"),
                                 UserRecord("jsmith", "jsmith@other.example", identifier="123-45-6789",
                                            account_owner_email="jsmith@other.example")),
                          domains=frozenset({"broker.example", "other.example"}))
    out = triage(mail(body=body), directory=directory)
    assert out["verification"]["status"] == "mismatch"
    assert check in [f["check"] for f in out["verification"]["findings"]]
    assert out["action"]["template"] not in ("password_reset", "account_locked")


def test_an_account_owner_asking_for_their_user_is_not_answered_seed_001():
    from responders.verify import Directory, UserRecord

    directory = Directory(users=(UserRecord("OWNER01", "owner@broker.example", account_owner_email="owner@broker.example"),
                                 UserRecord("ALICE01", "alice@broker.example", account_owner_email="owner@broker.example")),
                          domains=frozenset({"broker.example"}))
    out = triage(mail(sender="owner@broker.example", body="Please reset the password of ALICE01."),
                 directory=directory)
    assert out["verification"]["status"] == "mismatch"
    assert [f["check"] for f in out["verification"]["findings"]] == ["owner_for_user"]
    assert out["action"]["template"] == "security_neutral"


def test_checks_are_ordered_named_data():
    assert [name for name, _e, _d in describe(VERIFY)][:2] == ["forged_authentication_results",
                                                               "display_name_address"]
    assert "out_of_office" in [c.name for c in AUTOMATIC]
    assert [s.name for s in DECIDE][0] == "screened"
    # The pipeline table: automatic mail is screened at parse, before classify.
    assert PIPELINE[0][0] == "new" and "screened" in PIPELINE[0][2]
    assert [row[1] for row in PIPELINE].index("classify") > 0


@pytest.mark.parametrize("subject", ["Out of Office: Forgot my password", "Automatic reply: locked",
                                     "Respuesta automática: contraseña", "Fuera de la oficina"])
def test_out_of_office_subjects_without_rfc3834_headers_are_screened(subject):
    out = triage(mail(subject=subject))
    assert out["action"]["kind"] == "drop" and out["screen"] == "out_of_office"


def test_one_ssn_redaction_in_the_reply_subject_and_body():
    assert redact("IOR 123-45-6789 / 123 45 6789 / 123456789; EIN 12-3456789") == \
        "IOR ###-##-#### / ###-##-#### / ###-##-####; EIN 12-3456789"
    out = triage(mail(subject="password for IOR 123-45-6789"))
    assert "123-45-6789" not in out["reply"].subject and "###-##-####" in out["reply"].subject
    assert "123-45-6789" not in out["reply"].text


def test_html_table_cells_stay_apart():
    assert "UserID JSMITH01" in html_to_text("<table><tr><td>UserID</td><td>JSMITH01</td></tr></table>")


#: A throwaway 1024-bit test key (DKIM signatures of test messages only).
TEST_KEY = b"""-----BEGIN PRIVATE KEY-----
MIICeQIBADANBgkqhkiG9w0BAQEFAASCAmMwggJfAgEAAoGBAKbH4FngJWeZp8Po
0NDFMsZW1Xrs2wC/DTLke00EpNBDKHe8rd7Unb6ew06H1blTDDH0hRG0WIoVUYaY
wYjAlAfAmWiWTCz3SOZCZjXkwqdURCAbqi3rvqUwIHgV+Y8REFrWIJYdCjUebY01
kfL5IiSm4p6tfPsmGLS8tFeyUoqFAgMBAAECgYEAnczQATmLKpK/oSVPLbjnabIP
Gtev/uzFWDnGUADs0AA68c+b0xHojss4j70GAusIxttMbIvumffBw1AVDYboh0Yp
Cc7XHewAetafrLyDTyfoe+xhwfZBanSungFWvjkOSWCU7puiCLtxqyO2zZopLZv3
myAFDDWaysbk6M22NqECQQDST7+nAde+fI0T5oHtyGjSVWLp82rLHQmPX02rOgjF
/mXII0Nrz5wd1irkmLY5WlAhb5RbgMZLwcD7tuCpy6PfAkEAywM2GM2AHMOZycDJ
jDsYlAAYkAS3Ens5+NX2VP8Blmvh5zBJ3xolaiwEELFt0yPY3BfjBLtjWGlhVXPF
wt/+GwJBAMhfgtGzR8INGLylGZVbI8OB5sPPTyhFeh5HRtCkckdxobeVIV9OZgdn
TWaOuM7b5Qx2Knsjrcnvx9YK3vHnOzECQQC0VAfrhC72XfDvO2ZMP/oXDPbEhsuv
iPH3zObgnRtl6DJjz4ruuCTf6HU79r8dO8xXxIgNHf6i/AhPhWT3M0xdAkEAiUQY
SEQ3Q60C8a74gqqs5Ho/0Cqs0k2KnINi0DQvHGhJOmXmot2ajnZs+pwCxRoJOo7N
ZyhGnMbYD3+ykWeMNQ==
-----END PRIVATE KEY-----
"""
TEST_PUBLIC = b"MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQCmx+BZ4CVnmafD6NDQxTLGVtV67NsAvw0y5HtNBKTQQyh3vK3e1J2+nsNOh9W5Uwwx9IURtFiKFVGGmMGIwJQHwJlolkws90jmQmY15MKnVEQgG6ot676lMCB4FfmPERBa1iCWHQo1Hm2NNZHy+SIkpuKerXz7Jhi0vLRXslKKhQIDAQAB"


def test_every_dkim_signature_is_checked():
    import dkim

    pem = TEST_KEY
    record = b"v=DKIM1; k=rsa; p=" + TEST_PUBLIC
    raw = (b"From: alice@broker.example\r\nTo: helpdesk@ace-support.example\r\nSubject: hi\r\n\r\nbody\r\n")
    good = dkim.sign(raw, b"s1", b"broker.example", pem, include_headers=[b"from", b"subject"])
    # A first signature by an unrelated domain that fails, then ours that verifies.
    bad = dkim.sign(raw, b"s1", b"evil.example", pem, include_headers=[b"from"]).replace(b"b=", b"b=AAAA", 1)
    dns = {b"s1._domainkey.broker.example.": record, b"s1._domainkey.evil.example.": record}
    lookup = lambda name, timeout=5: dns.get(name, b"")  # noqa: E731
    assert dkim_check(bad + good + raw, "broker.example", dnsfunc=lookup) is True
    assert dkim_check(bad + raw, "broker.example", dnsfunc=lookup) is None      # nothing aligned
    # Ours, but the body was changed after signing: an aligned signature that fails.
    assert dkim_check(good + raw.replace(b"body", b"b0dy"), "broker.example", dnsfunc=lookup) is False


# --- total stages, budgets ------------------------------------------------------------------------


def test_a_pathological_from_never_raises():
    raw = b"From: " + b"(" * 20000 + b"x" + b")" * 20000 + b" <alice@broker.example>\r\nSubject: x\r\n\r\nhi\r\n"
    assert parse_message(raw).sender == "alice@broker.example"


def test_the_time_and_memory_budgets_quarantine_with_a_reason():
    raw = mail()
    with pytest.raises(Unparseable) as caught:
        parse_within_budget(raw, seconds=0.0)
    assert caught.value.reason == "over_time_budget"
    with pytest.raises(Unparseable) as caught:
        parse_within_budget(raw, memory=len(raw))
    assert caught.value.reason == "over_memory_budget"
    assert parse_within_budget(raw).sender == "alice@broker.example"


def test_a_crash_in_a_stage_is_a_quarantine_record_and_the_next_message_goes_on(sessions, engine, config_factory,
                                                                                 monkeypatch):
    from responders import service

    config = config_factory(engine.url.render_as_string(hide_password=False))
    ctx = make_ctx(config, engine)
    import_users(sessions)
    real = service.plan_row

    def poisoned(responder, row, msg, *args, **kwargs):
        if "poison" in msg.subject:
            raise RecursionError("maximum recursion depth exceeded")
        return real(responder, row, msg, *args, **kwargs)

    monkeypatch.setattr(service, "plan_row", poisoned)
    with transaction(sessions) as s:
        insert_messages(s, [NewMessage(DESK, "cli", mail(subject="poison password")),
                            NewMessage(DESK, "cli", mail(subject="Forgot my password", msgid="<ok@broker.example>"))])
    drain(sessions, stages(ctx), PipelineConfig())
    with sessions() as s:
        states = dict(s.execute(select(InboundMessage.id, InboundMessage.state)).all())
        record = s.scalars(select(QuarantineRecord)).one()
    assert sorted(states.values()) == [DONE, QUARANTINED]
    assert record.reason == "respond_error" and "RecursionError" in record.detail


def test_duplicates_by_line_endings_and_message_id_are_stored_not_answered_twice(sessions, engine, config_factory):
    config = config_factory(engine.url.render_as_string(hide_password=False))
    ctx = make_ctx(config, engine)
    import_users(sessions)
    crlf = mail(msgid="<same@broker.example>")
    with transaction(sessions) as s:
        new = insert_messages(s, [NewMessage(DESK, "cli", crlf),
                                  NewMessage(DESK, "cli", crlf.replace(b"\r\n", b"\n")),
                                  # The same Message-ID from the same sender, arriving another way.
                                  NewMessage(DESK, "cli", b"X-Resent: yes\r\n" + crlf)])
    assert new == 2
    drain(sessions, stages(ctx), PipelineConfig())
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(OutboxMessage)) == 1
        assert s.scalar(select(func.count()).select_from(Ticket)) == 1
        actions = sorted(r.action for r in s.scalars(select(ResponseRecord)))
        dup = s.scalars(select(ResponseRecord).where(ResponseRecord.action == "drop")).one()
    assert actions == ["drop", "reply"] and dup.screen.startswith("duplicate:")


# --- the ingress as the border ------------------------------------------------------------------


def test_with_ingress_border_no_client_written_authentication_results_verifies(tmp_path, sqlite_url, config_factory):
    import asyncio
    import threading

    from daemon.context import AppContext
    from daemon.intake.ingress import make_components
    from models.migrate import upgrade
    from models.session import make_engine, make_sessionmaker

    config = config_factory(sqlite_url, ingress={"border": True, "hostname": "mx.ace-support.example"})
    engine = make_engine(sqlite_url)
    upgrade(engine)
    ctx = AppContext(config=config, engine=engine, sessions=make_sessionmaker(engine), instance="test")
    import_users(ctx.sessions)
    ingress = make_components(ctx)[0]
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    thread = threading.Thread(target=lambda: loop.run_until_complete(ingress.run(stop)), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while ingress.port is None:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        # The client writes a passing AR *and* a Received line naming our border: both are below ours.
        with smtplib.SMTP("127.0.0.1", ingress.port) as client:
            client.sendmail("alice@broker.example", [DESK], mail())
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
    drain(ctx.sessions, stages(ctx), PipelineConfig())
    with ctx.sessions() as s:
        raw = s.scalars(select(InboundMessage.raw)).one()
        record = s.scalars(select(ResponseRecord)).one()
    assert raw.startswith(b"Received: from ") and b"by mx.ace-support.example (acedesk)" in raw[:300]
    assert record.verification == "unauthenticated" and record.template == "security_neutral"
    assert any(r.startswith("forged_authentication_results") for r in record.verification_reasons)
    engine.dispose()
