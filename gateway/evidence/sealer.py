"""The sealer: every event, in id order, into a batch chained to the one before.

A batch is defined by an id range, (previous batch's ``last_event_id``, its own
``last_event_id``]: every event in that range is in the batch, so an event removed,
added or changed anywhere in it changes the batch's root. That only holds if no event
can still appear inside a range after it was sealed, so the sealer seals only up to a
**horizon** below which every event id is settled:

* SQLite has one writer at a time and ids come from ``max(id) + 1``: whatever is
  visible is the whole past, so the horizon is ``max(id)`` read now.
* PostgreSQL hands out ids from a sequence before commit, and transactions commit in
  any order: id 100 can commit after id 101. Every transaction that inserts an event
  holds the table's ROW EXCLUSIVE lock from that insert until it ends, so the sealer
  takes the SHARE lock (which waits for all of them and lets no new one start), reads
  ``max(id)`` and lets go at once. Writers wait for that moment only. PostgreSQL queues
  lock requests in order, so while the sealer waits for a long writer, new writers wait
  behind it: the wait is capped (``HORIZON_LOCK_TIMEOUT``), and past it the sealer gives
  up until its next round, so no writer ever waits on sealing longer than that.

One sealer at a time extends the chain: the head row is locked for the whole sealing
transaction, so two sealers (two evidence processes, two hosts) never fork it; the
second finds nothing left to seal.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import func, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import OperationalError

from gateway.evidence.canonical import BatchRecord, EventRecord
from gateway.journal import Journal, utcnow
from gateway.journal.tables import events, evidence_batches, evidence_head

log = logging.getLogger("zdravlink.evidence")

#: How long the sealer waits for writers in flight before it gives up until next time (PostgreSQL); new
#: writers queue behind its request meanwhile, so this is also the longest a writer can wait on sealing.
HORIZON_LOCK_TIMEOUT = "250ms"
EVENT_COLUMNS = (events.c.id, events.c.message_id, events.c.at, events.c.status, events.c.kind, events.c.actor,
                 events.c.detail, events.c.prev_hash, events.c.hash)


@dataclass(frozen=True)
class Head:
    seq: int
    last_event_id: int
    hash: str


def head(conn: Connection, lock: bool = False) -> Head:
    """The chain's head; with ``lock``, held by this transaction until it ends (one sealer at a time)."""
    if lock and conn.dialect.name == "sqlite":
        # A write first takes SQLite's one write lock for the transaction before anything is read.
        conn.execute(update(evidence_head).where(evidence_head.c.id == 1).values(seq=evidence_head.c.seq))
    query = select(evidence_head.c.seq, evidence_head.c.last_event_id, evidence_head.c.hash).where(
        evidence_head.c.id == 1)
    if lock and conn.dialect.name != "sqlite":
        query = query.with_for_update()
    row = conn.execute(query).one()
    return Head(int(row.seq), int(row.last_event_id), row.hash)


class Sealer:
    def __init__(self, journal: Journal, max_batch: int = 10_000) -> None:
        self.journal = journal
        self.max_batch = max_batch

    def seal_once(self) -> list[BatchRecord]:
        """Seal every event up to the horizon, in batches of at most ``max_batch``; the batches made."""
        horizon = self.horizon()
        sealed: list[BatchRecord] = []
        if horizon is None:
            return sealed
        while (batch := self._seal_next(horizon)) is not None:
            sealed.append(batch)
        return sealed

    def horizon(self) -> int | None:
        """The highest event id below which no event can still appear; None if writers held it too long."""
        engine = self.journal.engine
        try:
            with engine.begin() as conn:
                if engine.dialect.name == "postgresql":
                    conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{HORIZON_LOCK_TIMEOUT}'")
                    conn.exec_driver_sql("LOCK TABLE events IN SHARE MODE")
                return int(conn.execute(select(func.coalesce(func.max(events.c.id), 0))).scalar_one())
        except OperationalError as exc:
            if engine.dialect.name == "postgresql" and "lock timeout" in str(exc).lower():
                log.info("sealing waits: writers held the events table past %s", HORIZON_LOCK_TIMEOUT)
                return None
            raise

    def _seal_next(self, horizon: int) -> BatchRecord | None:
        with self.journal.engine.begin() as conn:
            top = head(conn, lock=True)
            if top.last_event_id >= horizon:
                return None
            rows = conn.execute(select(*EVENT_COLUMNS).where(events.c.id > top.last_event_id,
                                                             events.c.id <= horizon)
                                .order_by(events.c.id).limit(self.max_batch)).all()
            if not rows:
                return None  # only ids of rolled-back writes so far: the next batch's range takes them in
            last = int(rows[-1].id) if len(rows) == self.max_batch else horizon
            now = utcnow()
            batch = BatchRecord.make(top.seq + 1, top.last_event_id + 1, last, [EventRecord.of(r).leaf() for r in rows],
                                     top.hash, now)
            conn.execute(insert(evidence_batches).values(
                seq=batch.seq, first_event_id=batch.first_event_id, last_event_id=batch.last_event_id,
                event_count=batch.event_count, root=batch.root, prev_hash=batch.prev_hash, hash=batch.hash,
                sealed_at=now, pruned_count=0))
            conn.execute(update(evidence_head).where(evidence_head.c.id == 1).values(
                seq=batch.seq, last_event_id=batch.last_event_id, hash=batch.hash))
        return batch
