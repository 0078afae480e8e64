"""core: mailboxes, inbound messages, quarantine, audit log

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = ("core",)
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "mailboxes",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("uidvalidity", sa.BigInteger()),
        sa.Column("last_uid", sa.BigInteger(), nullable=False),
        sa.Column("lease_owner", sa.String(200)),
        sa.Column("lease_until", TS),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_mailboxes"),
        sa.UniqueConstraint("name", name="uq_mailboxes_name"),
    )
    op.create_table(
        "inbound_messages",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("desk", sa.String(320), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("mailbox_id", sa.Integer(), sa.ForeignKey("mailboxes.id", name="fk_inbound_messages_mailbox_id_mailboxes")),
        sa.Column("uidvalidity", sa.BigInteger()),
        sa.Column("uid", sa.BigInteger()),
        sa.Column("envelope_from", sa.String(998)),
        sa.Column("envelope_to", JSON),
        sa.Column("raw", sa.LargeBinary(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("message_id", sa.String(998)),
        sa.Column("received_at", TS, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", TS),
        sa.Column("error", sa.Text()),
        sa.Column("parsed", JSON),
        sa.Column("label", sa.String(64)),
        sa.Column("confidence", sa.Float()),
        sa.Column("auto", sa.Boolean()),
        sa.Column("model_version", sa.String(64)),
        sa.Column("language", sa.String(8)),
        sa.Column("identifiers", JSON),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_inbound_messages"),
        sa.UniqueConstraint("desk", "sha256", name="uq_inbound_messages_desk_sha256"),
        sa.UniqueConstraint("mailbox_id", "uidvalidity", "uid", name="uq_inbound_messages_mailbox_id_uidvalidity_uid"),
    )
    op.create_index("ix_inbound_state_next", "inbound_messages", ["state", "next_attempt_at"])
    op.create_index("ix_inbound_messages_message_id", "inbound_messages", ["message_id"])
    op.create_table(
        "quarantine",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("message_id", sa.Integer(), sa.ForeignKey("inbound_messages.id", name="fk_quarantine_message_id_inbound_messages"), nullable=False),
        sa.Column("reason", sa.String(64), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("resolved_at", TS),
        sa.Column("resolved_by", sa.String(200)),
        sa.PrimaryKeyConstraint("id", name="pk_quarantine"),
    )
    op.create_index("ix_quarantine_message_id", "quarantine", ["message_id"])
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("subject_type", sa.String(64), nullable=False),
        sa.Column("subject_id", sa.String(64), nullable=False),
        sa.Column("detail", JSON),
        sa.PrimaryKeyConstraint("id", name="pk_audit_log"),
    )
    op.create_index("ix_audit_log_at", "audit_log", ["at"])


def downgrade() -> None:
    op.drop_table("audit_log")
    op.drop_table("quarantine")
    op.drop_table("inbound_messages")
    op.drop_table("mailboxes")
