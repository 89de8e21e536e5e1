"""Retention on SQLite and PostgreSQL: what is due is archived, then removed; the chain verifies after; holds hold."""
from __future__ import annotations

import hashlib
import json
import threading
import uuid
import zipfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from gateway.config import EvidenceSettings, RetentionRule, RetentionSettings
from gateway.envelope import Envelope
from gateway.errors import Rejection
from gateway.evidence.archive import verify_archive
from gateway.evidence.canonical import EventRecord
from gateway.evidence.check import pack_leaves, unpack_leaves
from gateway.evidence.duty import EvidenceDuty
from gateway.evidence.retention import Pruner, place_hold, prune_totals, release_hold
from gateway.evidence.sealer import EVENT_COLUMNS, Sealer
from gateway.evidence.verify import verify_journal
from gateway.journal import Journal, Status, utcnow
from gateway.journal.exclusive import Busy
from gateway.journal.tables import events, evidence_batches, evidence_head, messages, prune_runs
from gateway.xmlsafe import parse_xml
from tests.support.waiting import wait_for

NS = "urn://zdravlink/types/notice/1.0"


def send(journal: Journal, recipient: str = "mis", *, deliver: bool = True) -> str:
    payload = parse_xml(f'<n:Notice xmlns:n="{NS}"><n:Text>{recipient}</n:Text></n:Notice>'.encode())
    env = Envelope(message_id=str(uuid.uuid1()), sender="lab", recipient=recipient, message_type=NS, payload=payload)
    journal.accept(env, source="rest", actor="api", route="r")
    if deliver:
        journal.record(env.message_id, "DELIVERED", "w", {}, status=Status.DELIVERED)
    return env.message_id


def count(journal: Journal, table: sa.Table) -> int:
    with journal.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def exists(journal: Journal, mid: str) -> bool:
    with journal.engine.connect() as conn:
        return conn.execute(sa.select(messages.c.message_id).where(messages.c.message_id == mid)).first() is not None


def settings(**kw: object) -> RetentionSettings:
    return RetentionSettings(default_days=30, rules=[RetentionRule(participant="keeper", days=365)], chunk=4,
                             **kw)  # type: ignore[arg-type]


def test_pruning_archives_first_removes_what_is_due_and_the_chain_still_verifies(journal: Journal,
                                                                                 tmp_path: Path) -> None:
    sealer = Sealer(journal)
    due = [send(journal) for _ in range(5)]
    keeper = send(journal, "keeper")  # a year for this participant
    held = send(journal)
    sealer.seal_once()
    due += [send(journal) for _ in range(4)]
    in_flight = send(journal, deliver=False)  # never pruned while it moves
    sealer.seal_once()
    unsealed = send(journal)  # not sealed yet: waits for the next run
    place_hold(journal, reason="court order 12/26", by="test", message_id=held)
    events_before = count(journal, events)

    result = Pruner(journal, settings(), tmp_path / "archives").run_once(now=utcnow() + timedelta(days=31))

    assert (result.messages, result.events, result.held) == (9, 18, 1)
    assert sum(a["messages"] for a in result.archives) == 9 and len(result.archives) == 3 and result.chain
    assert not any(exists(journal, m) for m in due)
    assert all(exists(journal, m) for m in (keeper, held, in_flight, unsealed))
    assert count(journal, events) == events_before - 18
    # Every batch record stays; the removed events' leaves are kept in them, and the chain verifies.
    assert count(journal, evidence_batches) == 2
    report = verify_journal(journal, trust=None, tsa_trust=None)  # (the retention floor: the test after next)
    assert report.ok, [f.line() for f in report.broken]
    # Each archive verifies alone, and holds the messages it removed with their proofs.
    removed: set[str] = set()
    for archive in result.archives:
        path = tmp_path / "archives" / archive["file"]
        checked = verify_archive(path)
        assert checked.ok, [f.line() for f in checked.broken]
        assert checked.envelopes == archive["messages"]
        with zipfile.ZipFile(path) as z:
            removed |= set(json.loads(z.read("manifest.json"))["messages"])
    assert removed == set(due)
    totals = prune_totals(journal)
    assert totals["messages"] == 9 and totals["holds"] == 1

    # The hold released, the next run takes that message too; the runs' archive chains link.
    assert release_hold(journal, 1, "test")
    send(journal, "keeper")
    sealer.seal_once()
    again = Pruner(journal, settings(), tmp_path / "archives").run_once(now=utcnow() + timedelta(days=31))
    assert again.messages == 2 and not exists(journal, held) and not exists(journal, unsealed)
    with journal.engine.connect() as conn:
        chains = conn.execute(sa.select(prune_runs.c.chain).order_by(prune_runs.c.id)).scalars().all()
    assert chains[0] == result.chain and chains[1] == again.chain != result.chain
    assert verify_journal(journal, trust=None, tsa_trust=None).ok


def test_a_whole_batch_pruned_keeps_its_record_and_the_links_hold(journal: Journal, tmp_path: Path) -> None:
    sealer = Sealer(journal)
    for _ in range(3):
        send(journal)
        sealer.seal_once()
    send(journal, "keeper")
    sealer.seal_once()
    Pruner(journal, settings(), tmp_path).run_once(now=utcnow() + timedelta(days=31))
    with journal.engine.connect() as conn:
        rows = conn.execute(sa.select(evidence_batches).order_by(evidence_batches.c.seq)).all()
    assert [(r.pruned_count, r.pruned_leaves) for r in rows] == [(2, None)] * 3 + [(0, None)]
    report = verify_journal(journal, trust=None, tsa_trust=None)
    assert report.ok and report.pruned_batches == 3


def test_the_newest_event_is_never_pruned_so_no_id_comes_back(journal: Journal, tmp_path: Path) -> None:
    """SQLite numbers a new event max(id) + 1: pruning the newest would hand its id out again inside a batch."""
    sealer = Sealer(journal)
    first, last = send(journal), send(journal)
    sealer.seal_once()
    Pruner(journal, settings(), tmp_path).run_once(now=utcnow() + timedelta(days=31))
    assert not exists(journal, first) and exists(journal, last)
    send(journal)
    sealer.seal_once()
    assert verify_journal(journal, trust=None, tsa_trust=None).ok


def test_tampering_after_pruning_is_still_found(journal: Journal, tmp_path: Path) -> None:
    sealer = Sealer(journal)
    gone = [send(journal) for _ in range(3)]
    kept = [send(journal, "keeper") for _ in range(3)]
    sealer.seal_once()
    Pruner(journal, settings(), tmp_path).run_once(now=utcnow() + timedelta(days=31))
    assert not any(exists(journal, m) for m in gone)
    with journal.engine.begin() as conn:
        conn.execute(sa.update(events).where(events.c.message_id == kept[1], events.c.kind == "DELIVERED")
                     .values(actor="someone-else"))
    report = verify_journal(journal, trust=None, tsa_trust=None)
    assert not report.ok and report.first_broken_batch() == 1
    assert any(kept[1] in f.messages for f in report.broken)


def test_a_deletion_disguised_as_pruning_in_a_young_batch_is_found(journal: Journal) -> None:
    """Removing a message and writing its leaves into the batch record as retention would: the batch is too young.

    A warning, not a failure: the first sealing of an older journal seals old events late, and retention may
    then prune them from a young batch. The prune runs' archives are what settle it.
    """
    sealer = Sealer(journal)
    victim = send(journal)
    send(journal)
    sealer.seal_once()
    with journal.engine.begin() as conn:
        rows = conn.execute(sa.select(*EVENT_COLUMNS).where(events.c.message_id == victim)).all()
        leaves = {int(r.id): EventRecord.of(r).leaf() for r in rows}
        b = conn.execute(sa.select(evidence_batches)).one()
        leaves.update(unpack_leaves(b.pruned_leaves))
        conn.execute(sa.update(evidence_batches).values(pruned_count=len(leaves), pruned_leaves=pack_leaves(leaves)))
        conn.execute(sa.delete(events).where(events.c.message_id == victim))
        conn.execute(sa.delete(messages).where(messages.c.message_id == victim))
    assert verify_journal(journal, trust=None, tsa_trust=None).ok  # without the retention floor it looks pruned
    report = verify_journal(journal, trust=None, tsa_trust=None, min_retention=timedelta(days=30))
    assert any(f.batch == 1 and "pruned from a batch sealed" in f.what for f in report.warnings)


def test_envelope_days_remove_the_envelope_only_archived_first(journal: Journal, tmp_path: Path) -> None:
    sealer = Sealer(journal)
    mid = send(journal)
    sealer.seal_once()
    rules = RetentionSettings(rules=[RetentionRule(message_type=NS, days=100, envelope_days=10)])
    result = Pruner(journal, rules, tmp_path).run_once(now=utcnow() + timedelta(days=11))
    assert (result.messages, result.envelopes) == (0, 1)
    rec = journal.get(mid)
    assert rec is not None and rec.envelope_pruned_at is not None
    assert len(journal.trail(mid)) == 2
    assert verify_journal(journal, trust=None, tsa_trust=None).ok  # a pruned envelope is not asked for
    assert verify_archive(tmp_path / result.archives[0]["file"]).envelopes == 1
    journal.record(mid, "DEAD", "w", {}, status=Status.DEAD)
    with pytest.raises(Rejection) as exc:
        journal.replay(mid, "operator")
    assert exc.value.status == 410
    # At 100 days the rest goes too.
    send(journal, "keeper")
    sealer.seal_once()
    later = Pruner(journal, rules, tmp_path).run_once(now=utcnow() + timedelta(days=101))
    assert later.messages == 1 and not exists(journal, mid)
    assert verify_journal(journal, trust=None, tsa_trust=None).ok


def test_nothing_is_pruned_without_a_rule(journal: Journal, tmp_path: Path) -> None:
    send(journal)
    Sealer(journal).seal_once()
    result = Pruner(journal, RetentionSettings(), tmp_path / "archives").run_once(now=utcnow() + timedelta(days=3650))
    assert result.messages == 0 and result.archives == [] and not (tmp_path / "archives").exists()


def test_a_rule_must_say_what_and_how_long() -> None:
    for bad in ({"days": 3}, {"participant": "x"}, {"participant": "x", "days": 3, "envelope_days": 5}):
        with pytest.raises(ValueError):
            RetentionRule(**bad)  # type: ignore[arg-type]


def test_a_message_replayed_while_its_chunk_is_archived_is_left_alone(journal: Journal, tmp_path: Path) -> None:
    sealer = Sealer(journal)
    dead = send(journal, deliver=False)
    journal.record(dead, "DEAD", "w", {}, status=Status.DEAD)
    other = send(journal)
    send(journal, "keeper")
    sealer.seal_once()

    class Racing(Pruner):
        def _still_due(self, conn, ids, before):  # type: ignore[no-untyped-def]
            journal.replay(dead, "operator")  # between the archive and the delete (another connection)
            return super()._still_due(conn, ids, before)

    result = Racing(journal, settings(), tmp_path).run_once(now=utcnow() + timedelta(days=31))
    assert result.messages == 1 and not exists(journal, other)
    rec = journal.get(dead)
    assert rec is not None and rec.status == "ACCEPTED"  # replayed, kept, with its whole trail
    sealer.seal_once()
    assert verify_journal(journal, trust=None, tsa_trust=None).ok


def test_a_message_replayed_while_its_envelope_is_archived_keeps_its_envelope(journal: Journal,
                                                                              tmp_path: Path) -> None:
    """The envelope-only prune re-checks its choice as the whole prune does: an envelope wiped after a replay
    was published empty, failed to parse at every router, and the message went DEAD for good (replay: 410)."""
    sealer = Sealer(journal)
    dead = send(journal, deliver=False)
    journal.record(dead, "DEAD", "w", {}, status=Status.DEAD)
    other = send(journal)
    sealer.seal_once()

    class Racing(Pruner):
        def _prune(self, result, ids, chain, now, before, *, envelope_only):  # type: ignore[no-untyped-def]
            journal.replay(dead, "operator")  # after the choice, before the archive and the update
            return super()._prune(result, ids, chain, now, before, envelope_only=envelope_only)

    rules = RetentionSettings(rules=[RetentionRule(message_type=NS, days=100, envelope_days=10)])
    result = Racing(journal, rules, tmp_path).run_once(now=utcnow() + timedelta(days=11))
    assert result.envelopes == 1
    replayed, pruned = journal.get(dead), journal.get(other)
    assert replayed is not None and replayed.status == "ACCEPTED" and replayed.envelope_pruned_at is None
    assert Envelope.from_element(parse_xml(replayed.envelope)).message_id == dead
    assert pruned is not None and pruned.envelope_pruned_at is not None


class Rests(threading.Event):
    """Records each rest the pruner asks for instead of waiting; set after ``stop_after`` rests, if given."""

    def __init__(self, stop_after: int | None = None) -> None:
        super().__init__()
        self.rests: list[float] = []
        self.stop_after = stop_after

    def wait(self, timeout: float | None = None) -> bool:
        self.rests.append(float(timeout or 0.0))
        if self.stop_after is not None and len(self.rests) >= self.stop_after:
            self.set()
        return self.is_set()


def test_a_run_rests_after_each_chunk_by_its_share_and_not_at_all_at_share_one(journal: Journal,
                                                                            tmp_path: Path) -> None:
    for _ in range(10):
        send(journal)
    send(journal, "keeper")
    Sealer(journal).seal_once()
    rests = Rests()
    result = Pruner(journal, settings(share=0.25), tmp_path).run_once(now=utcnow() + timedelta(days=31),
                                                                      stopping=rests)
    assert result.messages == 10 and len(result.archives) == 3
    assert len(rests.rests) == 3 and all(r > 0 for r in rests.rests)  # three times its work, after each chunk

    for _ in range(5):
        send(journal)
    Sealer(journal).seal_once()
    eager = Rests()
    again = Pruner(journal, settings(share=1.0), tmp_path).run_once(now=utcnow() + timedelta(days=31),
                                                                    stopping=eager)
    assert again.messages == 4 and eager.rests == []  # the newest event's message stays


def test_a_stopped_run_ends_at_the_next_chunk_and_its_record_lists_what_it_removed(journal: Journal,
                                                                                 tmp_path: Path) -> None:
    for _ in range(10):
        send(journal)
    Sealer(journal).seal_once()
    result = Pruner(journal, settings(), tmp_path).run_once(now=utcnow() + timedelta(days=31),
                                                            stopping=Rests(stop_after=1))
    assert result.messages == 4 and len(result.archives) == 1
    with journal.engine.connect() as conn:
        run = conn.execute(sa.select(prune_runs)).one()
    assert (run.messages, json.loads(run.archives), run.chain) == (4, result.archives, result.chain)
    assert run.finished_at is not None and run.error is None
    assert count(journal, messages) == 6


class HeldRest(threading.Event):
    """The run's first rest blocks until the test lets it go: the run is under way, holding its lock."""

    def __init__(self) -> None:
        super().__init__()
        self.resting, self.go_on = threading.Event(), threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        self.resting.set()
        self.go_on.wait(30)
        return self.is_set()


def test_a_second_run_while_one_is_under_way_is_refused_so_the_archive_chain_never_forks(journal: Journal,
                                                                                        tmp_path: Path) -> None:
    for _ in range(10):
        send(journal)
    Sealer(journal).seal_once()
    later = utcnow() + timedelta(days=31)
    rest, results = HeldRest(), []
    first = threading.Thread(target=lambda: results.append(
        Pruner(journal, settings(), tmp_path).run_once(now=later, stopping=rest)))
    first.start()
    try:
        assert rest.resting.wait(30)
        with pytest.raises(Busy, match="'prune' lock"):
            Pruner(journal, settings(), tmp_path).run_once(now=later)
        assert len(_runs(journal)) == 1  # the refused run left no record
    finally:
        rest.go_on.set()
        first.join(30)
    send(journal)  # the newest event is now this one's: the message the first run had to keep may go
    Sealer(journal).seal_once()
    second = Pruner(journal, settings(), tmp_path).run_once(now=later)
    runs = _runs(journal)
    assert [r.id for r in runs] == [results[0].run, second.run] and all(r.finished_at for r in runs)
    assert (results[0].messages, second.messages) == (9, 1)
    chained = hashlib.sha256(runs[0].chain.encode("ascii"))  # the second run's chain goes on from the first's
    chained.update(second.archives[0]["sha256"].encode("ascii"))
    assert runs[1].chain == chained.hexdigest()
    assert verify_journal(journal, trust=None, tsa_trust=None).ok


def test_the_duty_seals_while_its_pruner_rests_and_a_stop_ends_both(journal: Journal, tmp_path: Path) -> None:
    """The pruner has a thread of its own: a long run (here resting 99 times its work) holds up no sealing."""
    for _ in range(10):
        send(journal)
    Sealer(journal).seal_once()
    with journal.engine.begin() as conn:  # the duty's pruner prunes at the real "now": make them 31 days old
        conn.execute(sa.update(messages).values(updated_at=utcnow() - timedelta(days=31)))
    pruner = Pruner(journal, settings(share=0.01), tmp_path)
    duty = EvidenceDuty(journal, EvidenceSettings(seal_interval_seconds=0.05), None, None, pruner)
    stopping = threading.Event()
    thread = threading.Thread(target=duty.run, args=(stopping,))
    thread.start()
    try:
        wait_for(lambda: any(r.messages for r in _runs(journal)), what="the first chunk pruned")
        fresh = send(journal)
        wait_for(lambda: _sealed(journal, fresh), what="a message accepted meanwhile sealed")
        assert _runs(journal)[-1].finished_at is None  # still resting after its first chunk
    finally:
        stopping.set()
        thread.join(30)
    assert not thread.is_alive()
    last = _runs(journal)[-1]
    assert last.finished_at is not None and last.messages < 10  # stopped at the next chunk boundary
    assert verify_journal(journal, trust=None, tsa_trust=None).ok


def _runs(journal: Journal) -> list[Any]:
    with journal.engine.connect() as conn:
        return list(conn.execute(sa.select(prune_runs).order_by(prune_runs.c.id)))


def _sealed(journal: Journal, message_id: str) -> bool:
    with journal.engine.connect() as conn:
        head = conn.execute(sa.select(evidence_head.c.last_event_id)).scalar_one()
        newest = conn.execute(sa.select(sa.func.max(events.c.id)).where(events.c.message_id == message_id)).scalar()
    return newest is not None and head >= newest
