"""Fill a journal with a realistic load of messages and their trails, fast: a tool for benchmarks.

A million messages is what a regional gateway holds after a few weeks; tests and
benchmarks of anything that reads the journal (the console's search, journal check,
retention, an evidence export) need one that looks like it:

* participants and routes of a region: clinics (MIS), laboratories, insurers, the two
  registries; notices, lab results, service records, verification requests and answers;
* statuses as they end up: mostly DELIVERED, some DEAD (with a reason), FAILED, RETRYING,
  AWAITING_PICKUP, ACCEPTED, REJECTED;
* each message's envelope (the real ``Envelope.to_xml()`` of its type, MessageID swapped
  in) and its whole trail — ACCEPTED, PUBLISHED, ROUTED, attempts, DELIVERED or DEAD —
  hash-chained exactly as the journal chains it, so ``journal check`` verifies them;
* lab results' ResultIds (``result_versions``) and answers' ReferenceMessageIDs;
* times spread over ``--days`` days, a few messages a second, in order.

It writes with COPY on PostgreSQL and batched inserts on SQLite, in batches of
``--batch`` messages, each batch one transaction. ``--config-out DIR`` writes the
participants and routes it used, so a gateway (or the console) can be started on them.

    .venv/bin/python bench/journal_loader.py --url postgresql+psycopg://… --count 1000000
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.config import hash_token
from gateway.envelope import Envelope
from gateway.journal import Journal
from gateway.journal.chain import GENESIS, event_row
from gateway.journal.model import ENVELOPE_DIGEST, envelope_digest
from gateway.xmlsafe import parse_xml

NOTICE = "urn://zdravlink/types/notice/1.0"
LAB_RESULT = "urn://zdravlink/types/lab-result/1.0"
SERVICE_RECORD = "urn://zdravlink/types/service-record/1.0"
WORKER = "urn://zdravlink/types/worker-verification/1.0"

CLINICS = [f"clinic-{i:02d}" for i in range(1, 13)]
LABS = [f"lab-{i:02d}" for i in range(1, 6)]
INSURERS = ["insurer-sogaz", "insurer-ingos", "insurer-kapital"]
#: (status, share) of how messages end up; the rest of the shares is DELIVERED.
ENDINGS = [("DEAD", 0.004), ("FAILED", 0.001), ("RETRYING", 0.002), ("AWAITING_PICKUP", 0.003),
           ("ACCEPTED", 0.0005), ("REJECTED", 0.01)]
DEAD_REASONS = ["permanent failure: HTTP 400 Bad Request", "all channels failed; last: HTTP 503",
                "all channels failed; last: ConnectError: [Errno 111] Connection refused",
                "the route's time budget of 86400 s is used up; last: HTTP 502"]


@dataclass(frozen=True)
class Kind:
    """One kind of traffic: who sends what to whom by which route, and its payload."""

    sender: list[str]
    recipient: list[str]
    message_type: str
    route: str
    payload: str
    share: float


def _kinds() -> list[Kind]:
    notice = (f'<n:Notice xmlns:n="{NOTICE}"><n:Code>SAMPLE_RECEIVED</n:Code><n:IssuedAt>2026-11-22T10:00:00Z'
              '</n:IssuedAt><n:Subject><n:SNILS>11223344595</n:SNILS></n:Subject><n:Text>Образец получен '
              'лабораторией, результат будет готов в течение суток</n:Text></n:Notice>')
    result = (f'<lr:LabResult xmlns:lr="{LAB_RESULT}"><lr:ResultId>RES-0000000</lr:ResultId><lr:Status>F</lr:Status>'
              '<lr:Patient><lr:SNILS>11223344595</lr:SNILS><lr:FamilyName>Демо</lr:FamilyName></lr:Patient>'
              + "".join(f'<lr:Test><lr:Code>1.2.643.5.1.13.13.11.1080.{n}</lr:Code><lr:Value>{n}.5</lr:Value>'
                        '<lr:Unit>g/L</lr:Unit><lr:Range>1-10</lr:Range><lr:Flag>N</lr:Flag></lr:Test>'
                        for n in range(1, 6)) + '</lr:LabResult>')
    record = (f'<sr:ServiceRecord xmlns:sr="{SERVICE_RECORD}"><sr:RecordId>R-0000000</sr:RecordId><sr:Period>'
              '2026-10</sr:Period><sr:Patient><sr:ENP>1234567890123452</sr:ENP></sr:Patient><sr:Service><sr:Code>'
              'B01.001.001</sr:Code><sr:Tariff>1450.00</sr:Tariff><sr:Diagnosis>J06.9</sr:Diagnosis></sr:Service>'
              '</sr:ServiceRecord>')
    ask = (f'<wv:WorkerVerificationRequest xmlns:wv="{WORKER}"><wv:SNILS>11223344595</wv:SNILS><wv:Specialty>'
           'Терапия</wv:Specialty></wv:WorkerVerificationRequest>')
    return [Kind(LABS, CLINICS, NOTICE, "notices", notice, 0.25),
            Kind(LABS, CLINICS, LAB_RESULT, "lab-results", result, 0.45),
            Kind(CLINICS, INSURERS, SERVICE_RECORD, "service-records", record, 0.22),
            Kind(CLINICS, ["frmr"], WORKER, "ask-frmr", ask, 0.04),
            Kind(["frmr"], CLINICS, WORKER, "frmr-answers", ask, 0.04)]


def _template(kind: Kind) -> bytes:
    """The envelope of this kind, as the journal stores it, with a placeholder MessageID."""
    env = Envelope(message_id="00000000-0000-1000-8000-000000000000", sender=kind.sender[0],
                   recipient=kind.recipient[0], message_type=kind.message_type,
                   payload=parse_xml(kind.payload.encode()))
    return env.to_xml()


def _uuid1_at(at: datetime, rng: random.Random) -> str:
    """A lower-case UUID v1 whose timestamp is ``at`` (as SMEV MessageIDs are)."""
    ticks = int((at - datetime(1582, 10, 15, tzinfo=UTC)).total_seconds() * 10_000_000)
    return str(uuid.UUID(fields=(ticks & 0xFFFFFFFF, (ticks >> 32) & 0xFFFF, ((ticks >> 48) & 0x0FFF) | 0x1000,
                                 0x80 | rng.getrandbits(6), rng.getrandbits(8), rng.getrandbits(48)), version=1))


def _trail(mid: str, status: str, at: datetime, route: str, sender: str, recipient: str,
           reason: str | None, rng: random.Random, envelope: bytes = b"") -> list[dict[str, Any]]:
    """The events a message in ``status`` went through, each chained to the one before.

    The first holds the envelope's SHA-256, as the journal's ACCEPTED and REJECTED events do (issue 21).
    """
    digest = {ENVELOPE_DIGEST: envelope_digest(envelope)}
    steps: list[tuple[str, str, str, dict[str, Any]]] = [
        ("ACCEPTED", "ACCEPTED", "rest-adapter", {"source": "rest", "route": route, "sender": sender,
                                                   "recipient": recipient, **digest})]
    if status == "REJECTED":
        steps = [("REJECTED", "REJECTED", "rest-adapter", {"code": "PAYLOAD_INVALID", "field": "/n:Notice/n:Code",
                                                            "detail": "line 1: Element 'Code': [facet 'pattern'] The "
                                                                      "value '*****ED' is not accepted", **digest})]
    elif status != "ACCEPTED":
        steps += [("PUBLISHED", "PUBLISHED", "outbox-relay", {}),
                  ("ROUTED", "ROUTED", "router", {"route": route, "channels": ["default"]})]
        failures = {"DEAD": 3, "FAILED": 0, "RETRYING": 2}.get(status, 1 if rng.random() < 0.05 else 0)
        for attempt in range(1, failures + 1):
            steps.append(("ROUTED" if attempt == 1 else "RETRYING", "DELIVERY_FAILED", "delivery-worker:4242",
                          {"channel": "default", "attempt": attempt, "error": "HTTP 503", "outcome": "retryable"}))
            steps.append(("RETRYING", "RETRY_SCHEDULED", "delivery-worker:4242",
                          {"channel": "default", "next_attempt": attempt + 1, "delay_s": 2 ** attempt,
                           "mode": "queued"}))
        if status == "DEAD":
            steps.append(("DEAD", "DEAD", "delivery:4242", {"reason": reason, "channel": "default", "attempts": 3}))
        elif status == "AWAITING_PICKUP":
            steps.append(("AWAITING_PICKUP", "AWAITING_PICKUP", "delivery-worker:4242", {"channel": "default"}))
        elif status in ("DELIVERED", "FAILED"):
            steps.append(("DELIVERED", "DELIVERED", "delivery-worker:4242",
                          {"channel": "default", "url": f"https://{recipient}.example/zdravlink/inbox"}))
        if status == "FAILED":
            steps.append(("FAILED", "ACKED", f"rest:{recipient}", {"accepted": False}))
    rows, prev = [], GENESIS
    for i, (ev_status, kind, actor, detail) in enumerate(steps):
        ev_at = at + timedelta(milliseconds=40 * i + rng.randint(0, 30))
        row = event_row(prev, mid, ev_at, ev_status, kind, actor,
                         json.dumps(detail, ensure_ascii=False, sort_keys=True, default=str))
        rows.append(row)
        prev = row["hash"]
    return rows


def generate(count: int, days: float, seed: int, end: datetime | None = None
             ) -> Iterator[tuple[dict[str, Any], list[dict[str, Any]], tuple[str, str] | None]]:
    """(message row, its events, its (ResultId, message_id) or None), oldest first."""
    rng = random.Random(seed)
    kinds = _kinds()
    templates = {k.route: _template(k) for k in kinds}
    weights = [k.share for k in kinds]
    end = end or datetime.now(UTC)
    start = end - timedelta(days=days)
    step = (end - start) / max(count, 1)
    recent_asks: list[str] = []
    for n in range(count):
        at = start + step * n
        kind = rng.choices(kinds, weights)[0]
        mid = _uuid1_at(at, rng)
        sender, recipient = rng.choice(kind.sender), rng.choice(kind.recipient)
        roll, status = rng.random(), "DELIVERED"
        for ending, share in ENDINGS:
            if roll < share:
                status = ending
                break
            roll -= share
        reason = rng.choice(DEAD_REASONS) if status in ("DEAD", "FAILED") else None
        reference = recent_asks.pop() if kind.route == "frmr-answers" and recent_asks else None
        if kind.route == "ask-frmr":
            recent_asks.append(mid)
            recent_asks = recent_asks[-50:]
        envelope = templates[kind.route].replace(b"00000000-0000-1000-8000-000000000000", mid.encode())
        events = _trail(mid, status, at, kind.route, sender, recipient, reason, rng, envelope)
        last = events[-1]["at"]
        row = dict(message_id=mid, sender=sender, recipient=recipient, message_type=kind.message_type,
                   route=None if status == "REJECTED" else kind.route, status=status,
                   fingerprint=f"{n:064x}", source="rest", envelope=envelope, created_at=at, updated_at=last,
                   delivered_at=last if status in ("DELIVERED", "FAILED") else None,
                   channel="default" if status in ("DELIVERED", "FAILED") else None,
                   attempts=sum(e["kind"] in ("DELIVERY_FAILED", "DELIVERED") for e in events), replays=0,
                   last_error=reason or ("PAYLOAD_INVALID: the value is not accepted" if status == "REJECTED" else
                                         "HTTP 503" if status == "RETRYING" else None),
                   generation=0, stages=3 if status not in ("ACCEPTED", "REJECTED") else 0, reference_id=reference)
        result = (f"RES-{n:09d}", mid) if kind.message_type == LAB_RESULT and status != "REJECTED" else None
        yield row, events, result


MESSAGE_COLUMNS = ["message_id", "sender", "recipient", "message_type", "route", "status", "fingerprint", "source",
                   "envelope", "created_at", "updated_at", "delivered_at", "channel", "attempts", "replays",
                   "last_error", "generation", "stages", "reference_id"]
EVENT_COLUMNS = ["message_id", "at", "status", "kind", "actor", "detail", "prev_hash", "hash"]


def load(url: str, count: int, *, days: float = 30.0, seed: int = 17, batch: int = 20_000,
         progress: bool = True) -> dict[str, float]:
    """Migrate the journal at ``url`` and add ``count`` messages with trails; rows and seconds taken."""
    journal = Journal(url)
    journal.migrate()
    started = time.perf_counter()
    messages = events = 0
    chunk: list[tuple[dict[str, Any], list[dict[str, Any]], tuple[str, str] | None]] = []
    for item in generate(count, days, seed):
        chunk.append(item)
        if len(chunk) >= batch:
            events += _write(journal, chunk)
            messages += len(chunk)
            chunk = []
            if progress:
                rate = messages / (time.perf_counter() - started)
                print(f"  {messages:,} messages, {events:,} events ({rate:,.0f} messages/s)", file=sys.stderr)
    if chunk:
        events += _write(journal, chunk)
        messages += len(chunk)
    if journal.engine.dialect.name == "postgresql":
        with journal.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE messages")
            conn.exec_driver_sql("VACUUM ANALYZE events")
            conn.exec_driver_sql("ANALYZE result_versions")
    else:
        with journal.engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE")
    journal.engine.dispose()
    return {"messages": messages, "events": events, "seconds": time.perf_counter() - started}


def _write(journal: Journal, chunk: list[tuple[dict[str, Any], list[dict[str, Any]], tuple[str, str] | None]]) -> int:
    rows = [m for m, _, _ in chunk]
    evs = [e for _, es, _ in chunk for e in es]
    results = [{"message_id": r[1], "result_id": r[0], "status": "F", "at": m["created_at"]}
               for m, _, r in chunk if r is not None]
    raw = journal.engine.raw_connection()
    try:
        cur = raw.cursor()
        if journal.engine.dialect.name == "postgresql":
            _copy(cur, "messages", MESSAGE_COLUMNS, rows)
            _copy(cur, "events", EVENT_COLUMNS, evs)
            _copy(cur, "result_versions", ["message_id", "result_id", "status", "at"], results)
        else:
            for table, columns, data in (("messages", MESSAGE_COLUMNS, rows), ("events", EVENT_COLUMNS, evs),
                                         ("result_versions", ["message_id", "result_id", "status", "at"], results)):
                cur.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
                                f"({', '.join('?' for _ in columns)})",
                                [tuple(_sqlite(r[c]) for c in columns) for r in data])
        raw.commit()
    finally:
        raw.close()
    return len(evs)


def _sqlite(value: Any) -> Any:
    """What SQLAlchemy would store for a value in SQLite (datetimes as its text form)."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")
    return value


def _copy(cur: Any, table: str, columns: list[str], rows: list[dict[str, Any]]) -> None:
    with cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        for r in rows:
            copy.write_row([r[c] for c in columns])


def write_config(directory: Path) -> None:
    """participants.yaml and routes.yaml naming what ``generate`` uses (recipients reached at example URLs)."""
    directory.mkdir(parents=True, exist_ok=True)
    token = hash_token("loader-token")
    people = [(c, "mis") for c in CLINICS] + [(lab, "lis") for lab in LABS] + [(i, "insurer") for i in INSURERS]
    lines = ["participants:"]
    for name, kind in [*people, ("frmr", "mis")]:
        lines.append(f"  - {{mnemonic: {name}, name: {name}, kind: {kind}, credentials: {{api_token_sha256: "
                     f"[\"{token}\"]}}, delivery: {{mode: rest, url: \"https://{name}.example/zdravlink/inbox\"}}, "
                     "signature_required: false}")
    (directory / "participants.yaml").write_text("\n".join(lines) + "\n")
    routes = ["routes:"]
    for k in _kinds():
        routes.append(f"  - {{name: {k.route}, sender: \"*\", message_type: \"{k.message_type}\", "
                      f"recipient: {k.recipient[0]}}}")
    (directory / "routes.yaml").write_text("\n".join(routes) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="the journal's SQLAlchemy URL (migrated first)")
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--days", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--batch", type=int, default=20_000)
    parser.add_argument("--config-out", type=Path, help="write participants.yaml and routes.yaml here too")
    args = parser.parse_args()
    if args.config_out:
        write_config(args.config_out)
    done = load(args.url, args.count, days=args.days, seed=args.seed, batch=args.batch)
    print(f"loaded {done['messages']:,.0f} messages and {done['events']:,.0f} events in {done['seconds']:.0f} s")


if __name__ == "__main__":
    main()
