"""csms: notices and their counter, topics, subscribers, subscriptions,
pending confirmations, deliveries, bounce events, the control-mail ledger

Revision ID: 0004
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0004"
down_revision = "0001"
branch_labels = ("csms",)
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "csms_counters",
        sa.Column("name", sa.String(32), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_csms_counters"),
    )
    op.create_table(
        "csms_notices",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("number", sa.BigInteger()),
        sa.Column("title", sa.String(500), nullable=False),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("tags", JSON, nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("topics", JSON, nullable=False),
        sa.Column("related", JSON, nullable=False),
        sa.Column("language", sa.String(8), nullable=False),
        sa.Column("translation_of_id", sa.Integer(),
                  sa.ForeignKey("csms_notices.id", name="fk_csms_notices_translation_of_id_csms_notices")),
        sa.Column("parent_id", sa.Integer(),
                  sa.ForeignKey("csms_notices.id", name="fk_csms_notices_parent_id_csms_notices")),
        sa.Column("event", JSON),
        sa.Column("author", sa.String(200), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("scheduled_at", TS),
        sa.Column("published_at", TS),
        sa.Column("finished_at", TS),
        sa.Column("late", sa.Boolean(), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("lease_owner", sa.String(200)),
        sa.Column("lease_until", TS),
        sa.PrimaryKeyConstraint("id", name="pk_csms_notices"),
        sa.UniqueConstraint("number", name="uq_csms_notices_number"),
    )
    op.create_index("ix_csms_notices_status_scheduled", "csms_notices", ["status", "scheduled_at"])
    op.create_index("ix_csms_notices_translation_of_id", "csms_notices", ["translation_of_id"])
    op.create_index("ix_csms_notices_parent_id", "csms_notices", ["parent_id"])
    op.create_table(
        "csms_topics",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_csms_topics"),
        sa.UniqueConstraint("name", name="uq_csms_topics_name"),
    )
    op.create_table(
        "csms_subscribers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("language", sa.String(8), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_csms_subscribers"),
        sa.UniqueConstraint("email", name="uq_csms_subscribers_email"),
    )
    op.create_table(
        "csms_subscriptions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("subscriber_id", sa.Integer(),
                  sa.ForeignKey("csms_subscribers.id", name="fk_csms_subscriptions_subscriber_id_csms_subscribers",
                                ondelete="CASCADE"), nullable=False),
        sa.Column("topic_id", sa.Integer(),
                  sa.ForeignKey("csms_topics.id", name="fk_csms_subscriptions_topic_id_csms_topics",
                                ondelete="CASCADE"), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_csms_subscriptions"),
        sa.UniqueConstraint("subscriber_id", "topic_id", name="uq_csms_subscriptions_subscriber_id_topic_id"),
    )
    op.create_index("ix_csms_subscriptions_topic_id", "csms_subscriptions", ["topic_id"])
    op.create_table(
        "csms_pending",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("topics", JSON, nullable=False),
        sa.Column("language", sa.String(8), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("confirmed_at", TS),
        sa.Column("inbound_message_id", sa.Integer()),
        sa.PrimaryKeyConstraint("id", name="pk_csms_pending"),
    )
    op.create_index("ix_csms_pending_email", "csms_pending", ["email"])
    op.create_table(
        "csms_deliveries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("notice_id", sa.Integer(),
                  sa.ForeignKey("csms_notices.id", name="fk_csms_deliveries_notice_id_csms_notices",
                                ondelete="CASCADE"), nullable=False),
        sa.Column("subscriber_id", sa.Integer(),
                  sa.ForeignKey("csms_subscribers.id", name="fk_csms_deliveries_subscriber_id_csms_subscribers",
                                ondelete="CASCADE"), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", TS),
        sa.Column("first_attempt_at", TS),
        sa.Column("sent_at", TS),
        sa.Column("last_error", sa.Text()),
        sa.PrimaryKeyConstraint("id", name="pk_csms_deliveries"),
        sa.UniqueConstraint("notice_id", "subscriber_id", name="uq_csms_deliveries_notice_id_subscriber_id"),
    )
    op.create_index("ix_csms_deliveries_notice_status", "csms_deliveries", ["notice_id", "status", "id"])
    op.create_index("ix_csms_deliveries_subscriber_id", "csms_deliveries", ["subscriber_id"])
    op.create_table(
        "csms_bounces",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("subscriber_id", sa.Integer(),
                  sa.ForeignKey("csms_subscribers.id", name="fk_csms_bounces_subscriber_id_csms_subscribers",
                                ondelete="CASCADE"), nullable=False),
        sa.Column("notice_number", sa.BigInteger()),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("source", sa.String(8), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("status_code", sa.String(16), nullable=False),
        sa.Column("diagnostic", sa.Text(), nullable=False),
        sa.Column("inbound_message_id", sa.Integer()),
        sa.Column("received_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_csms_bounces"),
    )
    op.create_index("ix_csms_bounces_subscriber_id", "csms_bounces", ["subscriber_id"])
    op.create_table(
        "csms_mail",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("rcpt", sa.String(320), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("inbound_message_id", sa.Integer()),
        sa.Column("outbox_id", sa.Integer()),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_csms_mail"),
    )
    op.create_index("ix_csms_mail_rcpt", "csms_mail", ["rcpt"])
    op.create_index("ix_csms_mail_created_at", "csms_mail", ["created_at"])


def downgrade() -> None:
    op.drop_table("csms_mail")
    op.drop_table("csms_bounces")
    op.drop_table("csms_deliveries")
    op.drop_table("csms_pending")
    op.drop_table("csms_subscriptions")
    op.drop_table("csms_subscribers")
    op.drop_table("csms_topics")
    op.drop_table("csms_notices")
    op.drop_table("csms_counters")
