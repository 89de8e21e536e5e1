"""Alembic environment: the engine comes from the caller (gateway.journal.migrate).

Several nodes may start at once on one PostgreSQL journal: the first to lock migrates,
the others wait for its commit and then find the schema current.
"""
from alembic import context
from sqlalchemy import text

from gateway.journal.tables import metadata

engine = context.config.attributes["engine"]
with engine.begin() as connection:
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(hashtext('zdravlink:migrate'))"))
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    context.run_migrations()
