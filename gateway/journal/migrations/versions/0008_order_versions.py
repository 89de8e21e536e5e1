"""A lab result carries several orders: one version row per (message, order), not per message.

Revision ID: 0008
Revises: 0007
"""
import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A new table, filled and renamed: changing a primary key in place is not portable to SQLite.
    op.create_table(
        "result_versions_by_order",
        sa.Column("message_id", sa.String(36), sa.ForeignKey("messages.message_id"), primary_key=True),
        sa.Column("result_id", sa.String(255), primary_key=True),
        sa.Column("status", sa.String(1), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    )
    op.execute("INSERT INTO result_versions_by_order (message_id, result_id, status, at) "
               "SELECT message_id, result_id, status, at FROM result_versions")
    op.drop_index("ix_result_versions_result", table_name="result_versions")
    op.drop_table("result_versions")
    op.rename_table("result_versions_by_order", "result_versions")
    op.create_index("ix_result_versions_result", "result_versions", ["result_id", "at"])


def downgrade() -> None:
    op.create_table(
        "result_versions_by_message",
        sa.Column("message_id", sa.String(36), sa.ForeignKey("messages.message_id"), primary_key=True),
        sa.Column("result_id", sa.String(255), nullable=False),
        sa.Column("status", sa.String(1), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    )
    # One row per message survives: the first order's, as before several orders existed.
    op.execute("INSERT INTO result_versions_by_message (message_id, result_id, status, at) "
               "SELECT message_id, MIN(result_id), MIN(status), MIN(at) FROM result_versions GROUP BY message_id")
    op.drop_index("ix_result_versions_result", table_name="result_versions")
    op.drop_table("result_versions")
    op.rename_table("result_versions_by_message", "result_versions")
    op.create_index("ix_result_versions_result", "result_versions", ["result_id", "at"])
