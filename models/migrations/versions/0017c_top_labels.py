"""classification: the classifier's three likeliest labels kept on each message

Revision ID: 0017c
Revises: 0002
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0017c"
down_revision = "0002"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    # Nullable: messages classified before keep no ranking (the console says so).
    with op.batch_alter_table("inbound_messages") as batch:
        batch.add_column(sa.Column("top_labels", JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("inbound_messages") as batch:
        batch.drop_column("top_labels")
