"""console: analyst accounts, web sessions, who a triage item is assigned to, tickets by due time

Revision ID: 0013
Revises: 0003
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
# On the responders' branch: triage_items comes from 0003.
down_revision = "0003"
branch_labels = ("console",)
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "analysts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("password_hash", sa.String(200), nullable=False),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("last_login_at", TS),
        sa.PrimaryKeyConstraint("id", name="pk_analysts"),
        sa.UniqueConstraint("name", name="uq_analysts_name"),
    )
    op.create_table(
        "web_sessions",
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("analyst_id", sa.Integer(), nullable=False),
        sa.Column("csrf", sa.String(64), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.ForeignKeyConstraint(["analyst_id"], ["analysts.id"], name="fk_web_sessions_analyst_id_analysts",
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("token_hash", name="pk_web_sessions"),
    )
    op.create_index("ix_web_sessions_analyst_id", "web_sessions", ["analyst_id"])
    op.create_index("ix_web_sessions_expires_at", "web_sessions", ["expires_at"])
    with op.batch_alter_table("triage_items") as batch:
        batch.add_column(sa.Column("assigned_to", sa.String(200)))
    op.create_index("ix_tickets_due_at", "tickets", ["due_at"])


def downgrade() -> None:
    op.drop_index("ix_tickets_due_at", "tickets")
    with op.batch_alter_table("triage_items") as batch:
        batch.drop_column("assigned_to")
    op.drop_index("ix_web_sessions_expires_at", "web_sessions")
    op.drop_index("ix_web_sessions_analyst_id", "web_sessions")
    op.drop_table("web_sessions")
    op.drop_table("analysts")
