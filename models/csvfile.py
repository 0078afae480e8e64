"""Reading the CSV files operators import (users on file, CSMS subscribers):
each record is one line, numbered as an editor numbers it, so that every
problem can name its line.  A line with an unclosed or stray quote is an
error on that line, never a name that runs on into the rows below it; a file
separated by ``;`` or tabs is recognised from its header and refused with
what to do."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass

_OTHER_DELIMITERS = {";": "semicolons", "\t": "tabs", "|": "vertical bars"}


@dataclass(frozen=True)
class CsvRows:
    """The header (lower-cased), the records with their line numbers, and the lines refused."""

    header: list[str]
    records: list[tuple[int, dict[str, str]]]
    errors: list[tuple[int, str]]


def _fields(line: str) -> list[str]:
    """One line's fields; raises csv.Error on an unclosed or stray quote."""
    return next(csv.reader([line], strict=True), [])


def read_rows(text: str, expected: Sequence[str]) -> CsvRows:
    """Return the records of ``text`` keyed by its header; ``expected`` names the columns a header may use.

    A header that is not comma-separated while another delimiter would give
    the expected columns yields one error on line 1 and no records.
    """
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = text.splitlines()
    if not lines:
        return CsvRows([], [], [(1, f"the file is empty: expected a header row {','.join(expected)}")])
    try:
        header = [h.strip().lower() for h in _fields(lines[0])]
    except csv.Error:
        return CsvRows([], [], [(1, "the header row has an unclosed quote")])
    if len(header) == 1:
        for delimiter, name in _OTHER_DELIMITERS.items():
            split = [h.strip().lower() for h in lines[0].split(delimiter)]
            if len(split) > 1 and set(split) & set(expected):
                return CsvRows([], [], [(1, f"the columns are separated by {name}, not commas: save the file as "
                                            f"comma-separated values (CSV) with the header {','.join(expected)}")])
    records: list[tuple[int, dict[str, str]]] = []
    errors: list[tuple[int, str]] = []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        try:
            values = _fields(line)
        except csv.Error:
            errors.append((number, "a quote is opened and not closed (or a stray quote inside a field)"))
            continue
        if len(values) > len(header):
            errors.append((number, f"{len(values)} fields, but the header names {len(header)}"))
            continue
        records.append((number, {name: (values[i] if i < len(values) else "").strip()
                                 for i, name in enumerate(header)}))
    return CsvRows(header, records, errors)
