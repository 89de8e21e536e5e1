"""Acts sent to insurers: one row per organisation, insurer, period and version.

Revision ID: 0005
Revises: 0004
"""
import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "acts",
        sa.Column("message_id", sa.String(36), sa.ForeignKey("messages.message_id"), primary_key=True),
        sa.Column("code_mo", sa.String(6), nullable=False),
        sa.Column("insurer", sa.String(50), nullable=False),
        sa.Column("period", sa.String(7), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("act_number", sa.String(15), nullable=False),
        sa.Column("replaces", sa.String(36)),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("records", sa.Integer, nullable=False),
        sa.Column("total", sa.String(20), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("code_mo", "insurer", "period", "version", name="uq_acts_version"),
    )


def downgrade() -> None:
    op.drop_table("acts")
