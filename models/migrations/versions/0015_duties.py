"""duties: knowledge articles, outage incidents and their reports; account
status on users; escalation on tickets

Revision ID: 0015
Revises: 0003
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0015"
down_revision = "0003"
branch_labels = ("duties",)
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "articles",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("language", sa.String(8), nullable=False),
        sa.Column("title", sa.String(300), nullable=False),
        sa.Column("url", sa.String(2000), nullable=False),
        sa.Column("labels", JSON, nullable=False),
        sa.Column("last_reviewed", sa.Date()),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("retired_at", TS),
        sa.Column("retired_by", sa.String(200)),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_articles"),
        sa.UniqueConstraint("key", "language", name="uq_articles_key_language"),
    )
    op.create_table(
        "incidents",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("number", sa.String(32)),
        sa.Column("title", sa.String(300), nullable=False),
        sa.Column("label", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("open_key", sa.String(64)),
        sa.Column("opened_at", TS, nullable=False),
        sa.Column("opened_by", sa.String(200), nullable=False),
        sa.Column("trigger", JSON),
        sa.Column("alert_outbox_id", sa.Integer()),
        sa.Column("csms_notice_id", sa.Integer()),
        sa.Column("closed_at", TS),
        sa.Column("closed_by", sa.String(200)),
        sa.Column("resolution", sa.Text()),
        sa.Column("followups_sent", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_incidents"),
        sa.UniqueConstraint("number", name="uq_incidents_number"),
        sa.UniqueConstraint("open_key", name="uq_incidents_open_key"),
    )
    op.create_table(
        "incident_reports",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("incident_id", sa.Integer(),
                  sa.ForeignKey("incidents.id", name="fk_incident_reports_incident_id_incidents"), nullable=False),
        sa.Column("inbound_message_id", sa.Integer()),
        sa.Column("ticket_id", sa.Integer()),
        sa.Column("requester", sa.String(320), nullable=False),
        sa.Column("language", sa.String(8), nullable=False),
        sa.Column("outbox_id", sa.Integer()),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_incident_reports"),
        sa.UniqueConstraint("inbound_message_id", name="uq_incident_reports_inbound_message_id"),
        sa.UniqueConstraint("ticket_id", name="uq_incident_reports_ticket_id"),
    )
    op.create_index("ix_incident_reports_incident_id", "incident_reports", ["incident_id"])
    op.create_index("ix_inbound_label_received", "inbound_messages", ["label", "received_at"])
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("status", sa.String(16), nullable=False, server_default="active"))
        batch.add_column(sa.Column("status_reason", sa.Text()))
        batch.add_column(sa.Column("status_by", sa.String(200)))
        batch.add_column(sa.Column("status_at", TS))
    with op.batch_alter_table("users") as batch:
        # The default was for the rows already there; the ORM sets it from now on.
        batch.alter_column("status", server_default=None)
    with op.batch_alter_table("tickets") as batch:
        batch.add_column(sa.Column("escalated_at", TS))
        batch.add_column(sa.Column("escalated_to", sa.String(320)))


def downgrade() -> None:
    with op.batch_alter_table("tickets") as batch:
        batch.drop_column("escalated_to")
        batch.drop_column("escalated_at")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("status_at")
        batch.drop_column("status_by")
        batch.drop_column("status_reason")
        batch.drop_column("status")
    op.drop_index("ix_inbound_label_received", table_name="inbound_messages")
    op.drop_table("incident_reports")
    op.drop_table("incidents")
    op.drop_table("articles")
