"""Register files: the file name each act went out under, and the insurer's errors per record.

An insurer's ФЛК protocol names the file it answers (FNAME_I) and, per error, the element and
its code; a record may have several. The file name finds the act when a protocol comes back
without a reference (collected from a directory); the errors (JSON) tell the MIS exactly what
to correct.

Revision ID: 0009
Revises: 0008
"""
import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("acts") as batch:
        batch.add_column(sa.Column("file_name", sa.String(40)))
        batch.create_index("ix_acts_file_name", ["file_name"])
    with op.batch_alter_table("service_records") as batch:
        batch.add_column(sa.Column("errors", sa.Text))


def downgrade() -> None:
    with op.batch_alter_table("service_records") as batch:
        batch.drop_column("errors")
    with op.batch_alter_table("acts") as batch:
        batch.drop_index("ix_acts_file_name")
        batch.drop_column("file_name")
