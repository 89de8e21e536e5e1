"""The journal: every message, its status and its hash-chained event trail, in SQL.

SQLite (WAL) is the embedded default; PostgreSQL is the production store. The journal
is the outbox too: an accepted message is a row before it is a queue entry. What other
packages use is here; the modules (``store`` and the stores it is made of) are the
implementation.
"""
from gateway.journal.engine import unavailable
from gateway.journal.model import (
    IN_FLIGHT,
    AcceptOutcome,
    Change,
    EventRecord,
    MessageRecord,
    SideWrite,
    Stage,
    Status,
    utcnow,
)
from gateway.journal.store import Journal

__all__ = ["IN_FLIGHT", "AcceptOutcome", "Change", "EventRecord", "Journal", "MessageRecord", "SideWrite", "Stage",
           "Status", "unavailable", "utcnow"]
