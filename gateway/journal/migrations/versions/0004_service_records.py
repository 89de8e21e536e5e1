"""Service records: one row per record an MIS reported, keyed by organisation and the MIS's record id.

Revision ID: 0004
Revises: 0003
"""
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "service_records",
        sa.Column("record_key", sa.String(300), primary_key=True),
        sa.Column("record_id", sa.String(250), nullable=False),
        sa.Column("code_mo", sa.String(6), nullable=False),
        sa.Column("sender", sa.String(50), nullable=False),
        sa.Column("insurer", sa.String(50), nullable=False),
        sa.Column("period", sa.String(7), nullable=False),
        sa.Column("message_id", sa.String(36), sa.ForeignKey("messages.message_id"), nullable=False),
        sa.Column("act_message_id", sa.String(36)),
        sa.Column("outcome", sa.String(16)),
        sa.Column("reason", sa.Text),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_service_records_act", "service_records", ["code_mo", "insurer", "period"])


def downgrade() -> None:
    op.drop_table("service_records")
