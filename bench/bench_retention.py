"""The evidence journal's costs: sealing, checkpoints, verify, export and retention, on a loaded journal.

Loads ``--count`` messages spread over ``--days`` days (``bench/journal_loader.py``),
into SQLite (a file of its own) or PostgreSQL (``--pg``, a database of its own), then
measures, in this order:

- **seal**: the whole journal sealed into batches of ``--batch`` events (events/s, and
  the time per batch);
- **checkpoint**: one signature (the demo gateway key, GOST 2012-256) and one RFC 3161
  timestamp from the demo TSA (``openssl ts -reply`` behind HTTP), each timed;
- **verify**: ``verify_journal`` over everything (events/s), with the checkpoint's
  signature and timestamp;
- **export**: a time range holding about 10,000 messages, written and verified offline
  (bytes per 10,000 messages, seconds);
- **accept, with and without sealing**: ``--accept`` messages accepted by 4 threads
  through ``Journal.accept`` with nothing else running, then the same with the evidence
  duty in another process (as the reconciler runs it) sealing every 0.2 s and
  checkpointing every second (signed), in the same run;
- **prune to ``--keep-days``**: the pruner as configured by default (chunks of 2,000, resting half
  its time; ``--share``), archives and all (messages/s), the journal's
  size before and after, and the accept rate while it runs against the idle rate;
- **verify after pruning**: the chain still holds.

    .venv/bin/python bench/bench_retention.py --count 100000
    .venv/bin/python bench/bench_retention.py --count 1000000 --pg
"""
from __future__ import annotations

import argparse
import multiprocessing
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from journal_loader import load

from demo.ca import create_demo_keys, demo_signer
from demo.emulators.tsa import TsaServer
from gateway.config import EvidenceSettings, RetentionSettings
from gateway.envelope import Envelope
from gateway.evidence.archive import export_range, verify_archive
from gateway.evidence.checkpoints import Checkpointer
from gateway.evidence.duty import EvidenceDuty
from gateway.evidence.retention import Pruner
from gateway.evidence.sealer import Sealer
from gateway.evidence.tsa import TsaClient
from gateway.evidence.verify import verify_journal
from gateway.journal import Journal
from gateway.journal.tables import events, evidence_batches, messages
from gateway.xmlsafe import parse_xml
from signing import TrustStore
from tests.conftest import drop_database

PG = "postgresql+psycopg://zdravlink:zdravlink@127.0.0.1:5432/zdravlink"
NS = "urn://zdravlink/types/notice/1.0"


def _pg_database(name: str) -> str:
    admin = sa.create_engine(PG, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return PG.rsplit("/", 1)[0] + "/" + name


def _drop_pg(name: str) -> None:
    admin = sa.create_engine(PG, isolation_level="AUTOCOMMIT")
    drop_database(admin, name)
    admin.dispose()


def _size(journal: Journal, sqlite_file: Path | None) -> int:
    if sqlite_file is not None:
        return sum(p.stat().st_size for p in sqlite_file.parent.glob(sqlite_file.name + "*"))
    with journal.engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT pg_database_size(current_database())")).scalar_one())


def _count(journal: Journal, table: sa.Table) -> int:
    with journal.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def _accept(journal: Journal, count: int, threads: int = 4) -> float:
    """``count`` notices accepted by ``threads`` threads at once; messages per second."""
    payload = parse_xml(f'<n:Notice xmlns:n="{NS}"><n:Code>SAMPLE_RECEIVED</n:Code></n:Notice>'.encode())
    per = count // threads

    def work() -> None:
        for _ in range(per):
            env = Envelope(message_id=str(uuid.uuid1()), sender="lab-01", recipient="clinic-01", message_type=NS,
                           payload=payload)
            journal.accept(env, source="rest", actor="bench", route="notices")

    began = time.perf_counter()
    workers = [threading.Thread(target=work) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return per * threads / (time.perf_counter() - began)


def _duty(url: str, keys: Path, stop: Any) -> None:
    journal = Journal(url)
    duty = EvidenceDuty(journal, EvidenceSettings(seal_interval_seconds=0.2, checkpoint_interval_seconds=1.0),
                        demo_signer(keys, "gateway", "gost2012-256"), None)
    while not stop.wait(0.2):
        duty.run_once()
    journal.engine.dispose()


def _prune(url: str, keys: Path, work: Path, keep_days: float, share: float, results: Any) -> None:
    journal = Journal(url)
    pruner = Pruner(journal, RetentionSettings(default_days=keep_days, share=share), work / "archives",
                    trust_store=keys / "trust", tsa_trust_store=keys / "trust")
    began = time.perf_counter()
    r = pruner.run_once()
    results.put({"seconds": time.perf_counter() - began, "messages": r.messages, "events": r.events,
                 "archives": len(r.archives), "held": r.held, "kept": r.kept_for_records})
    journal.engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--days", type=float, default=60.0)
    parser.add_argument("--keep-days", type=float, default=30.0)
    parser.add_argument("--batch", type=int, default=10_000, help="events per sealed batch at most")
    parser.add_argument("--accept", type=int, default=2000, help="messages per accept-rate measurement")
    parser.add_argument("--pg", action="store_true", help="PostgreSQL instead of SQLite")
    parser.add_argument("--share", type=float, default=RetentionSettings().share,
                        help="the pruner's share of the time (retention.share)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="zl-bench-retention-"))
    keys = work / "keys"
    create_demo_keys(keys, ["gateway"], ("gost2012-256",))
    trust = TrustStore.from_directory(keys / "trust")
    signer = demo_signer(keys, "gateway", "gost2012-256")
    pg_name = f"zl_bench_retention_{uuid.uuid4().hex[:8]}"
    sqlite_file = None if args.pg else work / "journal.db"
    url = _pg_database(pg_name) if args.pg else f"sqlite:///{sqlite_file}"
    tsa = TsaServer(keys).start()
    try:
        print(f"journal: {'PostgreSQL' if args.pg else 'SQLite'}, {args.count:,} messages over {args.days:g} days")
        loaded = load(url, args.count, days=args.days, progress=False)
        journal = Journal(url)
        n_events = _count(journal, events)
        print(f"loaded   {loaded['messages']:,.0f} messages, {n_events:,} events in {loaded['seconds']:.0f} s")

        sealer = Sealer(journal, args.batch)
        began = time.perf_counter()
        batches = sealer.seal_once()
        took = time.perf_counter() - began
        print(f"seal     {len(batches):,} batches of ≤{args.batch:,} events in {took:.1f} s: "
              f"{n_events / took:,.0f} events/s, {1000 * took / max(len(batches), 1):.0f} ms a batch")

        cp = Checkpointer(journal, signer, TsaClient(tsa.url, trust), interval=0)
        began = time.perf_counter()
        cp.make(force=True)
        signed = time.perf_counter() - began
        began = time.perf_counter()
        stamped, failure = cp.timestamp_waiting()
        print(f"checkpoint signed in {1000 * signed:.0f} ms, timestamped in "
              f"{1000 * (time.perf_counter() - began):.0f} ms ({stamped} token{', ' + failure if failure else ''})")

        began = time.perf_counter()
        report = verify_journal(journal, trust=trust, tsa_trust=trust)
        took = time.perf_counter() - began
        print(f"verify   {report.events:,} events, {report.envelopes:,} envelopes in {took:.1f} s: "
              f"{report.events / took:,.0f} events/s — {'holds' if report.ok else 'BROKEN'}"
              f" ({len(report.broken)} broken, {len(report.warnings)} warnings)")

        # All batches were sealed just now: export a slice of batches holding about 10,000 messages.
        with journal.engine.connect() as conn:
            rows = conn.execute(sa.select(evidence_batches.c.seq, evidence_batches.c.sealed_at,
                                          evidence_batches.c.event_count).order_by(evidence_batches.c.seq)).all()
        per_message = n_events / max(loaded["messages"], 1)
        want = 10_000 * per_message
        got, end_at = 0, None
        for r in rows:
            got += r.event_count
            end_at = r.sealed_at
            if got >= want:
                break
        out = work / "export.zip"
        began = time.perf_counter()
        done = export_range(journal, out, start=rows[0].sealed_at, end=end_at + timedelta(microseconds=1),
                            trust_store=keys / "trust", tsa_trust_store=keys / "trust")
        exported = time.perf_counter() - began
        began = time.perf_counter()
        offline = verify_archive(out, trust=trust, tsa_trust=trust)
        print(f"export   {done.events:,} events ({done.envelopes:,} envelopes) in {exported:.1f} s, "
              f"{done.bytes:,} bytes = {done.bytes * 10_000 / max(done.envelopes, 1) / 1e6:.1f} MB per 10,000 "
              f"messages; verify-archive {time.perf_counter() - began:.1f} s, "
              f"{'holds' if offline.ok else 'BROKEN'}")

        idle = [_accept(journal, args.accept) for _ in range(2)]
        stop = multiprocessing.Event()
        duty = multiprocessing.Process(target=_duty, args=(url, keys, stop))  # as the reconciler runs it
        duty.start()
        sealing = [_accept(journal, args.accept) for _ in range(2)]
        stop.set()
        duty.join()
        print(f"accept   {statistics.mean(idle):,.0f} messages/s without sealing, {statistics.mean(sealing):,.0f} "
              f"with another process sealing every 0.2 s and signing a checkpoint every 1 s "
              f"({100 * (statistics.mean(sealing) / statistics.mean(idle) - 1):+.0f} %)")
        Sealer(journal, args.batch).seal_once()

        before_size = _size(journal, sqlite_file)
        before = _count(journal, messages)
        results = multiprocessing.Queue()
        pruning = multiprocessing.Process(target=_prune, args=(url, keys, work, args.keep_days, args.share, results))
        pruning.start()
        during: list[float] = []
        while pruning.is_alive():
            during.append(_accept(journal, args.accept // 2))
        pruning.join()
        result = results.get()
        if args.pg:
            with journal.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.exec_driver_sql("VACUUM messages")
                conn.exec_driver_sql("VACUUM events")
        else:
            with journal.engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        after_size = _size(journal, sqlite_file)
        vacuumed = None
        if not args.pg:
            began = time.perf_counter()
            with journal.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.exec_driver_sql("VACUUM")
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
            vacuumed = (_size(journal, sqlite_file), time.perf_counter() - began)
        archive_bytes = sum(p.stat().st_size for p in (work / "archives").glob("*.zip"))
        print(f"prune    {result['messages']:,.0f} of {before:,} messages ({result['events']:,.0f} events; "
              f"{result['kept']:,.0f} kept for lab results) in {result['seconds']:.1f} s: "
              f"{result['messages'] / result['seconds']:,.0f} messages/s at share {args.share:g}, "
              f"{result['archives']:.0f} archives, "
              f"{archive_bytes / 1e6:,.1f} MB")
        print(f"size     {before_size / 1e6:,.1f} MB before, {after_size / 1e6:,.1f} MB after"
              + (f" (freed pages kept for reuse); {vacuumed[0] / 1e6:,.1f} MB after VACUUM ({vacuumed[1]:.0f} s)"
                 if vacuumed else " (plain VACUUM: freed space reused, not returned to the system)"))
        if during:
            print(f"accept   while pruning {statistics.mean(during):,.0f} messages/s "
                  f"({100 * (statistics.mean(during) / statistics.mean(idle) - 1):+.0f} % of idle, "
                  f"{len(during)} rounds)")
        Sealer(journal, args.batch).seal_once()
        began = time.perf_counter()
        report = verify_journal(journal, trust=trust, tsa_trust=trust, min_retention=timedelta(days=args.keep_days))
        took = time.perf_counter() - began
        print(f"verify   after pruning: {report.events:,} events in {took:.1f} s, {report.pruned_batches} batches "
              f"wholly pruned — {'holds' if report.ok else 'BROKEN: ' + report.broken[0].line()}")
        journal.engine.dispose()
    finally:
        tsa.stop()
        if args.pg:
            _drop_pg(pg_name)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
