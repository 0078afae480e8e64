"""classification: analysts' label corrections

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = ("classification",)
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "label_corrections",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("message_id", sa.Integer(),
                  sa.ForeignKey("inbound_messages.id", name="fk_label_corrections_message_id_inbound_messages",
                                ondelete="CASCADE"),
                  nullable=False),
        sa.Column("label", sa.String(64), nullable=False),
        sa.Column("previous_label", sa.String(64)),
        sa.Column("model_version", sa.String(64)),
        sa.Column("corrected_by", sa.String(200), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_label_corrections"),
    )
    op.create_index("ix_label_corrections_message_id", "label_corrections", ["message_id"])
    op.create_index("ix_label_corrections_created_at", "label_corrections", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_label_corrections_created_at", table_name="label_corrections")
    op.drop_index("ix_label_corrections_message_id", table_name="label_corrections")
    op.drop_table("label_corrections")
