"""The outbox: accepted messages the relay has not yet handed to the broker, and the broker's confirm."""
from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import insert, select, update

from gateway.journal.chain import GENESIS, TrailStore, detail_text, event_row
from gateway.journal.model import Stage, Status, utcnow
from gateway.journal.tables import events, messages


class OutboxStore(TrailStore):
    def outbox(self, limit: int) -> list[tuple[str, bytes, int]]:
        """Accepted messages not yet handed to the broker, oldest first: id, envelope and generation."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(messages.c.message_id, messages.c.envelope, messages.c.generation)
                .where(messages.c.status == Status.ACCEPTED.value)
                .order_by(messages.c.created_at)
                .limit(limit)
            ).all()
        return [(r.message_id, r.envelope, r.generation) for r in rows]

    def mark_published(self, message_ids: Sequence[str], actor: str) -> None:
        """Record the broker's confirm. The router may already have moved a message on (and
        noted PUBLISHED itself): the status only changes where it is still ACCEPTED, and the
        event is written unless this round's PUBLISHED is in the trail already (``Stage``)."""
        now = utcnow()
        with self.engine.begin() as conn:
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
