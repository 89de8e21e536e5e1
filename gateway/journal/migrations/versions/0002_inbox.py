"""Inbox for participants who poll (SMEV GetRequest/GetResponse, REST inbox), and reported statuses.

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "inbox",
        sa.Column("message_id", sa.String(36), sa.ForeignKey("messages.message_id"), primary_key=True),
        sa.Column("recipient", sa.String(50), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("message_type", sa.String(1024), nullable=False),
        sa.Column("root_name", sa.String(255), nullable=False),
        sa.Column("parked_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("locked_until", sa.DateTime(timezone=True)),
        sa.Column("deliveries", sa.Integer, nullable=False, server_default="0"),
        sa.Column("acked_at", sa.DateTime(timezone=True)),
        sa.Column("accepted", sa.Boolean),
    )
    op.create_index("ix_inbox_pending", "inbox", ["recipient", "kind", "acked_at", "parked_at"])
    op.create_table(
        "status_reports",
        sa.Column("message_id", sa.String(36), sa.ForeignKey("messages.message_id"), primary_key=True),
        sa.Column("reported_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("status_reports")
    op.drop_table("inbox")
