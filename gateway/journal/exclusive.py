"""One run at a time across processes, with a lock that goes with its holder.

A lease (``gateway.journal.leases``) outlives a killed holder by its time to live; an
operator who SIGKILLs a long ``journal prune`` and starts it again should not have to
wait for that. These locks are dropped by whoever keeps them the moment the holder is
gone: on SQLite a ``flock`` on a file beside the journal, which the kernel releases with
the process (every SQLite node is on one host); on PostgreSQL a session advisory lock,
which the server releases with the session. Neither fences a holder that has lost its
database session but runs on; what they guard (the prune runs' archive chain) is checked
by ``journal verify`` and the tests of killed runs.
"""
from __future__ import annotations

import fcntl
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import func, select

from gateway.journal import Journal
from zdravlink.errors import Interrupt


class Busy(Interrupt):
    """Another process holds the lock: what it guards is being done already."""


@contextmanager
def exclusive(journal: Journal, name: str) -> Iterator[None]:
    """Hold the lock ``name`` of this journal for the block; ``Busy`` at once if another process holds it."""
    url = journal.engine.url
    if url.get_backend_name() == "postgresql":
        key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
        with journal.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            if not conn.execute(select(func.pg_try_advisory_lock(key))).scalar_one():
                raise Busy(f"another process holds the journal's {name!r} lock")
            try:
                yield
            finally:
                conn.execute(select(func.pg_advisory_unlock(key)))
        return
    if not url.database or url.database == ":memory:":
        yield  # a journal in memory belongs to this process alone
        return
    with open(Path(f"{url.database}.{name}.lock"), "a") as held:
        try:
            fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Busy(f"another process holds the journal's {name!r} lock ({held.name})") from None
        yield
