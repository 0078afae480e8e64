"""Command-line subcommands of this area (not built yet)."""

from __future__ import annotations

import argparse


def register(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add this area's subcommands to ``acedesk``."""
