"""The operator's console: search indexes, replies by ReferenceMessageID, the operator audit and sessions.

The console searches the messages by sender, recipient, route and message type in time
order, a page at a time (keyset on created_at, message_id): each filter gets an index
that serves that order, so a page costs the same on a journal of a million messages as
on an empty one. A reply names what it answers only inside its envelope; the column
``reference_id`` makes "related messages" one indexed lookup. It is filled for the
messages already journalled by reading their envelopes, a thousand at a time.

Revision ID: 0010
Revises: 0009
"""
import re

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_REFERENCE = re.compile(rb"<(?:\w+:)?ReferenceMessageID>\s*([0-9a-fA-F-]{36})\s*</")
_INDEXES = {
    "ix_messages_created": ["created_at", "message_id"],
    "ix_messages_sender_created": ["sender", "created_at", "message_id"],
    "ix_messages_recipient_created": ["recipient", "created_at", "message_id"],
    "ix_messages_route_created": ["route", "created_at", "message_id"],
    "ix_messages_type_created": ["message_type", "created_at", "message_id"],
    "ix_messages_reference": ["reference_id"],
}


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("reference_id", sa.String(36)))
    for name, columns in _INDEXES.items():
        op.create_index(name, "messages", columns)
    op.create_index("ix_rejections_sender_at", "rejections", ["sender", "at"])
    op.create_table(
        "operator_audit",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("operator", sa.String(64), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("target", sa.String(255)),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("remote", sa.String(64)),
    )
    op.create_index("ix_operator_audit_at", "operator_audit", ["at"])
    op.create_index("ix_operator_audit_remote", "operator_audit", ["action", "remote", "at"])
    op.create_table(
        "operator_sessions",
        sa.Column("token_sha256", sa.String(64), primary_key=True),
        sa.Column("operator", sa.String(64), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("csrf", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("remote", sa.String(64)),
    )
    _backfill_references()


def _backfill_references() -> None:
    """ReferenceMessageID of the messages journalled before this revision, read from their envelopes."""
    conn = op.get_bind()
    messages = sa.table("messages", sa.column("message_id", sa.String), sa.column("envelope", sa.LargeBinary),
                        sa.column("reference_id", sa.String))
    after = ""
    while True:
        rows = conn.execute(sa.select(messages.c.message_id, messages.c.envelope)
                            .where(messages.c.message_id > after).order_by(messages.c.message_id).limit(1000)).all()
        found = [{"mid": r.message_id, "ref": m.group(1).decode("ascii").lower()}
                 for r in rows if (m := _REFERENCE.search(bytes(r.envelope or b"")))]
        if found:
            conn.execute(sa.update(messages).where(messages.c.message_id == sa.bindparam("mid"))
                         .values(reference_id=sa.bindparam("ref")), found)
        if len(rows) < 1000:
            return
        after = rows[-1].message_id


def downgrade() -> None:
    op.drop_table("operator_sessions")
    op.drop_index("ix_operator_audit_remote", "operator_audit")
    op.drop_index("ix_operator_audit_at", "operator_audit")
    op.drop_table("operator_audit")
    op.drop_index("ix_rejections_sender_at", "rejections")
    for name in _INDEXES:
        op.drop_index(name, "messages")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("reference_id")
