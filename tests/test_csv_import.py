"""CSV imports as operators meet them: a malformed row is refused with its line
number (an unclosed quote never swallows the rows below it into a name), the
good rows still go in, and a file separated by semicolons or tabs is
recognised and refused with what to do."""

from __future__ import annotations

from csms.subscribers import parse_subscribers_csv
from models.csvfile import read_rows
from responders.users import parse_users_csv

HEADER = "user_id,email,name,role,identifier,account_owner_email,language\n"


def test_an_unclosed_quote_is_an_error_on_its_line_and_the_next_rows_still_count() -> None:
    text = (HEADER + 'ALICE01,alice@broker.example,"Alice Broker,broker,K4M,owner@broker.example,en\n'
            + "BOB02,bob@carrier.example,Bob Carrier,carrier,ABCD,bob@carrier.example,en\n")
    rows, errors = parse_users_csv(text)
    assert [(e.line, "quote" in e.message) for e in errors] == [(2, True)]
    assert [(line, r.user_id, r.name) for line, r in rows] == [(3, "BOB02", "Bob Carrier")]


def test_a_semicolon_separated_file_is_refused_with_what_to_do() -> None:
    rows, errors = parse_users_csv(HEADER.replace(",", ";") + "ALICE01;alice@broker.example;Alice;;;;en\n")
    assert rows == [] and len(errors) == 1
    assert errors[0].line == 1 and "semicolons" in errors[0].message and "comma" in errors[0].message
    rows, problems = parse_subscribers_csv("email\ttopics\tlanguage\njo@broker.example\tACE\ten\n")
    assert rows == [] and [(p.line, "tabs" in p.message) for p in problems] == [(1, True)]


def test_subscriber_rows_keep_their_line_numbers() -> None:
    rows, problems = parse_subscribers_csv(
        'email,topics,language\njo@broker.example,ACE,en\n\n"ann@x.example,ACE,en\nbad,ACE,en\n')
    assert [r[:2] for r in rows] == [(2, "jo@broker.example")]
    assert [p.line for p in problems] == [4, 5]


def test_too_many_fields_names_the_counts() -> None:
    parsed = read_rows("a,b\n1,2,3\n", ("a", "b"))
    assert parsed.records == [] and parsed.errors == [(2, "3 fields, but the header names 2")]
