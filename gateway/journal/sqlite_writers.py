"""SQLite writers queue on a file lock, which hands over the moment a commit ends.

SQLite has one writer at a time. A writer that finds the lock taken retries under its
busy handler, which sleeps 1, 2, 5, 10, 15, 20, 25, 25, 25, 50, 50, 100 ms between tries
whatever the holder does meanwhile: with five processes committing a few milliseconds
each, writers slept through most of the time the lock was free, and the router fell
behind at about 79 messages/s while using a tenth of a core (issue 18).

Here each connection takes an exclusive ``flock`` on ``<database>-writers`` before its
first write of a transaction and drops it after its commit or rollback. The kernel wakes
a waiter when the lock is dropped, so the next writer starts at once, and by then
SQLite's own lock is free. Readers take nothing (WAL readers never wait for writers).
SQLite's busy handler stays as the backstop for writes the queue does not see (the
migrations' DDL).
"""
from __future__ import annotations

import fcntl
import os
import sqlite3
from typing import Any

_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE")


def lock_path(database: str) -> str | None:
    """Where the writers of this database file queue; None for a database in memory."""
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return f"{database}-writers"


class _Cursor(sqlite3.Cursor):
    connection: QueuedWriterConnection

    def execute(self, sql: str, parameters: Any = (), /) -> _Cursor:
        self.connection.before(sql)
        return super().execute(sql, parameters)

    def executemany(self, sql: str, seq_of_parameters: Any, /) -> _Cursor:
        self.connection.before(sql)
        return super().executemany(sql, seq_of_parameters)


class QueuedWriterConnection(sqlite3.Connection):
    """A ``sqlite3`` connection (``factory=``) whose write transactions queue on the file lock."""

    def __init__(self, database: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(database, *args, **kwargs)
        path = lock_path(str(database))
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600) if path else None
        self._holding = False

    def cursor(self, factory: Any = _Cursor) -> Any:
        return super().cursor(factory)

    def before(self, sql: str) -> None:
        if self._fd is not None and not self._holding and sql.lstrip()[:7].upper().startswith(_WRITES):
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            self._holding = True

    def _release(self) -> None:
        if self._holding and self._fd is not None:
            self._holding = False
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            self._release()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self._release()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._release()
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
