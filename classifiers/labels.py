"""The label set: the taxonomy's names, verbatim (a contract with the policy
table and outside evaluation; see ``taxonomy.md``)."""

from __future__ import annotations

LABELS: tuple[str, ...] = (
    "account_locked",
    "password_reset",
    "account_setup",
    "account_management",
    "system_status",
    "third_party_software",
    "export_aesdirect",
    "pga_access",
    "entry_summary",
    "cargo_release",
    "ace_reports",
    "ach_refund",
    "notify_party",
    "csms_subscription",
    "other",
)

#: The label for "none of the above"; also what an empty message gets.
OTHER = "other"

LANGUAGES: tuple[str, ...] = ("en", "es")


def check_label(label: str) -> str:
    """Return ``label`` if it is in the taxonomy, else raise ``ValueError``."""
    if label not in LABELS:
        raise ValueError(f"unknown label {label!r}; expected one of {', '.join(LABELS)}")
    return label
