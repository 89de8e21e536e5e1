"""Spine throughput and latency on real RabbitMQ, beside the ceiling of its raw primitives.

Runs the gateway's real processes (API + relay, router, delivery workers) on a
temporary configuration, a recipient server on 127.0.0.1, and a load generator of
``--concurrency`` HTTP clients. For 1 KB and 10 KB payloads it prints:

- accepted messages/s (HTTP 202s per second of the sending phase),
- delivered messages/s (first accept to last delivery),
- p50/p99 accept-to-delivered latency from the journal,
- the primitive ceiling measured in the same run: XSD validation + journal insert +
  confirmed publish in a tight loop on one thread, and the ratio of the two.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from demo.emulators.rest_recipient import RecipientServer
from gateway import schemas
from gateway.envelope import Envelope
from gateway.journal import Journal
from gateway.xmlsafe import parse_xml
from routing.broker import ThreadPublisher, connect, properties
from routing.topology import Topology
from tests.conftest import AMQP_URL, free_port
from tests.support import configs
from tests.support.configs import LAB_TOKEN
from tests.support.gateway_proc import GatewayProcesses, envelope_json, notice


def payload_of(size: int) -> str:
    base = notice(text="")
    filler = "Результат анализа в норме. " * (size // 40 + 1)
    return notice(text=filler[: max(1, size - len(base.encode()))])


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def run_gateway(size: int, n: int, concurrency: int, workers: int, db_url: str | None) -> dict[str, float]:
    clinic = RecipientServer(name="clinic").start()
    tmp = Path(tempfile.mkdtemp(prefix="zl-bench-")) / "gateway"
    gw = GatewayProcesses(tmp, configs.participants(clinic.url), configs.routes(),
                          settings=configs.settings(), amqp_url=AMQP_URL, db_url=db_url,
                          api_port=free_port(), delivery_workers=workers)
    gw.start()
    payload = payload_of(size)
    bodies = [envelope_json("lab", "clinic", payload=payload) for _ in range(n)]
    try:
        client = httpx.Client(base_url=gw.base, timeout=30, limits=httpx.Limits(max_connections=concurrency))
        headers = {"Authorization": f"Bearer {LAB_TOKEN}"}
        t0 = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            codes = list(pool.map(lambda b: client.post("/api/v1/messages", json=b, headers=headers).status_code,
                                  bodies))
        t_sent = time.perf_counter()
        assert codes.count(202) == n, {c: codes.count(c) for c in set(codes)}
        deadline = time.monotonic() + 600
        while len(clinic.accepted) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        t_done = time.perf_counter()
        engine = sa.create_engine(gw.db_url)
        with engine.connect() as conn:
            ours = {b["messageId"] for b in bodies}  # a --database may hold earlier runs
            rows = [(c, d) for mid, c, d in conn.execute(sa.text(
                "SELECT message_id, created_at, delivered_at FROM messages WHERE status='DELIVERED'")) if mid in ours]
            stamps = [r for r in conn.execute(sa.text("SELECT message_id, kind, at, detail FROM events")) if r[0] in ours]
        engine.dispose()

        def ts(v):  # SQLite returns strings or naive datetimes
            from datetime import datetime
            return (datetime.fromisoformat(v) if isinstance(v, str) else v).timestamp()

        # A stage written after a later one ("late": the delivery worker was faster than the router's
        # write) carries the time it was written, not the time it happened: counted, not timed.
        by_message: dict[str, dict[str, float]] = {}
        late: dict[str, int] = {}
        for mid, kind, at, detail in stamps:
            if '"late": true' in detail:
                late[kind] = late.get(kind, 0) + 1
                continue
            by_message.setdefault(mid, {})[kind] = ts(at)
        stages = {}
        for a, b in (("ACCEPTED", "PUBLISHED"), ("PUBLISHED", "ROUTED"), ("ROUTED", "DELIVERED")):
            lags = [m[b] - m[a] for m in by_message.values() if a in m and b in m]
            stages[f"{a}->{b}"] = (statistics.median(lags) if lags else float("nan"), len(lags), late.get(b, 0))
        lat = [ts(d) - ts(c) for c, d in rows]
        return {"accepted_per_s": n / (t_sent - t0), "delivered_per_s": len(clinic.accepted) / (t_done - t0),
                "p50": statistics.median(lat) if lat else float("nan"), "p99": pct(lat, 0.99),
                "delivered": len(clinic.accepted), "stages": stages}
    finally:
        gw.stop()
        clinic.stop()


def primitive_ceiling(size: int, n: int, db_url: str | None) -> float:
    """XSD validation + journal insert + confirmed publish, one thread, no HTTP, no routing."""
    tmp = Path(tempfile.mkdtemp(prefix="zl-bench-prim-"))
    journal = Journal(db_url or f"sqlite:///{tmp / 'j.db'}")
    journal.migrate()
    topo = Topology(f"zlb-{uuid.uuid4().hex[:6]}")
    conn = connect(AMQP_URL, "bench-declare", heartbeat=0)
    ch = conn.channel()
    ch.exchange_declare(topo.ingress_exchange, exchange_type="direct", durable=True)
    ch.queue_declare(topo.route_queue, durable=True, arguments={"x-queue-type": "quorum"})
    ch.queue_bind(topo.route_queue, topo.ingress_exchange, routing_key="route")
    pub = ThreadPublisher(AMQP_URL, "bench")
    payload = payload_of(size)
    envelopes = [Envelope.from_json(envelope_json("lab", "clinic", payload=payload)) for _ in range(n)]
    raw = [env.to_xml() for env in envelopes]
    t0 = time.perf_counter()
    for body in raw:
        root = parse_xml(body)
        schemas.validate_envelope(root)
        env = Envelope.from_element(root)
        schemas.validate_payload(env.message_type, env.payload)
        journal.accept(env, source="bench", actor="bench", route="r")
        pub.publish(topo.ingress_exchange, "route", body, properties(env.message_id, {}))
    elapsed = time.perf_counter() - t0
    # These rows stay ACCEPTED; in a shared --database the next run's relay would deliver them.
    ids = [env.message_id for env in envelopes]
    with journal.engine.begin() as db:
        db.execute(sa.text("DELETE FROM events WHERE message_id IN :ids").bindparams(sa.bindparam("ids", expanding=True)),
                   {"ids": ids})
        db.execute(sa.text("DELETE FROM messages WHERE message_id IN :ids").bindparams(
            sa.bindparam("ids", expanding=True)), {"ids": ids})
    ch.queue_delete(topo.route_queue)
    ch.exchange_delete(topo.ingress_exchange)
    conn.close()
    pub.close()
    return n / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2, help="delivery worker processes")
    ap.add_argument("--sizes", default="1024,10240")
    ap.add_argument("--database", default=None,
                    help="journal URL for the gateway runs (default: a fresh SQLite file per run)")
    args = ap.parse_args()
    print(f"Zdravlink spine benchmark: {args.messages} messages per size, {args.concurrency} HTTP clients, "
          f"{args.workers} delivery workers, RabbitMQ at {AMQP_URL.split('@')[-1]}")
    print(f"{'payload':>8} {'accepted/s':>11} {'delivered/s':>12} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'primitives/s':>13} {'ratio':>6}")
    for size in (int(s) for s in args.sizes.split(",")):
        r = run_gateway(size, args.messages, args.concurrency, args.workers, args.database)
        ceiling = primitive_ceiling(size, min(args.messages, 2000), args.database)
        print(f"{size // 1024:>6}KB {r['accepted_per_s']:>11.0f} {r['delivered_per_s']:>12.0f} "
              f"{r['p50'] * 1000:>8.1f} {r['p99'] * 1000:>8.1f} {ceiling:>13.0f} "
              f"{r['accepted_per_s'] / ceiling:>6.2f}", flush=True)
        print("         median lag per stage: " + ", ".join(
            f"{k} {v * 1000:.0f} ms (n={n}, {lt} written late)" for k, (v, n, lt) in r["stages"].items()),
              flush=True)


if __name__ == "__main__":
    main()
