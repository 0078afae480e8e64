"""CSMS pages for publishers."""

from __future__ import annotations


def routes() -> list:
    return []
