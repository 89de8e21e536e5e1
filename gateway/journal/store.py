"""The journal: one object per process, safe to share between threads, made of stores by concern.

``chain`` (events and their hash chains), ``messages`` (accept, read, find, send round
again), ``outbox`` (what the relay publishes) and ``audit`` (refusals); ``model`` holds
the records they pass around and ``engine`` the database connection.
"""
from __future__ import annotations

from sqlalchemy import select

from gateway.journal.audit import AuditStore
from gateway.journal.engine import make_engine
from gateway.journal.messages import MessageStore
from gateway.journal.outbox import OutboxStore


class Journal(MessageStore, OutboxStore, AuditStore):
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)

    def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision."""
        from gateway.journal.migrate import upgrade

        upgrade(self.engine)

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(select(1))
