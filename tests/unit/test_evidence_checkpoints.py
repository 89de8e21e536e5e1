"""Checkpoints: the head signed with the gateway's key and timestamped by a TSA (the demo's, on openssl ts).

What they add to the chain: someone who rewrites the journal and rebuilds every batch
record and the head to match is still found, because the signed, timestamped hash of
an earlier head no longer matches. And the TSA out of reach stops nothing: the
checkpoint waits signed, the lag and the alert's gauge rise, and it is timestamped
when the TSA answers again.
"""
from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from demo.ca import demo_signer
from demo.emulators.tsa import TsaServer
from gateway.envelope import Envelope
from gateway.evidence.canonical import BatchRecord, EventRecord
from gateway.evidence.checkpoints import Checkpointer, evidence_state
from gateway.evidence.sealer import Sealer
from gateway.evidence.tsa import TsaClient
from gateway.evidence.verify import verify_journal
from gateway.journal import Journal, Status, utcnow
from gateway.journal.tables import events, evidence_batches, evidence_checkpoints, evidence_head
from gateway.xmlsafe import parse_xml
from monitoring.exposition import GatewayStateCollector
from signing import TrustStore
from tests.support.ports import free_port

NS = "urn://zdravlink/types/notice/1.0"


def traffic(journal: Journal, count: int = 3) -> list[str]:
    ids = []
    for i in range(count):
        payload = parse_xml(f'<n:Notice xmlns:n="{NS}"><n:Text>{i}</n:Text></n:Notice>'.encode())
        env = Envelope(message_id=str(uuid.uuid1()), sender="lab", recipient="mis", message_type=NS, payload=payload)
        journal.accept(env, source="rest", actor="api", route="r")
        journal.record(env.message_id, "DELIVERED", "w", {}, status=Status.DELIVERED)
        ids.append(env.message_id)
    return ids


@pytest.fixture
def trust(demo_keys: Path) -> TrustStore:
    return TrustStore.from_directory(demo_keys / "trust")


@pytest.mark.parametrize("key_type", ["gost2012-256", "rsa"])
def test_checkpoints_are_signed_and_timestamped_and_verify(journal: Journal, demo_keys: Path, tsa: TsaServer,
                                                          trust: TrustStore, key_type: str) -> None:
    signer = demo_signer(demo_keys, "gateway", key_type)
    cp = Checkpointer(journal, signer, TsaClient(tsa.url, trust), interval=3600, every_batches=2)
    sealer = Sealer(journal)
    for _ in range(4):
        traffic(journal)
        sealer.seal_once()
        cp.run_once()
    # The first checkpoint at once, then every two batches (the hour's interval is not due).
    with journal.engine.connect() as conn:
        rows = conn.execute(sa.select(evidence_checkpoints).order_by(evidence_checkpoints.c.batch_seq)).all()
    assert [r.batch_seq for r in rows] == [1, 3]
    assert all(r.signature and r.tsa_token and r.tsa_time for r in rows)
    report = verify_journal(journal, trust=trust, tsa_trust=trust)
    assert report.ok, [f.line() for f in report.broken]
    assert (report.checkpoints, report.signatures, report.timestamps, report.anchored_to) == (2, 2, 2, 3)
    assert any("batches 4–4 are not yet under" in f.what for f in report.warnings)
    assert report.signers == {signer.certificate.subject}


def test_a_chain_rebuilt_to_match_is_found_by_its_checkpoint(journal: Journal, demo_keys: Path, tsa: TsaServer,
                                                             trust: TrustStore) -> None:
    """Someone with the database rewrites an event and rebuilds batch records and head: only the checkpoint sees."""
    signer = demo_signer(demo_keys, "gateway", "rsa")
    cp = Checkpointer(journal, signer, TsaClient(tsa.url, trust), interval=3600)
    sealer = Sealer(journal)
    ids = []
    for _ in range(3):
        ids.append(traffic(journal))
        sealer.seal_once()
    cp.make(force=True)
    cp.timestamp_waiting()
    victim = ids[1][0]
    with journal.engine.begin() as conn:
        conn.execute(sa.update(events).where(events.c.message_id == victim, events.c.kind == "DELIVERED")
                     .values(actor="someone-else"))
        # Recompute the victim's trail, then every batch from 2 on, and the head: a consistent forgery.
        rows = conn.execute(sa.select(events).where(events.c.message_id == victim).order_by(events.c.id)).all()
        from gateway.journal.chain import event_hash

        prev = "0" * 64
        for r in rows:
            h = event_hash(prev, r.message_id, r.at, r.status, r.kind, r.actor, r.detail)
            conn.execute(sa.update(events).where(events.c.id == r.id).values(prev_hash=prev, hash=h))
            prev = h
        batches = conn.execute(sa.select(evidence_batches).order_by(evidence_batches.c.seq)).all()
        prev_batch = BatchRecord.of(batches[0])
        for b in batches[1:]:
            evs = conn.execute(sa.select(events).where(events.c.id.between(b.first_event_id, b.last_event_id))
                               .order_by(events.c.id)).all()
            rebuilt = BatchRecord.make(b.seq, b.first_event_id, b.last_event_id,
                                       [EventRecord.of(e).leaf() for e in evs], prev_batch.hash, b.sealed_at)
            conn.execute(sa.update(evidence_batches).where(evidence_batches.c.seq == b.seq)
                         .values(root=rebuilt.root, hash=rebuilt.hash))
            prev_batch = rebuilt
        conn.execute(sa.update(evidence_head).values(hash=prev_batch.hash))
    assert journal.verify_trail(victim)
    report = verify_journal(journal, trust=trust, tsa_trust=trust)
    assert not report.ok
    assert report.first_broken_batch() == 3
    assert any("checkpointed" in f.what for f in report.broken), [f.line() for f in report.broken]


def test_a_checkpoint_changed_after_signing_does_not_hold(journal: Journal, demo_keys: Path, tsa: TsaServer,
                                                          trust: TrustStore) -> None:
    signer = demo_signer(demo_keys, "gateway", "gost2012-256")
    cp = Checkpointer(journal, signer, TsaClient(tsa.url, trust), interval=3600)
    traffic(journal)
    Sealer(journal).seal_once()
    cp.run_once()
    with journal.engine.begin() as conn:
        statement = conn.execute(sa.select(evidence_checkpoints.c.statement)).scalar_one()
        conn.execute(sa.update(evidence_checkpoints).values(
            statement=statement.replace("made-at: 2", "made-at: 1")))
    report = verify_journal(journal, trust=trust, tsa_trust=trust)
    assert not report.ok and report.first_broken_batch() == 1
    assert any("timestamp does not hold" in f.what or "signature does not hold" in f.what for f in report.broken)


def test_without_the_tsa_messages_flow_checkpoints_wait_then_catch_up(journal: Journal, demo_keys: Path,
                                                                      trust: TrustStore) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/tsa"
    signer = demo_signer(demo_keys, "gateway", "rsa")
    cp = Checkpointer(journal, signer, TsaClient(url, trust, timeout=2), interval=0.0, first_retry=0.0)
    sealer = Sealer(journal)
    state = GatewayStateCollector(journal, dict, (), timestamp_alert_after=0.0)
    for _ in range(3):
        assert len(traffic(journal)) == 3  # accepting never waits on the TSA
        sealer.seal_once()
        done = cp.run_once()
        assert done.made is not None and done.timestamped == 0 and done.failure
    st = evidence_state(journal)
    assert st.checkpoints == 3 and st.waiting_timestamps == 3 and st.timestamp_lag > 0
    assert st.last_tsa_error and "ConnectError" in st.last_tsa_error
    assert _gauge(state, "zl_evidence_timestamp_overdue") == 1
    report = verify_journal(journal, trust=trust, tsa_trust=trust)
    assert report.ok and report.signatures == 3 and report.timestamps == 0
    assert sum("no timestamp" in f.what for f in report.warnings) == 3
    server = TsaServer(demo_keys, port=port).start()
    try:
        done = cp.run_once()
    finally:
        server.stop()
    assert done.failure is None and done.timestamped == 3
    st = evidence_state(journal)
    assert st.waiting_timestamps == 0 and st.timestamp_lag == 0
    assert _gauge(state, "zl_evidence_timestamp_overdue") == 0
    report = verify_journal(journal, trust=trust, tsa_trust=trust)
    assert report.ok and report.timestamps == 3 and report.anchored_to == 3


def test_evidence_state_counts_what_waits_to_be_sealed(journal: Journal) -> None:
    traffic(journal, 2)
    st = evidence_state(journal)
    assert (st.batches, st.unsealed_events, st.checkpoints) == (0, 4, 0)
    Sealer(journal).seal_once()
    st = evidence_state(journal)
    assert (st.batches, st.unsealed_events) == (1, 0) and st.last_sealed_at is not None
    assert st.last_sealed_at <= utcnow()


def _gauge(state: GatewayStateCollector, name: str) -> float:
    for family in state.collect():
        if family.name == name:
            return float(family.samples[0].value)
    raise AssertionError(f"{name} not exposed")
