"""A message's generation and the stages of its round, and an index for finding stuck messages.

The generation is the round a message is on: replay and the sweeper each send it round
again and raise it, and every copy in RabbitMQ carries the generation it was sent with,
so a stale copy from an earlier round is recognised and dropped wherever it turns up.
It used to be the replay count; the sweeper's rounds are not replays.

``stages`` says which stage events of this round are in the trail (PUBLISHED, ROUTED),
so each is written exactly once, whichever process gets there first, even after a crash.

Revision ID: 0007
Revises: 0006
"""
import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("generation", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("stages", sa.Integer, nullable=False, server_default="0"))
    op.execute("UPDATE messages SET generation = replays")
    op.create_index("ix_messages_status_updated", "messages", ["status", "updated_at"])


def downgrade() -> None:
    op.drop_index("ix_messages_status_updated", "messages")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("stages")
        batch.drop_column("generation")
