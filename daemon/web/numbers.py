"""The desk's numbers."""

from __future__ import annotations


def routes() -> list:
    return []
