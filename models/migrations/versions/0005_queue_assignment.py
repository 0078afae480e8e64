"""responders: who works a triage item (``acedesk queue claim|assign``)

Revision ID: 0005
Revises: 0003
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("triage_items") as batch:
        batch.add_column(sa.Column("assigned_to", sa.String(200), nullable=True))
        batch.add_column(sa.Column("assigned_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("triage_items") as batch:
        batch.drop_column("assigned_at")
        batch.drop_column("assigned_to")
