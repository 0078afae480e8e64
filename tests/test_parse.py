"""Parsing: charsets, encoded words, HTML, quoted history, and refusal of non-mail."""

from __future__ import annotations

import pytest

from daemon.intake.parse import Unparseable, parse_message


def mail(headers: str, body: bytes, ctype: str = "text/plain; charset=utf-8", cte: str = "8bit") -> bytes:
    head = (f"From: =?UTF-8?Q?Ana_P=C3=A9rez?= <ana@example.com>\r\nTo: ayuda@ace-support.example\r\n{headers}"
            f"MIME-Version: 1.0\r\nContent-Type: {ctype}\r\nContent-Transfer-Encoding: {cte}\r\n\r\n")
    return head.encode("ascii") + body


def test_rfc2047_subject_split_over_several_encoded_words_is_joined():
    raw = mail("Subject: =?UTF-8?B?Q29udHJhc2XDsWEg?=\r\n =?UTF-8?Q?olvidada_y_cuenta_bloqueada?=\r\n", b"hola")
    assert parse_message(raw).subject == "Contraseña olvidada y cuenta bloqueada"


def test_iso_2022_jp_body_and_subject_are_decoded():
    body = "パスワードを忘れました".encode("iso2022_jp")
    raw = mail("Subject: =?ISO-2022-JP?B?GyRCJVElOSVvITwlSRsoQg==?=\r\n", body,
               ctype="text/plain; charset=ISO-2022-JP", cte="7bit")
    parsed = parse_message(raw)
    assert parsed.subject == "パスワード"
    assert parsed.text == "パスワードを忘れました"


def test_windows_1252_body_is_decoded():
    body = "Mi contraseña “expiró” — ¿qué hago?".encode("cp1252")
    parsed = parse_message(mail("Subject: ayuda\r\n", body, ctype="text/plain; charset=windows-1252"))
    assert parsed.text == "Mi contraseña “expiró” — ¿qué hago?"


def test_missing_charset_with_utf8_bytes_is_read_as_utf8():
    body = "No puedo entrar al portal, la contraseña no funciona".encode("utf-8")
    parsed = parse_message(mail("Subject: x\r\n", body, ctype="text/plain"))
    assert "contraseña" in parsed.text


def test_wrong_charset_declaration_falls_back_to_what_fits():
    # Declared us-ascii, really UTF-8: a frequent client bug.
    body = "Año fiscal: el reembolso por ACH no llegó".encode("utf-8")
    parsed = parse_message(mail("Subject: x\r\n", body, ctype="text/plain; charset=us-ascii"))
    assert "Año fiscal" in parsed.text and "llegó" in parsed.text


def test_latin1_bytes_declared_utf8_are_not_lost():
    body = "Señores, la cuenta está bloqueada".encode("latin-1")
    parsed = parse_message(mail("Subject: x\r\n", body, ctype="text/plain; charset=utf-8"))
    assert "cuenta" in parsed.text and "bloqueada" in parsed.text
    assert any("did not fit" in d for d in parsed.defects)


def test_html_only_message_becomes_text_without_markup_or_scripts():
    body = (b"<html><head><style>p{color:red}</style><script>alert(1)</script></head><body>"
            b"<p>My ACE account is <b>locked</b>.</p><p>UserID&nbsp;jdoe01</p></body></html>")
    parsed = parse_message(mail("Subject: locked\r\n", body, ctype="text/html; charset=utf-8"))
    assert "My ACE account is locked." in parsed.text
    assert "jdoe01" in parsed.text
    assert "alert" not in parsed.text and "color" not in parsed.text and "<" not in parsed.text


def test_quoted_history_and_signature_are_set_apart():
    body = (b"I still cannot log in, please unlock my account.\r\n\r\nRegards,\r\nJohn Smith\r\n"
            b"Acme Brokers\r\n\r\nOn Tue, Mar 3, 2026 at 9:14 AM ACE Support <helpdesk@ace-support.example> wrote:\r\n"
            b"> Please contact your Account Owner about the ACH refund enrolment.\r\n")
    parsed = parse_message(mail("Subject: Re: locked\r\n", body))
    assert parsed.new_text == "I still cannot log in, please unlock my account."
    assert "ACH refund" in parsed.quoted_text
    assert parsed.signature.startswith("Regards,")


def test_thread_headers_and_addresses_are_normalised():
    raw = mail("Subject: Re: [ACE-2026-000123] help\r\nMessage-ID: <a1@example.com>\r\n"
               "In-Reply-To: <r1@ace-support.example>\r\nReferences: <r0@x> <r1@ace-support.example>\r\n"
               "Reply-To: Other <OTHER@Example.NET>\r\n", b"thanks")
    parsed = parse_message(raw, envelope_from="")
    assert parsed.sender == "ana@example.com" and parsed.sender_name == "Ana Pérez"
    assert parsed.reply_to == ["other@example.net"]
    assert parsed.message_id == "<a1@example.com>"
    assert parsed.in_reply_to == "<r1@ace-support.example>"
    assert parsed.references == ["<r0@x>", "<r1@ace-support.example>"]
    assert parsed.return_path == ""  # the null path <> is kept as such, for screening


def test_crlf_cannot_travel_from_a_header_into_the_record():
    raw = mail("Subject: =?UTF-8?Q?hello=0D=0ABcc:_victim@example.org?=\r\n", b"x")
    assert "\n" not in parse_message(raw).subject and "\r" not in parse_message(raw).subject


def test_attachments_are_listed_not_opened():
    raw = (b"From: a@example.com\r\nSubject: 7501\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: multipart/mixed; boundary=XX\r\n\r\n--XX\r\nContent-Type: text/plain\r\n\r\n"
           b"See attached entry summary.\r\n--XX\r\nContent-Type: application/pdf; name=\"7501.pdf\"\r\n"
           b"Content-Disposition: attachment; filename=\"7501.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\n"
           b"JVBERi0xLjQKJcfsj6IK\r\n--XX--\r\n")
    parsed = parse_message(raw)
    assert parsed.text.strip() == "See attached entry summary."
    assert [(a.filename, a.content_type) for a in parsed.attachments] == [("7501.pdf", "application/pdf")]


@pytest.mark.parametrize("raw,reason", [
    (b"", "empty"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 100, "not_rfc5322"),
    (b"// Not an RFC-822 Document\n", "no_headers"),
    (b"Content-Type: text/plain\r\n\r\nno sender at all\r\n", "no_sender"),
])
def test_input_that_is_not_a_mail_is_refused_with_a_reason(raw, reason):
    with pytest.raises(Unparseable) as info:
        parse_message(raw)
    assert info.value.reason == reason
