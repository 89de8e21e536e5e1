"""The evidence journal: sealed batches in one chain, checkpoints, legal holds and prune runs.

Events are sealed in batches of consecutive ids; each batch's record holds the Merkle
root of its events and the previous batch's hash, so changing any event, or any batch,
breaks the chain at a batch that can be named (docs/journal-evidence.md). The events
already journalled are sealed by the first run of the sealer after this revision, in
id order; nothing is rewritten here. The head row starts the chain at the genesis hash.

Retention blanks an envelope before it removes a message; ``envelope_pruned_at`` says
when, so the console and replay know the envelope is in an archive, not lost.

Revision ID: 0012
Revises: 0011
"""
import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

GENESIS = "0" * 64


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("envelope_pruned_at", sa.DateTime(timezone=True)))
    op.create_table(
        "evidence_batches",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("first_event_id", sa.Integer, nullable=False),
        sa.Column("last_event_id", sa.Integer, nullable=False, unique=True),
        sa.Column("event_count", sa.Integer, nullable=False),
        sa.Column("root", sa.String(64), nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("sealed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("pruned_count", sa.Integer, nullable=False, server_default="0"),
        sa.Column("pruned_leaves", sa.LargeBinary),
    )
    op.create_index("ix_evidence_batches_sealed", "evidence_batches", ["sealed_at"])
    head = op.create_table(
        "evidence_head",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("last_event_id", sa.Integer, nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.bulk_insert(head, [{"id": 1, "seq": 0, "last_event_id": 0, "hash": GENESIS}])
    op.create_table(
        "evidence_checkpoints",
        sa.Column("batch_seq", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("batch_hash", sa.String(64), nullable=False),
        sa.Column("made_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("statement", sa.Text, nullable=False),
        sa.Column("signature", sa.LargeBinary),
        sa.Column("tsa_token", sa.LargeBinary),
        sa.Column("tsa_time", sa.DateTime(timezone=True)),
        sa.Column("tsa_attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("tsa_error", sa.Text),
    )
    op.create_index("ix_evidence_checkpoints_tsa", "evidence_checkpoints", ["tsa_time", "batch_seq"])
    op.create_table(
        "legal_holds",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("message_id", sa.String(36)),
        sa.Column("participant", sa.String(50)),
        sa.Column("period_from", sa.DateTime(timezone=True)),
        sa.Column("period_to", sa.DateTime(timezone=True)),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("placed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("placed_by", sa.String(64), nullable=False),
        sa.Column("released_at", sa.DateTime(timezone=True)),
        sa.Column("released_by", sa.String(64)),
    )
    op.create_table(
        "prune_runs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("messages", sa.Integer, nullable=False, server_default="0"),
        sa.Column("envelopes", sa.Integer, nullable=False, server_default="0"),
        sa.Column("events", sa.Integer, nullable=False, server_default="0"),
        sa.Column("held", sa.Integer, nullable=False, server_default="0"),
        sa.Column("archives", sa.Text, nullable=False, server_default="[]"),
        sa.Column("chain", sa.String(64)),
        sa.Column("error", sa.Text),
    )


def downgrade() -> None:
    op.drop_table("prune_runs")
    op.drop_table("legal_holds")
    op.drop_index("ix_evidence_checkpoints_tsa", "evidence_checkpoints")
    op.drop_table("evidence_checkpoints")
    op.drop_table("evidence_head")
    op.drop_index("ix_evidence_batches_sealed", "evidence_batches")
    op.drop_table("evidence_batches")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("envelope_pruned_at")
