"""Retention: what the rules let go leaves the journal, archived first, and the chain still verifies after.

A run (the reconciler's, every ``retention.interval_seconds``, or ``zdravlink journal
prune``) takes messages at rest, oldest first, in chunks. A message is pruned when the
longest time of the rules that match it has passed since its last change, it is at
rest (DELIVERED, FAILED, DEAD, REJECTED), every one of its events is sealed, no
business record points to it (service records, acts, lab result versions, registry
requests keep theirs for as long as they live) and no legal hold covers it.

Each chunk is first written to an archive (``archive_dir/prune-RUN-NNNN.zip``, every
event with its Merkle proof, the envelopes, the batch records on to a checkpoint),
then deleted in one transaction that adds the removed events' leaves to their batch
records (``pruned_leaves``), so the remaining events still give the sealed root; a
batch whose events are all gone keeps its record, without leaves, and the chain's
links still hold. Each run's archives are chained as X-Road chains its archive files:
``chain = SHA-256(previous run's chain ‖ archive digest ‖ …)`` in ``prune_runs``.

A run works in bursts: after each chunk it rests ``share`` of its time away (a chunk that
took 2 s at ``share: 0.5`` is followed by 2 s of rest), because on SQLite each delete holds
the journal's one write lock and the archive costs a core; the API accepts at close to its
idle rate meanwhile. It also stops between chunks when it is asked to (the lease lost, the
process stopping). It may be killed at any point and loses nothing: an archive is written
under a ``.partial`` name and renamed when complete; the delete commits together with the
run's record of that archive and the chain so far, so what a killed run removed is always
listed; a complete archive whose delete never committed removed nothing (its messages are
still in the journal, and the next run archives them again); ``.partial`` files are cleared
at the start of the next run. Runs exclude each other (``gateway.journal.exclusive``) with a
lock that goes with a killed run, so the next may start at once.

``envelope_days`` removes only the envelope (archived first, as above); the row and
the trail stay, ``envelope_pruned_at`` says when, and the verifier no longer asks for it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import and_, delete, func, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnElement

from gateway.config import RetentionSettings
from gateway.evidence.archive import export_messages
from gateway.evidence.canonical import EventRecord
from gateway.evidence.check import pack_leaves, unpack_leaves
from gateway.evidence.sealer import EVENT_COLUMNS
from gateway.journal import Journal, Status, utcnow
from gateway.journal.exclusive import exclusive
from gateway.journal.model import as_utc
from gateway.journal.tables import (
    acts,
    events,
    evidence_batches,
    evidence_head,
    inbox,
    legal_holds,
    messages,
    prune_runs,
    registry_requests,
    result_versions,
    service_records,
    status_reports,
)

log = logging.getLogger("zdravlink.retention")

AT_REST = (Status.DELIVERED.value, Status.FAILED.value, Status.DEAD.value, Status.REJECTED.value)

#: Business records that keep the message they point to (their own retention is the law's, not ours).
KEEPERS = (service_records, acts, result_versions, registry_requests)
GENESIS = "0" * 64


def _at_rest_since(before: datetime) -> ColumnElement[bool]:
    """A message at rest and unchanged since ``before``: what a run chooses, and checks again as it removes."""
    return and_(messages.c.status.in_(AT_REST), messages.c.updated_at < before)


@dataclass(frozen=True)
class Hold:
    id: int
    message_id: str | None
    participant: str | None
    period_from: datetime | None
    period_to: datetime | None

    def covers(self, message_id: str, sender: str, recipient: str, created_at: datetime) -> bool:
        if self.message_id is not None and self.message_id != message_id:
            return False
        if self.participant is not None and self.participant not in (sender, recipient):
            return False
        if self.period_from is not None and created_at < self.period_from:
            return False
        return not (self.period_to is not None and created_at >= self.period_to)


@dataclass
class PruneResult:
    run: int
    messages: int = 0
    envelopes: int = 0
    events: int = 0
    held: int = 0
    kept_for_records: int = 0
    archives: list[dict[str, Any]] = field(default_factory=list)
    chain: str | None = None


def active_holds(conn: Connection) -> list[Hold]:
    return [Hold(int(r.id), r.message_id, r.participant, as_utc(r.period_from), as_utc(r.period_to))
            for r in conn.execute(select(legal_holds).where(legal_holds.c.released_at.is_(None)))]


def place_hold(journal: Journal, *, reason: str, by: str, message_id: str | None = None,
               participant: str | None = None, period_from: datetime | None = None,
               period_to: datetime | None = None) -> int:
    if not (message_id or participant or period_from or period_to):
        raise ValueError("a legal hold covers a message, a participant or a period")
    with journal.engine.begin() as conn:
        return int(conn.execute(insert(legal_holds).values(
            message_id=message_id, participant=participant, period_from=period_from, period_to=period_to,
            reason=reason, placed_at=utcnow(), placed_by=by).returning(legal_holds.c.id)).scalar_one())


def release_hold(journal: Journal, hold_id: int, by: str) -> bool:
    with journal.engine.begin() as conn:
        done = conn.execute(update(legal_holds).where(legal_holds.c.id == hold_id,
                                                      legal_holds.c.released_at.is_(None))
                            .values(released_at=utcnow(), released_by=by))
        return bool(done.rowcount)


class Pruner:
    def __init__(self, journal: Journal, settings: RetentionSettings, archive_dir: Path, *,
                 trust_store: Path | None = None, tsa_trust_store: Path | None = None) -> None:
        self.journal = journal
        self.settings = settings
        self.archive_dir = archive_dir
        self.trust_store = trust_store
        self.tsa_trust_store = tsa_trust_store

    # ---- which messages -------------------------------------------------------

    def _days(self, message_type: str, sender: str, recipient: str) -> tuple[float | None, float | None]:
        """(days, envelope_days) for a message: the longest of the rules that match it, else the defaults.

        A matching rule without ``days`` keeps the message itself for ever (its envelope may still go).
        """
        matched = [r for r in self.settings.rules
                   if (r.message_type is None or r.message_type == message_type)
                   and (r.participant is None or r.participant in (sender, recipient))]
        if not matched:
            return self.settings.default_days, self.settings.default_envelope_days
        whole = None if any(r.days is None for r in matched) else max(r.days or 0.0 for r in matched)
        envelope = max((r.envelope_days or r.days or 0.0) for r in matched)
        return whole, envelope

    def shortest_days(self) -> float | None:
        values = [v for r in self.settings.rules for v in (r.days, r.envelope_days) if v is not None]
        values += [v for v in (self.settings.default_days, self.settings.default_envelope_days) if v is not None]
        return min(values) if values else None

    # ---- a run ------------------------------------------------------------------

    def run_once(self, now: datetime | None = None, limit: int | None = None,
                 stopping: threading.Event | None = None) -> PruneResult:
        """Prune what is due at ``now``; at most ``limit`` messages (None: all that is due).

        With ``stopping``, the rests between chunks wait on it, and the run ends at the first chunk
        boundary after it is set. One run at a time per journal: two would both chain on the same
        previous run, fork the archive chain and archive the same messages twice, so a second one
        raises ``Busy`` at once.
        """
        with exclusive(self.journal, "prune"):
            return self._run_alone(now or utcnow(), limit, stopping)

    def _run_alone(self, now: datetime, limit: int | None, stopping: threading.Event | None) -> PruneResult:
        shortest = self.shortest_days()
        for leftover in self.archive_dir.glob("*.partial"):
            leftover.unlink()  # written by a run killed mid-archive; never listed, nothing was removed for it
        with self.journal.engine.begin() as conn:
            run = int(conn.execute(insert(prune_runs).values(started_at=now, messages=0, envelopes=0, events=0,
                                                             held=0, archives="[]")
                                   .returning(prune_runs.c.id)).scalar_one())
            previous = conn.execute(select(prune_runs.c.chain).where(prune_runs.c.chain.is_not(None))
                                    .order_by(prune_runs.c.id.desc()).limit(1)).scalar()
        result = PruneResult(run)
        chain = hashlib.sha256((previous or GENESIS).encode("ascii"))
        try:
            if shortest is not None:
                self._run(result, now, now - timedelta(days=shortest), chain, limit, stopping)
        except Exception as exc:
            self._finish(result, chain.hexdigest() if result.archives else None, f"{type(exc).__name__}: {exc}")
            raise
        self._finish(result, chain.hexdigest() if result.archives else None, None)
        return result

    def _run(self, result: PruneResult, now: datetime, before: datetime, chain: Any, limit: int | None,
             stopping: threading.Event | None) -> None:
        after: tuple[datetime, str] | None = None
        chunk = self.settings.chunk
        with self.journal.engine.connect() as conn:
            holds = active_holds(conn)
        while limit is None or result.messages < limit:
            if stopping is not None and stopping.is_set():
                return
            began = time.monotonic()
            with self.journal.engine.connect() as conn:
                head = int(conn.execute(select(evidence_head.c.last_event_id)).scalar_one())
                # The newest event is never removed: SQLite numbers a new row max(id) + 1, and an id handed
                # out again inside a sealed batch would break the chain there.
                top = int(conn.execute(select(func.coalesce(func.max(events.c.id), 0))).scalar_one())
                query = (select(messages.c.message_id, messages.c.sender, messages.c.recipient,
                                messages.c.message_type, messages.c.created_at, messages.c.updated_at,
                                messages.c.envelope_pruned_at)
                         .where(_at_rest_since(before))
                         .order_by(messages.c.updated_at, messages.c.message_id).limit(chunk))
                if after is not None:
                    query = query.where((messages.c.updated_at > after[0])
                                        | ((messages.c.updated_at == after[0]) & (messages.c.message_id > after[1])))
                rows = conn.execute(query).all()
                if not rows:
                    return
                after = (rows[-1].updated_at, rows[-1].message_id)
                whole, envelope_only = self._due(conn, rows, now, holds, head, top, result)
            if limit is not None:
                whole = whole[:max(0, limit - result.messages)]
            if whole:
                self._prune(result, whole, chain, now, before, envelope_only=False)
            if envelope_only:
                self._prune(result, envelope_only, chain, now, before, envelope_only=True)
            if whole or envelope_only:
                self._rest((time.monotonic() - began) * (1 / self.settings.share - 1), stopping)

    @staticmethod
    def _rest(seconds: float, stopping: threading.Event | None) -> None:
        if seconds <= 0:
            return
        if stopping is not None:
            stopping.wait(seconds)
        else:
            time.sleep(seconds)

    def _due(self, conn: Connection, rows: Sequence[Any], now: datetime, holds: list[Hold], head: int, top: int,
             result: PruneResult) -> tuple[list[str], list[str]]:
        ids = [r.message_id for r in rows]
        kept: set[str] = set()
        for table in KEEPERS:
            kept.update(conn.execute(select(table.c.message_id).where(table.c.message_id.in_(ids))).scalars())
        last_event = dict(conn.execute(select(events.c.message_id, func.max(events.c.id))
                                       .where(events.c.message_id.in_(ids)).group_by(events.c.message_id)).all())
        whole: list[str] = []
        envelope_only: list[str] = []
        for r in rows:
            days, envelope_days = self._days(r.message_type, r.sender, r.recipient)
            age = now - as_utc(r.updated_at)
            due_whole = days is not None and age >= timedelta(days=days)
            due_envelope = (envelope_days is not None and age >= timedelta(days=envelope_days)
                            and r.envelope_pruned_at is None)
            if not (due_whole or due_envelope):
                continue
            newest = int(last_event.get(r.message_id) or 0)
            if newest > head:
                continue  # not all sealed yet: the next run takes it
            if newest == top:
                due_whole = False  # the newest event stays (the comment in _run)
                if not due_envelope:
                    continue
            if any(h.covers(r.message_id, r.sender, r.recipient, as_utc(r.created_at)) for h in holds):
                result.held += 1
                continue
            if r.message_id in kept:
                result.kept_for_records += 1
                if due_envelope:
                    envelope_only.append(r.message_id)
                continue
            (whole if due_whole else envelope_only).append(r.message_id)
        return whole, envelope_only

    def _prune(self, result: PruneResult, ids: list[str], chain: Any, now: datetime, before: datetime, *,
               envelope_only: bool) -> None:
        """Archive these messages, then remove them (or their envelopes); the archive may hold one that changed
        meanwhile (an operator's replay) and so stays."""
        self.archive_dir.mkdir(parents=True, exist_ok=True)
        name = f"prune-{result.run:06d}-{len(result.archives) + 1:04d}.zip"
        path = self.archive_dir / name
        partial = path.with_name(name + ".partial")
        exported = export_messages(self.journal, partial, ids, trust_store=self.trust_store,
                                   tsa_trust_store=self.tsa_trust_store, kind="prune",
                                   extra={"run": result.run, "envelope_only": envelope_only})
        partial.replace(path)
        digest = _file_digest(path)
        chain.update(digest.encode("ascii"))
        result.archives.append({"file": name, "sha256": digest, "messages": len(ids), "envelope_only": envelope_only})
        # The run's record is written in the transaction that removes the chunk, so a killed run lists all it
        # removed; ``result`` takes the new counts only once that transaction has committed.
        if envelope_only:
            with self.journal.engine.begin() as conn:
                # Re-checked as ``_still_due`` does: an operator's replay since the choice needs its envelope.
                done = conn.execute(update(messages).where(messages.c.message_id.in_(ids),
                                                           messages.c.envelope_pruned_at.is_(None),
                                                           _at_rest_since(before))
                                    .values(envelope=b"", envelope_pruned_at=now))
                after = replace(result, envelopes=result.envelopes + int(done.rowcount))
                self._record(conn, after, chain.hexdigest())
            result.envelopes = after.envelopes
            return
        with self.journal.engine.begin() as conn:
            ids = self._still_due(conn, ids, before)
            events_removed = self._delete(conn, ids)
            after = replace(result, messages=result.messages + len(ids), envelopes=result.envelopes + len(ids),
                            events=result.events + events_removed)
            self._record(conn, after, chain.hexdigest())
        result.messages, result.envelopes, result.events = after.messages, after.envelopes, after.events
        log.info("retention: %d message(s), %d event(s) pruned into %s (%d bytes)", len(ids), events_removed, name,
                 exported.bytes)

    def _still_due(self, conn: Connection, ids: list[str], before: datetime) -> list[str]:
        """Those of ``ids`` still at rest, unchanged since ``before`` and wholly sealed, locked until the commit.

        Between the choice and the delete an operator may have replayed one (a new round, new events):
        it is left alone.
        """
        ordered = sorted(ids)
        if conn.dialect.name == "sqlite":  # the first write takes SQLite's one write lock for the transaction
            conn.execute(update(messages).where(messages.c.message_id.in_(ordered))
                         .values(updated_at=messages.c.updated_at))
        else:
            conn.execute(select(messages.c.message_id).where(messages.c.message_id.in_(ordered))
                         .order_by(messages.c.message_id).with_for_update())
        head = int(conn.execute(select(evidence_head.c.last_event_id)).scalar_one())
        top = int(conn.execute(select(func.coalesce(func.max(events.c.id), 0))).scalar_one())
        at_rest = set(conn.execute(select(messages.c.message_id).where(
            messages.c.message_id.in_(ordered), _at_rest_since(before))).scalars())
        newest = dict(conn.execute(select(events.c.message_id, func.max(events.c.id))
                                   .where(events.c.message_id.in_(ordered)).group_by(events.c.message_id)).all())
        return [m for m in ids if m in at_rest and int(newest.get(m) or 0) <= head and newest.get(m) != top]

    def _delete(self, conn: Connection, ids: list[str]) -> int:
        """Delete these messages with their events; their leaves go to their batch records. Events removed."""
        rows = conn.execute(select(*EVENT_COLUMNS).where(events.c.message_id.in_(ids)).order_by(events.c.id)).all()
        if not rows:
            return 0
        leaves = [(int(r.id), EventRecord.of(r).leaf()) for r in rows]
        batches = conn.execute(select(evidence_batches.c.seq, evidence_batches.c.first_event_id,
                                      evidence_batches.c.last_event_id, evidence_batches.c.event_count,
                                      evidence_batches.c.pruned_count, evidence_batches.c.pruned_leaves)
                               .where(evidence_batches.c.last_event_id >= leaves[0][0],
                                      evidence_batches.c.first_event_id <= leaves[-1][0])
                               .order_by(evidence_batches.c.seq)).all()
        by_batch: dict[int, dict[int, bytes]] = {}
        cursor = 0
        for event_id, leaf in leaves:
            while batches[cursor].last_event_id < event_id:
                cursor += 1
            by_batch.setdefault(cursor, {})[event_id] = leaf
        for index, removed in by_batch.items():
            b = batches[index]
            kept = unpack_leaves(b.pruned_leaves)
            kept.update(removed)
            count = int(b.pruned_count) + len(removed)
            conn.execute(update(evidence_batches).where(evidence_batches.c.seq == b.seq).values(
                pruned_count=count, pruned_leaves=None if count == b.event_count else pack_leaves(kept)))
        for i in range(0, len(ids), 500):
            part = ids[i:i + 500]
            for table in (inbox, status_reports):
                conn.execute(delete(table).where(table.c.message_id.in_(part)))
            conn.execute(delete(events).where(events.c.message_id.in_(part)))
            conn.execute(delete(messages).where(messages.c.message_id.in_(part)))
        return len(leaves)

    @staticmethod
    def _record(conn: Connection, result: PruneResult, chain: str | None, **more: Any) -> None:
        """The run's row in ``prune_runs`` as ``result`` has it (and ``more`` columns)."""
        conn.execute(update(prune_runs).where(prune_runs.c.id == result.run).values(
            messages=result.messages, envelopes=result.envelopes, events=result.events, held=result.held,
            archives=json.dumps(result.archives), chain=chain, **more))

    def _finish(self, result: PruneResult, chain: str | None, error: str | None) -> None:
        result.chain = chain
        with self.journal.engine.begin() as conn:
            self._record(conn, result, chain, finished_at=utcnow(), error=error)


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def prune_totals(journal: Journal) -> dict[str, Any]:
    """What retention has removed in all, and its last run: for the metrics and the console."""
    with journal.engine.connect() as conn:
        totals = conn.execute(select(func.coalesce(func.sum(prune_runs.c.messages), 0),
                                     func.coalesce(func.sum(prune_runs.c.envelopes), 0),
                                     func.coalesce(func.sum(prune_runs.c.events), 0),
                                     func.max(prune_runs.c.finished_at))).one()
        holds = conn.execute(select(func.count()).select_from(legal_holds)
                             .where(legal_holds.c.released_at.is_(None))).scalar_one()
    return {"messages": int(totals[0]), "envelopes": int(totals[1]), "events": int(totals[2]),
            "last_run": as_utc(totals[3]) if totals[3] is not None else None, "holds": int(holds)}
