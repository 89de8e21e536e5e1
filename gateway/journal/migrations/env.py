"""Alembic environment: the engine comes from the caller (gateway.journal.migrate)."""
from alembic import context

from gateway.journal.tables import metadata

engine = context.config.attributes["engine"]
with engine.begin() as connection:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    context.run_migrations()
