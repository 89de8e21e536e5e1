"""Leases: which node runs a duty that must run once (the deadline watcher, the acts schedule, the sweeper).

A lease is a row: its holder and when it runs out. A node takes a lease that nobody
holds or that has run out, and keeps it by renewing it well before then; a node that
dies (SIGKILL, power, network) simply stops renewing, and another takes the lease over
once it has run out. A session-level advisory lock would drop with a dead node's
connection too, but not while a half-open connection lingers, and it does not exist on
SQLite; a row with a time works the same on both and can be read by anyone.

Times come from the database's clock on PostgreSQL (``now()``), so hosts whose clocks
disagree still agree on when a lease runs out; on SQLite every node is on one host.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import case, func, insert, or_, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from gateway.journal import Journal, utcnow
from gateway.journal.model import as_utc
from gateway.journal.tables import leases

_NEVER = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Lease:
    name: str
    holder: str
    acquired_at: datetime
    expires_at: datetime


class Leases:
    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    def _now(self, conn: Connection) -> datetime:
        if conn.dialect.name == "postgresql":
            return as_utc(conn.execute(select(func.now())).scalar_one())
        return utcnow()

    def acquire(self, name: str, holder: str, ttl_seconds: float) -> bool:
        """Take the lease, or renew it if ``holder`` has it; True if ``holder`` holds it for ``ttl_seconds`` now."""
        with self.journal.engine.begin() as conn:
            now = self._now(conn)
            until = now + timedelta(seconds=ttl_seconds)
            try:
                with conn.begin_nested():
                    conn.execute(insert(leases).values(name=name, holder=holder, acquired_at=now, expires_at=until))
                return True
            except IntegrityError:
                pass  # someone holds it, or held it: take it only if it is ours or has run out
            won = conn.execute(
                update(leases)
                .where(leases.c.name == name, or_(leases.c.holder == holder, leases.c.expires_at < now))
                .values(holder=holder, expires_at=until,
                        acquired_at=case((leases.c.holder == holder, leases.c.acquired_at), else_=now))
            ).rowcount
        return won == 1

    def release(self, name: str, holder: str) -> None:
        """Give the lease up at once (a clean stop), so another node need not wait for it to run out."""
        with self.journal.engine.begin() as conn:
            conn.execute(update(leases).where(leases.c.name == name, leases.c.holder == holder)
                         .values(expires_at=_NEVER))

    def all(self) -> list[Lease]:
        """Every lease, held or run out, by name."""
        with self.journal.engine.connect() as conn:
            rows = conn.execute(select(leases).order_by(leases.c.name)).all()
        return [Lease(r.name, r.holder, as_utc(r.acquired_at), as_utc(r.expires_at)) for r in rows]
