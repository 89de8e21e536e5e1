"""The evidence chain on SQLite and PostgreSQL: sealing, verifying, and every kind of tampering found.

Each tamper test builds a journal of three sealed batches, changes it behind the
gateway's back the way someone with the database's password could, and expects
``verify_journal`` to say the evidence is broken at the batch where it was changed,
naming the messages in it.
"""
from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable
from datetime import timedelta

import pytest
import sqlalchemy as sa

from gateway.envelope import Envelope
from gateway.evidence import merkle
from gateway.evidence.canonical import BatchRecord, EventRecord, Statement
from gateway.evidence.check import Report
from gateway.evidence.sealer import Sealer
from gateway.evidence.verify import verify_journal
from gateway.journal import Change, Journal, Status, utcnow
from gateway.journal.chain import detail_text, event_row
from gateway.journal.tables import events, evidence_batches, messages
from gateway.xmlsafe import parse_xml

NS = "urn://zdravlink/types/notice/1.0"


def make_env(text: str = "x") -> Envelope:
    payload = parse_xml(f'<n:Notice xmlns:n="{NS}"><n:Text>{text}</n:Text></n:Notice>'.encode())
    return Envelope(message_id=str(uuid.uuid1()), sender="lab", recipient="mis", message_type=NS, payload=payload)


# ---- Merkle trees ------------------------------------------------------------


def _mth(leaves: list[bytes]) -> bytes:
    """RFC 6962's MTH written from its recursive definition, to check ours against."""
    if len(leaves) == 1:
        return leaves[0]
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return merkle.node_hash(_mth(leaves[:k]), _mth(leaves[k:]))


def test_merkle_root_and_proofs_follow_rfc6962() -> None:
    for n in range(1, 34):
        leaves = [merkle.leaf_hash(str(i).encode()) for i in range(n)]
        root = merkle.root(leaves)
        assert root == _mth(leaves), n
        fast = merkle.proofs(leaves, range(n))
        for i in range(n):
            path = merkle.proof(leaves, i)
            assert fast[i] == path, (n, i)
            assert merkle.verify_proof(leaves[i], i, n, path, root), (n, i)
            assert not merkle.verify_proof(merkle.leaf_hash(b"forged"), i, n, path, root)
            if n > 1:
                assert not merkle.verify_proof(leaves[i], (i + 1) % n, n, path, root)
    # A node never passes for a leaf (the 0x00 / 0x01 prefixes).
    a, b = merkle.leaf_hash(b"a"), merkle.leaf_hash(b"b")
    assert merkle.leaf_hash(a + b) != merkle.node_hash(a, b)


def test_statement_round_trip_and_refuses_other_forms() -> None:
    s = Statement(7, "ab" * 32, "2026-11-30T01:00:00.000000+00:00")
    assert Statement.parse(s.text()) == s
    for bad in (s.text().replace("batch: 7", "batch: 07"), s.text() + "extra\n", s.text().upper()):
        with pytest.raises((ValueError, KeyError)):
            Statement.parse(bad)


# ---- the chain in a journal --------------------------------------------------


def _traffic(journal: Journal, count: int) -> list[str]:
    """``count`` messages, each accepted, routed and delivered; two of them in one group commit."""
    ids = []
    for i in range(count):
        env = make_env(str(i))
        journal.accept(env, source="rest", actor="api", route="r")
        ids.append(env.message_id)
    journal.record_many([_change(mid, "ROUTED", Status.ROUTED) for mid in ids])
    for mid in ids:
        journal.record(mid, "DELIVERED", "w", {"channel": "rest"}, status=Status.DELIVERED)
    return ids


def _change(mid: str, kind: str, status: Status) -> Change:
    return Change(mid, kind, "router", {"route": "r"}, status, None, {})


@pytest.fixture
def sealed(journal: Journal) -> list[list[str]]:
    """Three sealed batches of three messages each (nine events a batch); the message ids per batch."""
    sealer = Sealer(journal)
    per_batch = []
    for _ in range(3):
        per_batch.append(_traffic(journal, 3))
        assert len(sealer.seal_once()) == 1
    return per_batch


def _batch(journal: Journal, seq: int) -> BatchRecord:
    with journal.engine.connect() as conn:
        return BatchRecord.of(conn.execute(sa.select(evidence_batches).where(evidence_batches.c.seq == seq)).one())


def _verify(journal: Journal) -> Report:
    return verify_journal(journal, trust=None, tsa_trust=None)


def test_sealed_chain_verifies_and_sealing_again_adds_nothing(journal: Journal, sealed: list[list[str]]) -> None:
    report = _verify(journal)
    assert report.ok, [f.line() for f in report.broken]
    assert (report.batches, report.events, report.envelopes) == (3, 27, 9)
    assert Sealer(journal).seal_once() == []
    b1, b2 = _batch(journal, 1), _batch(journal, 2)
    assert (b1.first_event_id, b1.last_event_id, b1.event_count) == (1, 9, 9)
    assert b2.prev_hash == b1.hash and b2.first_event_id == 10
    # The record's hash covers every field of it.
    assert b1.hash_holds() and not BatchRecord(**{**b1.to_json(), "root": "0" * 64}).hash_holds()


def test_max_batch_splits_and_the_chain_still_links(journal: Journal) -> None:
    _traffic(journal, 4)  # 12 events
    made = Sealer(journal, max_batch=5).seal_once()
    assert [b.event_count for b in made] == [5, 5, 2]
    assert _verify(journal).ok


def _sql(journal: Journal, *statements: str, **params: object) -> None:
    with journal.engine.begin() as conn:
        for s in statements:
            conn.execute(sa.text(s), params)


def _event_ids(journal: Journal, mid: str) -> list[int]:
    with journal.engine.connect() as conn:
        return list(conn.execute(sa.select(events.c.id).where(events.c.message_id == mid).order_by(events.c.id))
                    .scalars())


def _edit_detail(journal: Journal, batches: list[list[str]]) -> tuple[int, str]:
    mid = batches[1][0]
    _sql(journal, "UPDATE events SET detail = '{\"channel\": \"soap\"}' WHERE message_id = :m AND kind = 'DELIVERED'",
         m=mid)
    return 2, mid


def _edit_with_recomputed_trail(journal: Journal, batches: list[list[str]]) -> tuple[int, str]:
    """The DELIVERED event's time moved and its hash recomputed: the trail check alone passes."""
    mid = batches[1][1]
    with journal.engine.begin() as conn:
        last = conn.execute(sa.select(events).where(events.c.message_id == mid).order_by(events.c.id.desc())
                            .limit(1)).one()
        row = event_row(last.prev_hash, mid, last.at - timedelta(hours=3), last.status, last.kind, last.actor,
                        last.detail)
        conn.execute(sa.update(events).where(events.c.id == last.id).values(at=row["at"], hash=row["hash"]))
    assert journal.verify_trail(mid)
    return 2, mid


def _delete_message(journal: Journal, batches: list[list[str]]) -> tuple[int, str]:
    mid = batches[1][2]
    _sql(journal, "DELETE FROM events WHERE message_id = :m", "DELETE FROM messages WHERE message_id = :m", m=mid)
    return 2, ""  # gone with its events: the batch is named, and the messages left in it


def _delete_batch(journal: Journal, batches: list[list[str]]) -> tuple[int, str]:
    """A whole batch gone, its events, its messages and its record: the next batch no longer links."""
    for mid in batches[1]:
        _sql(journal, "DELETE FROM events WHERE message_id = :m", "DELETE FROM messages WHERE message_id = :m", m=mid)
    _sql(journal, "DELETE FROM evidence_batches WHERE seq = 2")
    return 3, ""


def _delete_day(journal: Journal, batches: list[list[str]]) -> tuple[int, str]:
    """Everything after batch 1 deleted, batch records and head rolled back: only a checkpoint would show it.

    Without checkpoints the chain left is consistent; what shows is the head pointing past it.
    """
    later = batches[1] + batches[2]
    for mid in later:
        _sql(journal, "DELETE FROM events WHERE message_id = :m", "DELETE FROM messages WHERE message_id = :m", m=mid)
    _sql(journal, "DELETE FROM evidence_batches WHERE seq > 1")
    return 2, ""


def _delete_day_keep_records(journal: Journal, batches: list[list[str]]) -> tuple[int, str]:
    """The messages of batches 2 and 3 deleted, the batch records kept: their events are missing."""
    for mid in batches[1] + batches[2]:
        _sql(journal, "DELETE FROM events WHERE message_id = :m", "DELETE FROM messages WHERE message_id = :m", m=mid)
    return 2, ""


def _swap_events(journal: Journal, batches: list[list[str]]) -> tuple[int, str]:
    """Two events of different messages exchange places (ids): every trail still verifies."""
    a, b = _event_ids(journal, batches[1][0])[-1], _event_ids(journal, batches[1][1])[-1]
    _sql(journal, "UPDATE events SET id = -1 WHERE id = :a", "UPDATE events SET id = :a WHERE id = :b",
         "UPDATE events SET id = :b WHERE id = -1", a=a, b=b)
    assert journal.verify_trail(batches[1][0]) and journal.verify_trail(batches[1][1])
    return 2, batches[1][0]


def _forge_event(journal: Journal, batches: list[list[str]]) -> tuple[int, str]:
    """A REPLAYED event slipped into batch 2's range (later ids moved up), the message's chain recomputed."""
    mid = batches[1][0]
    ids = _event_ids(journal, mid)
    with journal.engine.begin() as conn:
        rows = conn.execute(sa.select(events).where(events.c.message_id == mid).order_by(events.c.id)).all()
        conn.execute(sa.text("UPDATE events SET id = id + 1000000 WHERE id > :x"), {"x": ids[-1]})
        conn.execute(sa.text("UPDATE events SET id = id - 999999 WHERE id > 1000000"))
        forged = event_row(rows[-1].hash, mid, rows[-1].at, rows[-1].status, "REPLAYED", "operator",
                           detail_text({"replay": 1}))
        conn.execute(sa.insert(events).values(id=ids[-1] + 1, **forged))
    assert journal.verify_trail(mid)
    return 2, mid


def _edit_envelope(journal: Journal, batches: list[list[str]]) -> tuple[int, str]:
    mid = batches[2][0]
    with journal.engine.begin() as conn:
        xml = conn.execute(sa.select(messages.c.envelope).where(messages.c.message_id == mid)).scalar_one()
        conn.execute(sa.update(messages).where(messages.c.message_id == mid)
                     .values(envelope=bytes(xml).replace(b">0<", b">9<")))
    return 3, mid


def _rewrite_batch_record(journal: Journal, batches: list[list[str]]) -> tuple[int, str]:
    """Batch 2's event edited (its trail recomputed) and its record rebuilt to match: the link from batch 3 breaks."""
    _edit_with_recomputed_trail(journal, batches)
    now = utcnow()
    with journal.engine.begin() as conn:
        rec = _batch(journal, 2)
        rows = conn.execute(sa.select(events).where(events.c.id.between(rec.first_event_id, rec.last_event_id))
                            .order_by(events.c.id)).all()
        rebuilt = BatchRecord.make(2, rec.first_event_id, rec.last_event_id, [EventRecord.of(r).leaf() for r in rows],
                                   rec.prev_hash, now)
        conn.execute(sa.update(evidence_batches).where(evidence_batches.c.seq == 2)
                     .values(root=rebuilt.root, hash=rebuilt.hash, sealed_at=now))
    return 3, ""


TAMPERING: dict[str, Callable[[Journal, list[list[str]]], tuple[int, str]]] = {
    "edit an event's detail": _edit_detail,
    "edit an event, its trail recomputed": _edit_with_recomputed_trail,
    "delete one message with its events": _delete_message,
    "delete a batch": _delete_batch,
    "delete a day, keeping the batch records": _delete_day_keep_records,
    "swap two events": _swap_events,
    "insert a forged event with a recomputed trail": _forge_event,
    "edit an envelope": _edit_envelope,
    "rebuild a batch record over edited events": _rewrite_batch_record,
}


@pytest.mark.parametrize("how", list(TAMPERING))
def test_tampering_is_found_and_names_the_batch(journal: Journal, sealed: list[list[str]], how: str) -> None:
    assert _verify(journal).ok
    batch, mid = TAMPERING[how](journal, sealed)
    report = _verify(journal)
    assert not report.ok, how
    assert report.first_broken_batch() == batch, [f.line() for f in report.broken]
    if mid:
        assert any(mid in f.messages for f in report.broken if f.batch == batch), [f.line() for f in report.broken]


def test_a_day_deleted_with_its_batch_records_shows_against_the_head(journal: Journal,
                                                                     sealed: list[list[str]]) -> None:
    """Rolling the batch records back too leaves a consistent chain; the head row still names batch 3."""
    _delete_day(journal, sealed)
    report = _verify(journal)
    assert not report.ok
    assert any("head" in f.what for f in report.broken), [f.line() for f in report.broken]


def test_unsealed_events_are_not_evidence_yet(journal: Journal, sealed: list[list[str]]) -> None:
    _traffic(journal, 1)
    assert _verify(journal).ok  # young unsealed events: neither broken nor a warning
    Sealer(journal).seal_once()
    assert _batch(journal, 4).event_count == 3 and _verify(journal).ok


def test_the_envelope_digest_is_the_stored_envelope(journal: Journal) -> None:
    env = make_env()
    journal.accept(env, source="rest", actor="api", route="r")
    first = journal.trail(env.message_id)[0]
    with journal.engine.connect() as conn:
        xml = conn.execute(sa.select(messages.c.envelope).where(messages.c.message_id == env.message_id)).scalar_one()
    assert first.detail["envelope_sha256"] == hashlib.sha256(bytes(xml)).hexdigest()


@pytest.mark.postgres
def test_on_postgresql_the_sealer_waits_for_writers_in_flight_and_never_seals_past_them(db_url: str) -> None:
    """A transaction that inserted an event and has not committed holds the horizon: nothing is sealed past it."""
    if not db_url.startswith("postgresql"):
        pytest.skip("PostgreSQL's commit order")
    journal = Journal(db_url)
    journal.migrate()
    try:
        mid = _traffic(journal, 1)[0]
        sealer = Sealer(journal)
        open_writer = journal.engine.connect()
        tx = open_writer.begin()
        row = event_row(journal.trail(mid)[-1].hash, mid, utcnow(), "DELIVERED", "NOTE", "slow-writer", "{}")
        open_writer.execute(sa.insert(events).values(**row))
        _traffic(journal, 1)  # a later writer commits first, with higher ids
        began = time.perf_counter()
        assert sealer.seal_once() == []  # the horizon is not settled: nothing sealed
        assert time.perf_counter() - began < 2
        tx.commit()
        open_writer.close()
        assert len(sealer.seal_once()) == 1
        report = _verify(journal)
        assert report.ok and report.events == 7
    finally:
        journal.engine.dispose()
