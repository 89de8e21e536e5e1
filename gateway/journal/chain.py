"""The trail: every change of a message is an event in a hash chain of its own.

Each status change is one transaction that updates the message row and appends an
event whose hash covers the previous event of the same message, so a trail edited
after the fact no longer verifies (``verify_trail``, ``broken_trails``). The stores
of messages, the outbox and the audit build on this one.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.engine import Connection, Engine

from gateway.journal.model import Change, EventRecord, Status, as_utc, utcnow
from gateway.journal.tables import events, messages

GENESIS = "0" * 64


def event_hash(prev: str, message_id: str, at: datetime, status: str, kind: str, actor: str, detail: str) -> str:
    stamp = as_utc(at).isoformat(timespec="microseconds")
    raw = "\x1f".join((prev, message_id, stamp, status, kind, actor, detail))
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


def detail_text(detail: dict[str, Any]) -> str:
    return json.dumps(detail, ensure_ascii=False, sort_keys=True, default=str)


def event_row(prev: str, message_id: str, at: datetime, status: str, kind: str, actor: str,
               detail_text: str) -> dict[str, Any]:
    """An events row chained to ``prev``: its hash covers every field and the previous hash."""
    return dict(message_id=message_id, at=at, status=status, kind=kind, actor=actor, detail=detail_text,
                prev_hash=prev, hash=event_hash(prev, message_id, at, status, kind, actor, detail_text))


class TrailStore:
    """Events and their hash chains; the base of the journal's stores."""

    engine: Engine

    # ---- events ---------------------------------------------------------

    def _append_event(
        self, conn: Connection, message_id: str, status: str, kind: str, actor: str, detail: dict[str, Any],
        at: datetime,
    ) -> None:
        prev = self._chain_heads(conn, [message_id]).get(message_id, GENESIS)
        row = event_row(prev, message_id, at, status, kind, actor, detail_text(detail))
        conn.execute(insert(events).values(**row))

    def record(
        self,
        message_id: str,
        kind: str,
        actor: str,
        detail: dict[str, Any] | None = None,
        *,
        status: Status | None = None,
        only_from: Iterable[Status] | None = None,
        **columns: Any,
    ) -> bool:
        """Append an event and optionally move the status; False if ``only_from`` did not hold.

        ``only_from`` makes transitions idempotent under redelivery: a router that
        sees a message twice does not move a DELIVERED message back to ROUTED.
        """
        return self.record_many([Change.of(message_id, kind, actor, detail, status=status, only_from=only_from,
                                           **columns)])[0]

    def record_many(self, changes: Sequence[Change]) -> list[bool]:
        """Apply several changes in one transaction (group commit); one result per change, as ``record``."""
        if not changes:
            return []
        with self.engine.begin() as conn:
            return self.record_within(conn, changes)

    def record_within(self, conn: Connection, changes: Sequence[Change]) -> list[bool]:
        """``record_many`` inside the caller's transaction: a status and rows of the caller's own
        (an inbox entry, an Ack) commit together or not at all, and no reader sees one without the other."""
        if not changes:
            return []
        now = utcnow()
        ids = list(dict.fromkeys(c.message_id for c in changes))
        results: list[bool] = []
        self._lock_chains(conn, ids)
        found = conn.execute(select(messages.c.message_id, messages.c.status, messages.c.stages)
                             .where(messages.c.message_id.in_(ids))).all()
        current = {r.message_id: r.status for r in found}
        stages = {r.message_id: r.stages for r in found}
        heads = self._chain_heads(conn, ids)
        rows = []
        touched: dict[str, dict[str, Any]] = {}  # each message's row written once, at the end
        for c in changes:
            status_now = current.get(c.message_id)
            if status_now is None or (c.stage is not None and stages[c.message_id] & c.stage):
                results.append(False)
                continue  # no such message, or this stage of this round is in the trail already
            guard_holds = c.only_from is None or status_now in {Status(s).value for s in c.only_from}
            if not guard_holds and not c.even_if_late:
                results.append(False)
                continue
            if c.stage is not None:
                stages[c.message_id] |= c.stage
                touched.setdefault(c.message_id, {})["stages"] = stages[c.message_id]
            if not guard_holds:
                results.append(False)
                detail: dict[str, Any] = {**c.detail, "late": True}
                new_status = status_now
            else:
                detail = c.detail
                new_status = c.status.value if c.status else status_now
                values = touched.setdefault(c.message_id, {})
                values.update(updated_at=now, **c.columns)
                if c.status:
                    values["status"] = new_status
                if c.status == Status.DELIVERED:
                    values["delivered_at"] = now
                current[c.message_id] = new_status
                results.append(True)
            row = event_row(heads.get(c.message_id, GENESIS), c.message_id, now, new_status, c.kind, c.actor,
                             detail_text(detail))
            rows.append(row)
            heads[c.message_id] = row["hash"]
        self._update_rows(conn, touched)
        if rows:
            conn.execute(insert(events), rows)
        return results

    @staticmethod
    def _update_rows(conn: Connection, touched: dict[str, dict[str, Any]]) -> None:
        """One executemany per set of columns: a router's batch was four UPDATEs a message, one
        round trip each, and the router fell seconds behind the API on PostgreSQL."""
        by_columns: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for message_id in sorted(touched):  # the lock order of _lock_chains
            values = touched[message_id]
            by_columns.setdefault(tuple(sorted(values)), []).append(
                {"b_message_id": message_id, **{f"b_{k}": v for k, v in values.items()}})
        for columns, params in by_columns.items():
            stmt = (update(messages).where(messages.c.message_id == bindparam("b_message_id"))
                    .values({k: bindparam(f"b_{k}") for k in columns}))
            conn.execute(stmt, params)

    def _lock_chains(self, conn: Connection, ids: Sequence[str]) -> None:
        """Take the write lock on these messages before their chain heads are read.

        Two processes appending to one message's trail (the relay's PUBLISHED and the
        router's ROUTED arrive together) would otherwise read the same head and fork the
        chain. PostgreSQL locks the rows, in one order so two batches cannot deadlock;
        SQLite has one writer, and a first write takes its lock for the transaction.
        """
        ordered = sorted(set(ids))
        if self.engine.dialect.name == "sqlite":
            conn.execute(update(messages).where(messages.c.message_id.in_(ordered))
                         .values(updated_at=messages.c.updated_at))
        else:
            conn.execute(select(messages.c.message_id).where(messages.c.message_id.in_(ordered))
                         .order_by(messages.c.message_id).with_for_update())

    @staticmethod
    def _chain_heads(conn: Connection, ids: Sequence[str]) -> dict[str, str]:
        """The newest event hash of each message, in one query."""
        if not ids:
            return {}
        return dict(conn.execute(
            select(events.c.message_id, events.c.hash).where(
                events.c.id.in_(
                    select(func.max(events.c.id)).where(events.c.message_id.in_(list(ids)))
                    .group_by(events.c.message_id)
                )
            )
        ).all())

    def trail(self, message_id: str) -> list[EventRecord]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(events).where(events.c.message_id == message_id).order_by(events.c.id)
            ).all()
        return [
            EventRecord(as_utc(r.at), r.status, r.kind, r.actor, json.loads(r.detail), r.hash, r.prev_hash)
            for r in rows
        ]

    def verify_trail(self, message_id: str) -> bool:
        """Recompute the hash chain; False means an event was edited, removed or inserted."""
        prev = GENESIS
        for ev in self.trail(message_id):
            text = detail_text(ev.detail)
            expected = event_hash(prev, message_id, ev.at, ev.status, ev.kind, ev.actor, text)
            if ev.prev_hash != prev or ev.hash != expected:
                return False
            prev = ev.hash
        return True

    def broken_trails(self, since: datetime | None = None) -> Iterator[str]:
        """Every message whose trail does not verify, in one streamed pass over the events."""
        query = select(events).order_by(events.c.message_id, events.c.id)
        if since is not None:
            query = query.where(events.c.message_id.in_(
                select(messages.c.message_id).where(messages.c.created_at >= since)))
        with self.engine.connect() as conn:
            rows = conn.execution_options(stream_results=True, yield_per=5000).execute(query)
            current, prev, broken = None, GENESIS, False
            for r in rows:
                if r.message_id != current:
                    if broken:
                        yield str(current)
                    current, prev, broken = r.message_id, GENESIS, False
                if broken:
                    continue
                if r.prev_hash != prev or r.hash != event_hash(prev, r.message_id, r.at, r.status, r.kind, r.actor,
                                                                r.detail):
                    broken = True
                prev = r.hash
            if broken:
                yield str(current)
