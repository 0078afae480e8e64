"""Small named checks and the chains that run them (Mailman's rules -> chains).

A :class:`Check` is a name, what finding it means (its ``effect``), and a
pure test that returns ``None`` (nothing found) or a detail.  A chain is an
ordered tuple of checks, written out where it is used (``screen.SCREEN``,
``verify.VERIFY``, ``policy.DECIDE``) so the whole policy reads on one
screen; :func:`run` returns one :class:`Finding` per check that fired, in
chain order.  Findings are data (check, effect, detail): the records, the
triage JSON and the queue show them as they are, and nothing downstream
searches prose.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Finding:
    """One check that fired: its name, its effect, and what it saw."""

    check: str
    effect: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.check}: {self.detail}" if self.detail else self.check

    def to_dict(self) -> dict[str, str]:
        return {"check": self.check, "effect": self.effect, "detail": self.detail}


@dataclass(frozen=True)
class Check(Generic[T]):
    """A named predicate over ``T``: ``test`` returns None, or a detail (``""`` when none is needed)."""

    name: str
    effect: str
    test: Callable[[T], str | None]
    description: str = ""


def run(chain: Sequence[Check[T]], subject: T) -> tuple[Finding, ...]:
    """Return the findings of ``chain`` over ``subject``, in chain order."""
    found: list[Finding] = []
    for check in chain:
        detail = check.test(subject)
        if detail is not None:
            found.append(Finding(check.name, check.effect, detail))
    return tuple(found)


def with_effect(findings: Sequence[Finding], effect: str) -> list[Finding]:
    """Return the findings of ``effect``."""
    return [f for f in findings if f.effect == effect]


def describe(chain: Sequence[Check[Any]]) -> list[tuple[str, str, str]]:
    """Return ``(name, effect, description)`` of each check: the chain as a table, for docs and tests."""
    return [(c.name, c.effect, c.description) for c in chain]
