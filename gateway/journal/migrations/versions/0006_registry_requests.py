"""Registry verification requests awaiting their answer, and the registry answer cache.

Revision ID: 0006
Revises: 0005
"""
import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "registry_requests",
        sa.Column("message_id", sa.String(36), sa.ForeignKey("messages.message_id"), primary_key=True),
        sa.Column("requester", sa.String(50), nullable=False),
        sa.Column("registry", sa.String(50), nullable=False),
        sa.Column("message_type", sa.String(1024), nullable=False),
        sa.Column("accepted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deadline_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("answer_id", sa.String(36)),
        sa.Column("answered_at", sa.DateTime(timezone=True)),
        sa.Column("timeout_id", sa.String(36)),
        sa.Column("timed_out_at", sa.DateTime(timezone=True)),
    )
    op.create_index("ix_registry_requests_open", "registry_requests", ["answer_id", "timeout_id", "deadline_at"])
    op.create_table(
        "registry_cache",
        sa.Column("cache_key", sa.String(64), primary_key=True),
        sa.Column("message_type", sa.String(1024), nullable=False),
        sa.Column("answer", sa.LargeBinary, nullable=False),
        sa.Column("answer_id", sa.String(36), nullable=False),
        sa.Column("stored_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("registry_cache")
    op.drop_index("ix_registry_requests_open", "registry_requests")
    op.drop_table("registry_requests")
