"""``zdravlink journal verify``: the evidence chain checked from the database, batch by batch.

Events are read once, in id order, a few thousand at a time, and handed to the
``ChainCheck`` batch by batch; envelopes are read afterwards for the messages whose
envelope-writing event was checked. A range (``--from``/``--to``, by the time a batch
was sealed) is checked with the batch before it (for the link) and the batches after
it up to the checkpoint that covers it.
"""
from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta

from sqlalchemy import exists, func, select
from sqlalchemy.engine import Connection

from gateway.evidence.canonical import BatchRecord, EventRecord
from gateway.evidence.check import ChainCheck, CheckpointData, Report, unpack_leaves
from gateway.evidence.sealer import EVENT_COLUMNS
from gateway.journal import Journal, utcnow
from gateway.journal.model import as_utc
from gateway.journal.tables import events, evidence_batches, evidence_checkpoints, evidence_head, messages
from signing.trust import TrustStore

READ_EVENTS = 5000
READ_ENVELOPES = 500


def verify_journal(journal: Journal, *, trust: TrustStore | None, tsa_trust: TrustStore | None,
                   start: datetime | None = None, end: datetime | None = None,
                   min_retention: timedelta | None = None) -> Report:
    """Check the chain (or the batches sealed in [start, end)); the report names what does not hold.

    ``min_retention``: the shortest time retention keeps anything; a batch younger than that
    with events recorded as pruned is a warning (retention would not have removed them).
    """
    whole = start is None and end is None
    check = ChainCheck(trust, tsa_trust, whole_trails=whole)
    with journal.engine.connect() as conn:
        first, last = sealed_range(conn, start, end)
        if first is None or last is None:
            if whole:
                _unsealed(conn, check)
            return check.report
        cover = conn.execute(select(func.min(evidence_checkpoints.c.batch_seq))
                             .where(evidence_checkpoints.c.batch_seq >= last)).scalar()
        upto = int(cover) if cover is not None else last
        rows = conn.execute(select(evidence_batches).where(evidence_batches.c.seq >= max(1, first - 1),
                                                           evidence_batches.c.seq <= upto)
                            .order_by(evidence_batches.c.seq)).all()
        before = next((BatchRecord.of(r) for r in rows if r.seq == first - 1), None)
        records = [BatchRecord.of(r) for r in rows if r.seq >= first]
        pruned = {int(r.seq): (int(r.pruned_count), r.pruned_leaves) for r in rows}
        check.chain(records, before)
        for cp in conn.execute(select(evidence_checkpoints).where(evidence_checkpoints.c.batch_seq >= first,
                                                                 evidence_checkpoints.c.batch_seq <= upto)
                               .order_by(evidence_checkpoints.c.batch_seq)):
            check.checkpoint(CheckpointData(int(cp.batch_seq), cp.batch_hash, cp.statement, cp.signature,
                                            cp.tsa_token))
        checked = [r for r in records if r.seq <= last]
        young = utcnow() - min_retention if min_retention is not None else None
        for rec, found in batch_events(conn, checked):
            count, blob = pruned[rec.seq]
            if count and young is not None and datetime.fromisoformat(rec.sealed_at) > young:
                # A warning, not a failure: the first sealing after the upgrade seals old events late.
                check.warn(rec.seq, f"{count} event(s) recorded as pruned from a batch sealed {rec.sealed_at}, "
                                    "younger than the shortest retention: removed behind retention's back, unless "
                                    "the batch was sealed late (the first sealing of an older journal)",
                           [e.message_id for e in found])
            try:
                kept = unpack_leaves(blob)
            except ValueError as exc:
                check.broken(rec.seq, str(exc))
                kept = {}
            check.batch(rec, found, kept, wholly_pruned=count == rec.event_count and blob is None)
        _envelopes(conn, check)
        if whole:
            _head(conn, check, last)
            _unsealed(conn, check)
            _trailless(conn, check)
    check.anchoring()
    return check.report


def sealed_range(conn: Connection, start: datetime | None, end: datetime | None) -> tuple[int | None, int | None]:
    query = select(func.min(evidence_batches.c.seq), func.max(evidence_batches.c.seq))
    if start is not None:
        query = query.where(evidence_batches.c.sealed_at >= start)
    if end is not None:
        query = query.where(evidence_batches.c.sealed_at < end)
    low, high = conn.execute(query).one()
    return (int(low), int(high)) if low is not None else (None, None)


def batch_events(conn: Connection, records: list[BatchRecord]) -> Iterator[tuple[BatchRecord, list[EventRecord]]]:
    """Each batch with the events in its range, read in one pass in id order."""
    if not records:
        return
    query = (select(*EVENT_COLUMNS).where(events.c.id >= records[0].first_event_id,
                                          events.c.id <= records[-1].last_event_id).order_by(events.c.id))
    stream = conn.execution_options(stream_results=True, yield_per=READ_EVENTS).execute(query)
    pending = iter(records)
    rec = next(pending)
    found: list[EventRecord] = []
    for row in stream:
        while int(row.id) > rec.last_event_id:
            yield rec, found
            rec, found = next(pending), []
        found.append(EventRecord.of(row))
    yield rec, found
    for rest in pending:
        yield rest, []


def _envelopes(conn: Connection, check: ChainCheck) -> None:
    ids = check.messages_with_envelopes()
    for i in range(0, len(ids), READ_ENVELOPES):
        chunk = ids[i:i + READ_ENVELOPES]
        rows = {r.message_id: r for r in conn.execute(
            select(messages.c.message_id, messages.c.envelope, messages.c.envelope_pruned_at)
            .where(messages.c.message_id.in_(chunk)))}
        for mid in chunk:
            row = rows.get(mid)
            if row is None:
                check.envelope_missing(mid)
            elif row.envelope_pruned_at is None:
                check.envelope(mid, bytes(row.envelope))


def _head(conn: Connection, check: ChainCheck, last: int) -> None:
    """The head row must be the last batch: batches removed from the end (with their events) show here."""
    top = conn.execute(select(evidence_head.c.seq, evidence_head.c.hash, evidence_head.c.last_event_id)).one()
    rec = check.headers.get(last)
    if int(top.seq) != last or rec is None or rec.hash != top.hash or rec.last_event_id != int(top.last_event_id):
        check.broken(last + 1 if int(top.seq) > last else last,
                     f"the chain's head names batch {top.seq}, but the last batch record is {last}: "
                     "batches were removed from the end, or the head was rewritten")


def _unsealed(conn: Connection, check: ChainCheck) -> None:
    """Events past the head are not evidence yet; a backlog says the sealer is not running."""
    top = conn.execute(select(evidence_head.c.last_event_id)).scalar_one()
    count, oldest = conn.execute(select(func.count(), func.min(events.c.at)).where(events.c.id > top)).one()
    if count:
        age = (utcnow() - as_utc(oldest)).total_seconds()
        if age > 300:
            check.warn(None, f"{count} event(s) not sealed yet, the oldest {age:.0f} s old: is the evidence worker "
                             "running?")


def _trailless(conn: Connection, check: ChainCheck) -> None:
    """A message row with no event at all was never accepted through the journal: inserted behind its back."""
    orphans = conn.execute(select(messages.c.message_id).where(
        ~exists().where(events.c.message_id == messages.c.message_id)).limit(50)).scalars().all()
    if orphans:
        check.broken(None, f"{len(orphans)} message(s) with no event in the journal", orphans)
