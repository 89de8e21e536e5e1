"""The outbox: accepted messages the relay has not yet handed to the broker, and the broker's confirm.

Several relays (one per API process, on one host or many) may share one journal. On
PostgreSQL each relay claims its batch with ``FOR UPDATE SKIP LOCKED`` and marks it
published in the same transaction, so no two relays publish the same message; a relay
that dies mid-batch leaves its rows unlocked and ACCEPTED for another one (a copy it had
already published is then a repeat, which the router drops by the journal's status).
SQLite has one writer at a time and no row locks: there, one relay per journal.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection

from gateway.journal.chain import GENESIS, TrailStore, detail_text, event_row
from gateway.journal.model import Stage, Status, utcnow
from gateway.journal.tables import events, messages

#: One message for the broker: id, envelope, generation.
OutboxEntry = tuple[str, bytes, int]
#: Publishes a batch and returns the ids the broker confirmed.
Publish = Callable[[list[OutboxEntry]], list[str]]


class OutboxStore(TrailStore):
    def outbox(self, limit: int) -> list[OutboxEntry]:
        """Accepted messages not yet handed to the broker, oldest first."""
        with self.engine.connect() as conn:
            return self._pending(conn, limit, claim=False)

    def relay(self, limit: int, publish: Publish, actor: str) -> int:
        """Claim up to ``limit`` accepted messages, publish them, and record the confirms; how many were."""
        with self.engine.begin() as conn:
            batch = self._pending(conn, limit, claim=True)
            if not batch:
                return 0
            published = publish(batch)
            if published:
                self._mark_published(conn, published, actor)
        return len(published)

    def _pending(self, conn: Connection, limit: int, claim: bool) -> list[OutboxEntry]:
        query = (select(messages.c.message_id, messages.c.envelope, messages.c.generation)
                 .where(messages.c.status == Status.ACCEPTED.value)
                 .order_by(messages.c.created_at)
                 .limit(limit))
        if claim and self.engine.dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True)
        return [(r.message_id, r.envelope, r.generation) for r in conn.execute(query)]

    def mark_published(self, message_ids: Sequence[str], actor: str) -> None:
        """Record the broker's confirm of messages published outside ``relay``."""
        with self.engine.begin() as conn:
            self._mark_published(conn, message_ids, actor)

    def _mark_published(self, conn: Connection, message_ids: Sequence[str], actor: str) -> None:
        """The router may already have moved a message on (and noted PUBLISHED itself): the status
        only changes where it is still ACCEPTED, and the event is written unless this round's
        PUBLISHED is in the trail already (``Stage``)."""
        now = utcnow()
        self._lock_chains(conn, message_ids)
        current = {r.message_id: r.status for r in conn.execute(
            select(messages.c.message_id, messages.c.status, messages.c.stages)
            .where(messages.c.message_id.in_(message_ids))) if not r.stages & Stage.PUBLISHED}
        if not current:
            return
        ids = list(current)
        conn.execute(
            update(messages)
            .where(messages.c.message_id.in_(ids), messages.c.status == Status.ACCEPTED.value)
            .values(status=Status.PUBLISHED.value, updated_at=now)
        )
        conn.execute(update(messages).where(messages.c.message_id.in_(ids))
                     .values(stages=messages.c.stages.op("|")(int(Stage.PUBLISHED))))
        # One query for the chain heads and one multi-row insert: a relay batch of
        # hundreds must not cost two round trips per message.
        heads = self._chain_heads(conn, ids)
        rows = []
        for mid, status in current.items():
            new = Status.PUBLISHED.value if status == Status.ACCEPTED.value else status
            rows.append(event_row(heads.get(mid, GENESIS), mid, now, new, "PUBLISHED", actor, detail_text({})))
        conn.execute(insert(events), rows)
