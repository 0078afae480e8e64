"""csms: deliveries claimed in chunks by the fan-out's sender processes (and
instances), each claim with an owner and a lease

Revision ID: 0004b
Revises: 0004a
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

TS = sa.DateTime(timezone=True)

revision = "0004b"
down_revision = "0004a"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("csms_deliveries") as batch:
        # Who is sending the delivery now (``host:pid/...``: a dead one's claim is taken back at
        # once on its host) and until when (another host takes it back after that).
        batch.add_column(sa.Column("claim_owner", sa.String(200)))
        batch.add_column(sa.Column("claim_until", TS))


def downgrade() -> None:
    with op.batch_alter_table("csms_deliveries") as batch:
        batch.drop_column("claim_until")
        batch.drop_column("claim_owner")
