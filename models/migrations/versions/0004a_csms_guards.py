"""csms: notices held for their translation, the language each delivery was
sent in, complaints (ARF) recorded with the bounces

Revision ID: 0004a
Revises: 0004
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004a"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("csms_notices") as batch:
        batch.add_column(sa.Column("hold_for_translation", sa.Boolean(), nullable=False,
                                   server_default=sa.false()))
    with op.batch_alter_table("csms_deliveries") as batch:
        batch.add_column(sa.Column("language", sa.String(8)))
    with op.batch_alter_table("csms_bounces") as batch:
        batch.alter_column("kind", type_=sa.String(16), existing_type=sa.String(8), existing_nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("csms_bounces") as batch:
        batch.alter_column("kind", type_=sa.String(8), existing_type=sa.String(16), existing_nullable=False)
    with op.batch_alter_table("csms_deliveries") as batch:
        batch.drop_column("language")
    with op.batch_alter_table("csms_notices") as batch:
        batch.drop_column("hold_for_translation")
