"""responders: users, tickets, ticket messages, triage queue, response records,
auto-reply log, and the outbox

Revision ID: 0003
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0001"
branch_labels = ("responders",)
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.String(64), nullable=False),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("identifier", sa.String(64), nullable=False),
        sa.Column("account_owner_email", sa.String(320), nullable=False),
        sa.Column("language", sa.String(8), nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_users"),
        sa.UniqueConstraint("user_id", name="uq_users_user_id"),
    )
    op.create_index("ix_users_email", "users", ["email"])
    op.create_index("ix_users_identifier", "users", ["identifier"])
    op.create_table(
        "tickets",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("number", sa.String(32)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("priority", sa.String(16), nullable=False),
        sa.Column("label", sa.String(64)),
        sa.Column("language", sa.String(8), nullable=False),
        sa.Column("requester", sa.String(320), nullable=False),
        sa.Column("user_id", sa.String(64)),
        sa.Column("verification", sa.String(16)),
        sa.Column("subject", sa.String(998), nullable=False),
        sa.Column("security", sa.Boolean(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("due_at", TS),
        sa.Column("first_response_at", TS),
        sa.Column("resolved_at", TS),
        sa.Column("last_error", sa.Text()),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_tickets"),
        sa.UniqueConstraint("number", name="uq_tickets_number"),
    )
    op.create_index("ix_tickets_requester", "tickets", ["requester"])
    op.create_index("ix_tickets_status_due", "tickets", ["status", "due_at"])
    op.create_table(
        "ticket_messages",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("ticket_id", sa.Integer(),
                  sa.ForeignKey("tickets.id", name="fk_ticket_messages_ticket_id_tickets"), nullable=False),
        sa.Column("direction", sa.String(8), nullable=False),
        sa.Column("inbound_message_id", sa.Integer()),
        sa.Column("outbox_id", sa.Integer()),
        sa.Column("message_id", sa.String(998)),
        sa.Column("author", sa.String(320), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_ticket_messages"),
    )
    op.create_index("ix_ticket_messages_ticket_id", "ticket_messages", ["ticket_id"])
    op.create_index("ix_ticket_messages_inbound_message_id", "ticket_messages", ["inbound_message_id"])
    op.create_index("ix_ticket_messages_message_id", "ticket_messages", ["message_id"])
    op.create_table(
        "triage_items",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("ticket_id", sa.Integer(),
                  sa.ForeignKey("tickets.id", name="fk_triage_items_ticket_id_tickets"), nullable=False),
        sa.Column("inbound_message_id", sa.Integer()),
        sa.Column("reason", sa.String(64), nullable=False),
        sa.Column("security", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("label", sa.String(64)),
        sa.Column("confidence", sa.Float()),
        sa.Column("suggestion", JSON),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("resolved_at", TS),
        sa.Column("resolved_by", sa.String(200)),
        sa.Column("resolution", sa.String(32)),
        sa.PrimaryKeyConstraint("id", name="pk_triage_items"),
    )
    op.create_index("ix_triage_items_ticket_id", "triage_items", ["ticket_id"])
    op.create_index("ix_triage_items_inbound_message_id", "triage_items", ["inbound_message_id"])
    op.create_index("ix_triage_items_status_created", "triage_items", ["status", "created_at"])
    op.create_table(
        "response_records",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("inbound_message_id", sa.Integer(), nullable=False),
        sa.Column("screen", sa.String(64)),
        sa.Column("screen_reasons", JSON),
        sa.Column("verification", sa.String(16), nullable=False),
        sa.Column("verified_user_id", sa.String(64)),
        sa.Column("verification_reasons", JSON),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("template", sa.String(64)),
        sa.Column("recipient", sa.String(320)),
        sa.Column("ticket_id", sa.Integer()),
        sa.Column("reasons", JSON),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_response_records"),
        sa.UniqueConstraint("inbound_message_id", name="uq_response_records_inbound_message_id"),
    )
    op.create_index("ix_response_records_created_at", "response_records", ["created_at"])
    op.create_table(
        "autoreply_log",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("recipient", sa.String(320), nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_autoreply_log"),
    )
    op.create_index("ix_autoreply_log_recipient_at", "autoreply_log", ["recipient", "at"])
    op.create_table(
        "outbox",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("inbound_message_id", sa.Integer()),
        sa.Column("ticket_id", sa.Integer()),
        sa.Column("mail_from", sa.String(320), nullable=False),
        sa.Column("rcpt_to", JSON, nullable=False),
        sa.Column("message_id", sa.String(998), nullable=False),
        sa.Column("template", sa.String(64)),
        sa.Column("raw", sa.LargeBinary(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", TS),
        sa.Column("lease_until", TS),
        sa.Column("last_error", sa.Text()),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("sent_at", TS),
        sa.PrimaryKeyConstraint("id", name="pk_outbox"),
        sa.UniqueConstraint("inbound_message_id", name="uq_outbox_inbound_message_id"),
    )
    op.create_index("ix_outbox_status_next", "outbox", ["status", "next_attempt_at"])
    op.create_index("ix_outbox_ticket_id", "outbox", ["ticket_id"])
    op.create_index("ix_outbox_message_id", "outbox", ["message_id"])


def downgrade() -> None:
    op.drop_table("outbox")
    op.drop_table("autoreply_log")
    op.drop_table("response_records")
    op.drop_table("triage_items")
    op.drop_table("ticket_messages")
    op.drop_table("tickets")
    op.drop_table("users")
