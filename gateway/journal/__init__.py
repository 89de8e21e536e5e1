"""The journal: every message, its status and its hash-chained event trail, in SQL.

SQLite (WAL) is the embedded default; PostgreSQL is the production store. The journal
is the outbox too: an accepted message is a row before it is a queue entry.
"""
from gateway.journal.store import Change, EventRecord, Journal, MessageRecord, Stage, Status

__all__ = ["Change", "Journal", "MessageRecord", "EventRecord", "Stage", "Status"]
