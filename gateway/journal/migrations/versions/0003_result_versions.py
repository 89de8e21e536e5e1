"""Versions of a lab result (one ResultId, several messages): a correction names what it replaces.

Revision ID: 0003
Revises: 0002
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "result_versions",
        sa.Column("message_id", sa.String(36), sa.ForeignKey("messages.message_id"), primary_key=True),
        sa.Column("result_id", sa.String(255), nullable=False),
        sa.Column("status", sa.String(1), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_result_versions_result", "result_versions", ["result_id", "at"])


def downgrade() -> None:
    op.drop_table("result_versions")
