"""The journal's database: engines for SQLite and PostgreSQL, and telling an outage from a bug.

The journal is the only truth about a message. Its database can be briefly out of
reach (a failover, a network blip): ``unavailable(exc)`` tells those errors apart
from bugs, so that a worker waits for the journal instead of letting RabbitMQ count
the failures and dead-letter messages behind the journal's back.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from gateway.journal.sqlite_writers import QueuedWriterConnection


def unavailable(exc: BaseException) -> bool:
    """Is this the journal's database being out of reach (or busy), rather than a bug?

    Connection refused or dropped, a server shutting down, SQLite's lock wait running
    out: all surface as OperationalError or InterfaceError, or as a DBAPIError that
    invalidated its connection. Retrying later is the answer to each of them.
    """
    if isinstance(exc, (OperationalError, InterfaceError)):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def _sqlite_pragmas(dbapi_connection: Any, _connection_record: Any) -> None:
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    # FULL: a commit is on disk before it returns, so a 202 survives a power cut, not only a crash
    # (NORMAL in WAL mode may roll back the last commits). Group commit keeps this cheap.
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False,
                                                  "factory": QueuedWriterConnection})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    # synchronous_commit=on whatever the server's default: the gateway answers a partner only after its
    # commit is on disk (``off`` would lose the last commits on a server crash).
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20,
                         connect_args={"options": "-c synchronous_commit=on", "connect_timeout": 10})
