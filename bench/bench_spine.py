"""Spine throughput and latency on real RabbitMQ, beside the ceiling of its primitives and a plain forwarder.

Runs the gateway's real processes (API + relay, router, delivery workers) on a temporary
configuration and a recipient server on 127.0.0.1. Closed loop (``--concurrency`` clients
sending as fast as they are answered), per payload size:

- accepted messages/s (HTTP 202s per second of the sending phase) and delivered/s,
- p50/p99 accept-to-delivered latency from the journal's own times, and each stage's lag,
- each gateway process's RSS after a warm-up (not timed) and after the run,
- the primitive ceiling measured in the same run (XSD validation + journal insert +
  confirmed publish in a tight loop on one thread) and the ratio of the two,
- with ``--baseline``: a plain forwarder (bench/forwarder.py: HTTP in → confirmed publish →
  consume → HTTP out, the same libraries, no journal, validation or signature) under the
  same load, and the gateway's ratio to it.

Open loop (``--rates 10,25,50,100``): each rate for ``--seconds`` from a lean generator in its
own process (bench/loadgen.py), p50/p95/p99 accept→delivered, and the generator's own lag.
``--journal-preload N`` fills the journal first (bench/journal_loader.py); ``--api-processes``
runs several API processes on the one port (PostgreSQL).

Scale-out (``--nodes 1,2``): a private 3-node RabbitMQ cluster (ports 5780-5789, quorum
queues with 3 replicas) and N gateway nodes (``zdravlink run``, each its own process
group and API port) on one PostgreSQL database (``--database``, default the test
server's); the closed loop spread over the nodes' APIs, delivered/s and p99 per N; then,
with ``--node-faults RATE``, an open loop at RATE/s over the nodes during which the RabbitMQ
node leading the queues is SIGKILLed (and started again 10 s later) and then, with two
nodes or more, a whole gateway node: how long until everything accepted before each
fault was delivered, and the worst accept→delivered of the 10 s after it
(tests/support/scale_out.py; the fault test is tests/faults/test_scale_out.py).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # journal_loader

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


@contextmanager
def gateway(workers: int, db_url: str | None, api_processes: int = 1, preload: int = 0,
            signed: bool = True) -> Iterator[tuple[GatewayProcesses, RecipientServer]]:
    """A whole gateway and a recipient; ``preload`` messages with trails put in its journal first;
    ``signed``: the gateway signs every delivery (GOST 2012-256 demo key), as in production."""
    clinic = RecipientServer(name="clinic").start()
    tmp = Path(tempfile.mkdtemp(prefix="zl-bench-")) / "gateway"
    keys = None
    if signed:
        from demo.ca import create_demo_keys

        keys = tmp.parent / "keys"
        create_demo_keys(keys, ["gateway"], ("gost2012-256",))
    url = db_url or f"sqlite:///{tmp.parent / 'journal.db'}"
    if preload:
        from journal_loader import load

        took = load(url, preload, progress=False)
        print(f"         journal preloaded with {preload:,} messages ({took})", flush=True)
    gw = GatewayProcesses(tmp, configs.participants(clinic.url), configs.routes(),
                          settings=configs.settings(keys=keys), amqp_url=AMQP_URL, db_url=url,
                          api_port=free_port(), delivery_workers=workers)
    gw.start()
    for i in range(2, api_processes + 1):
        gw.spawn(f"api-{i}")
    try:
        yield gw, clinic
    finally:
        gw.stop()
        clinic.stop()


def closed_loop(gw: GatewayProcesses, clinic: RecipientServer, size: int, n: int,
                concurrency: int) -> dict[str, Any]:
    """``concurrency`` clients sending as fast as they are answered: the throughput."""
    payload = payload_of(size)
    client = httpx.Client(base_url=gw.base, timeout=30, limits=httpx.Limits(max_connections=concurrency))
    headers = {"Authorization": f"Bearer {LAB_TOKEN}"}
    warm_up(gw, clinic, size, max(50, n // 10), concurrency)
    rss_warm = rss_mb(gw)
    bodies = [envelope_json("lab", "clinic", payload=payload) for _ in range(n)]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        codes = list(pool.map(lambda b: client.post("/api/v1/messages", json=b, headers=headers).status_code,
                              bodies))
    t_sent = time.perf_counter()
    assert codes.count(202) == n, {c: codes.count(c) for c in set(codes)}
    ids = [b["messageId"] for b in bodies]
    wait_delivered(clinic, ids)
    t_done = time.perf_counter()
    return {"accepted_per_s": n / (t_sent - t0), "delivered_per_s": n / (t_done - t0),
            "rss": (rss_warm, rss_mb(gw)), **latencies(gw.db_url, set(ids))}


def rss_mb(gw: GatewayProcesses) -> dict[str, float]:
    """Each gateway process's resident set, MB (Linux ``/proc``)."""
    out = {}
    for name, proc in gw.procs.items():
        status = Path(f"/proc/{proc.pid}/status")
        if proc.poll() is None and status.exists():
            kb = next(int(line.split()[1]) for line in status.read_text().splitlines() if line.startswith("VmRSS:"))
            out[name] = kb / 1024
    return out


def warm_up(gw: GatewayProcesses, clinic: RecipientServer, size: int, n: int, concurrency: int) -> None:
    """Messages sent and delivered before anything is timed: the RSS "after warm-up" is that of processes
    that have done the work once, and the open loop measures a steady state, not each process's first
    message (its broker channel opened, its schemas compiled, its key loaded: up to 0.8 s here)."""
    client = httpx.Client(base_url=gw.base, timeout=30, limits=httpx.Limits(max_connections=concurrency))
    headers = {"Authorization": f"Bearer {LAB_TOKEN}"}
    warm = [envelope_json("lab", "clinic", payload=payload_of(size)) for _ in range(n)]
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(lambda b: client.post("/api/v1/messages", json=b, headers=headers), warm))
    wait_delivered(clinic, [b["messageId"] for b in warm])
    client.close()


def open_loop(gw: GatewayProcesses, clinic: RecipientServer, size: int, rate: float,
              seconds: float) -> dict[str, Any]:
    """A fixed rate, whatever the answers' pace (bench/loadgen.py, its own process): the latency."""
    warm_up(gw, clinic, size, 100, 4)
    template = Path(tempfile.mkdtemp(prefix="zl-loadgen-")) / "envelope.json"
    template.write_text(json.dumps({**envelope_json("lab", "clinic", payload=payload_of(size)),
                                    "messageId": "@MESSAGE_ID@"}, ensure_ascii=False), encoding="utf-8")
    done = subprocess.run([sys.executable, str(Path(__file__).with_name("loadgen.py")), "--port", str(gw.port),
                           "--rate", str(rate), "--seconds", str(seconds), "--token", LAB_TOKEN,
                           "--template", str(template)], capture_output=True, text=True, timeout=seconds + 600,
                          check=True)
    sent = json.loads(done.stdout)
    wait_delivered(clinic, sent["ids"])
    return {"rate": rate, "ok": sent["ok"], "failed": len(sent["failed"]), "generator_lag_ms": sent["lag_ms"],
            **latencies(gw.db_url, set(sent["ids"]))}


def wait_delivered(clinic: RecipientServer, ids: list[str], timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not set(ids) <= clinic.accepted.keys() and time.monotonic() < deadline:
        time.sleep(0.05)


def latencies(db_url: str, ours: set[str]) -> dict[str, Any]:
    """Accept→delivered percentiles from the journal's own times, and the median lag of each stage."""
    engine = sa.create_engine(db_url)
    with engine.connect() as conn:
        rows = [(c, d) for mid, c, d in conn.execute(sa.text(
            "SELECT message_id, created_at, delivered_at FROM messages WHERE status='DELIVERED'")) if mid in ours]
        stamps = [r for r in conn.execute(sa.text("SELECT message_id, kind, at, detail FROM events")) if r[0] in ours]
    engine.dispose()

    def ts(v):
        from datetime import datetime
        return (datetime.fromisoformat(v) if isinstance(v, str) else v).timestamp()

    # A stage written after a later one ("late": the delivery worker was faster than the router's
    # write) carries the time it was written, not the time it happened: counted, not timed.
    # ROUTED is written with the delivery's outcome; the router's own time is in its detail.
    by_message: dict[str, dict[str, float]] = {}
    late: dict[str, int] = {}
    for mid, kind, at, detail in stamps:
        if '"late": true' in detail:
            late[kind] = late.get(kind, 0) + 1
            continue
        routed_at = json.loads(detail).get("routed_at") if kind == "ROUTED" else None
        by_message.setdefault(mid, {})[kind] = ts(routed_at or at)
    stages = {}
    for a, b in (("ACCEPTED", "PUBLISHED"), ("PUBLISHED", "ROUTED"), ("ROUTED", "DELIVERED")):
        lags = [m[b] - m[a] for m in by_message.values() if a in m and b in m]
        stages[f"{a}->{b}"] = (statistics.median(lags) if lags else float("nan"), len(lags), late.get(b, 0))
    lat = [ts(d) - ts(c) for c, d in rows]
    return {"p50": statistics.median(lat) if lat else float("nan"), "p95": pct(lat, 0.95), "p99": pct(lat, 0.99),
            "delivered": len(rows), "stages": stages}


def forwarder_baseline(size: int, n: int, concurrency: int) -> float:
    """The plain forwarder (bench/forwarder.py) under the same closed-loop load: delivered/s."""
    clinic = RecipientServer(name="forwarder-recipient").start()
    queue, port = f"zlb-fwd-{uuid.uuid4().hex[:6]}", free_port()
    conn = connect(AMQP_URL, "bench-forwarder", heartbeat=0)
    conn.channel().queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})
    script = str(Path(__file__).with_name("forwarder.py"))
    procs = [subprocess.Popen([sys.executable, script, "in", "--port", str(port), "--amqp", AMQP_URL,
                               "--queue", queue]),
             subprocess.Popen([sys.executable, script, "out", "--amqp", AMQP_URL, "--queue", queue,
                               "--to", clinic.url])]
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                httpx.post(f"http://127.0.0.1:{port}/", content=b"warm-up")
                break
            except httpx.TransportError:
                time.sleep(0.1)
        wait_until = time.monotonic() + 30
        while len(clinic.accepted) < 1 and time.monotonic() < wait_until:
            time.sleep(0.05)
        start_count = len(clinic.accepted)
        body = ("<zl:Envelope>" + payload_of(size) + "</zl:Envelope>").encode()
        client = httpx.Client(timeout=30, limits=httpx.Limits(max_connections=concurrency))
        t0 = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(lambda _: client.post(f"http://127.0.0.1:{port}/", content=body), range(n)))
        deadline = time.monotonic() + 600
        while len(clinic.accepted) < start_count + n and time.monotonic() < deadline:
            time.sleep(0.05)
        return n / (time.perf_counter() - t0)
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)
        conn.channel().queue_delete(queue)
        conn.close()
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


def scale_out(counts: list[int], size: int, n: int, concurrency: int, workers: int, database: str | None,
              fault_rate: float) -> None:
    """``--nodes``: N gateway nodes on a 3-node RabbitMQ cluster and one PostgreSQL journal."""
    from tests.conftest import PG_URL
    from tests.support.rabbit_node import RabbitCluster
    from tests.support.scale_out import Database, GatewayNode, remove_topology, write_config

    work = Path(tempfile.mkdtemp(prefix="zl-bench-nodes-"))
    cluster = RabbitCluster(work / "cluster", 5780, 3).start()
    print(f"scale-out: a 3-node RabbitMQ cluster, {workers} delivery worker(s) per node, journal on PostgreSQL, "
          f"{n} messages of {size // 1024} KB from {concurrency} clients spread over the nodes; "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}")
    print(f"{'nodes':>5} {'accepted/s':>11} {'delivered/s':>12} {'p50 ms':>8} {'p99 ms':>8}", flush=True)
    faults: list[str] = []
    try:
        for count in counts:
            clinic = RecipientServer(name="clinic").start()
            db = Database(database or PG_URL)
            prefix = f"zlb-{uuid.uuid4().hex[:6]}"
            config = write_config(work / f"config-{count}", clinic.url, delivery_workers=workers)
            nodes = [GatewayNode(f"node-{i + 1}", config, work / f"run-{count}", db_url=db.url,
                                 broker_urls=cluster.urls, prefix=prefix, api_port=free_port()) for i in range(count)]
            try:
                for node in nodes:
                    node.start()
                for node in nodes:
                    node.wait_ready()
                payload = payload_of(size)
                bodies = [envelope_json("lab", "clinic", payload=payload) for _ in range(n)]
                client = httpx.Client(timeout=30, limits=httpx.Limits(max_connections=concurrency))
                headers = {"Authorization": f"Bearer {LAB_TOKEN}"}
                t0 = time.perf_counter()
                with ThreadPoolExecutor(concurrency) as pool:
                    codes = list(pool.map(lambda ib: client.post(f"{nodes[ib[0] % count].base}/api/v1/messages",
                                                                 json=ib[1], headers=headers).status_code,
                                          enumerate(bodies)))
                t_sent = time.perf_counter()
                assert codes.count(202) == n, {c: codes.count(c) for c in set(codes)}
                ids = [b["messageId"] for b in bodies]
                wait_delivered(clinic, ids)
                t_done = time.perf_counter()
                r = latencies(db.url, set(ids))
                print(f"{count:>5} {n / (t_sent - t0):>11.0f} {n / (t_done - t0):>12.0f} {r['p50'] * 1000:>8.1f} "
                      f"{r['p99'] * 1000:>8.1f}", flush=True)
                if fault_rate:
                    faults.append(_node_faults(cluster, nodes, clinic, db.url, prefix, fault_rate))
            finally:
                for node in nodes:
                    node.stop()
                remove_topology(cluster.urls, prefix)
                clinic.stop()
                db.drop()
    finally:
        cluster.remove()
    if faults:
        print(f"\nnode loss under an open loop of {fault_rate:g}/s spread over the nodes "
              "(in flight: until everything accepted before the fault was delivered; worst: the slowest "
              "accept→delivered of the 10 s after it)")
        for line in faults:
            print(line)


def _node_faults(cluster: Any, nodes: list[Any], clinic: RecipientServer, db_url: str, prefix: str,
                 rate: float) -> str:
    """A broker node and then (with two nodes or more) a gateway node SIGKILLed under load; the recovery figures."""
    from tests.support.scale_out import SpreadLoad, recovery, settle

    seconds = 60
    load = SpreadLoad([node.base for node in nodes], count=int(rate * seconds), rate=rate).start()
    time.sleep(10)
    leaders = cluster.leaders(prefix)
    broker = cluster.node(max(set(leaders.values()), key=list(leaders.values()).count))
    broker_at = time.time()
    broker.kill()
    time.sleep(10)
    broker.start()
    gateway_at = None
    if len(nodes) > 1:
        time.sleep(10)
        gateway_at = time.time()
        nodes[-1].kill()
        time.sleep(10)
        nodes[-1].start()
    load.wait(seconds + 300)
    account = settle(db_url, load.accepted, timeout=300)
    delivered_at = {k: r.at for k, r in clinic.accepted.items()}
    b_in_flight, b_worst = recovery(load.accept_at, delivered_at, broker_at)
    line = (f"  {len(nodes)} node(s): accepted {account.accepted}, lost {account.lost}, repeats {clinic.repeats}; "
            f"RabbitMQ node lost: in flight {b_in_flight:.1f} s, worst {b_worst:.1f} s")
    if gateway_at is not None:
        g_in_flight, g_worst = recovery(load.accept_at, delivered_at, gateway_at)
        line += f"; gateway node lost: in flight {g_in_flight:.1f} s, worst {g_worst:.1f} s"
    return line


def print_stages(stages: dict[str, tuple[float, int, int]]) -> None:
    print("         median lag per stage: " + ", ".join(
        f"{k} {v * 1000:.0f} ms (n={n}, {lt} written late)" for k, (v, n, lt) in stages.items()), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2, help="delivery worker processes")
    ap.add_argument("--api-processes", type=int, default=1, help="API processes on the one port (PostgreSQL)")
    ap.add_argument("--sizes", default="2048,10240")
    ap.add_argument("--database", default=None,
                    help="journal URL for the gateway runs (default: a fresh SQLite file per run)")
    ap.add_argument("--rates", default="", help="open loop: these rates (messages/s), e.g. 10,25,50,100")
    ap.add_argument("--seconds", type=float, default=30, help="open loop: seconds per rate")
    ap.add_argument("--baseline", action="store_true", help="also the plain forwarder under the same load")
    ap.add_argument("--journal-preload", type=int, default=0, help="messages in the journal before the run")
    ap.add_argument("--unsigned", action="store_true", help="deliveries without the gateway's signature")
    ap.add_argument("--nodes", default="", help="scale-out: gateway node counts on a 3-node RabbitMQ cluster, e.g. 1,2")
    ap.add_argument("--node-faults", type=float, default=0, metavar="RATE",
                    help="with --nodes: lose a RabbitMQ node and a gateway node under RATE messages/s")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.nodes:
        scale_out([int(c) for c in args.nodes.split(",")], sizes[0], args.messages, args.concurrency, args.workers,
                  args.database, args.node_faults)
        return
    print(f"Zdravlink spine benchmark: {args.messages} messages per size, {args.concurrency} HTTP clients, "
          f"{args.workers} delivery workers, {args.api_processes} API process(es), "
          f"deliveries {'unsigned' if args.unsigned else 'signed (GOST 2012-256)'}, journal "
          f"{(args.database or 'sqlite').split('@')[-1]}, RabbitMQ at {AMQP_URL.split('@')[-1]}; "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"{'payload':>8} {'accepted/s':>11} {'delivered/s':>12} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'primitives/s':>13} {'ratio':>6}" + (f" {'forwarder/s':>12} {'ratio':>6}" if args.baseline else ""))
    for size in sizes:
        with gateway(args.workers, args.database, args.api_processes, args.journal_preload, not args.unsigned) as (gw, clinic):
            r = closed_loop(gw, clinic, size, args.messages, args.concurrency)
        ceiling = primitive_ceiling(size, min(args.messages, 2000), args.database)
        line = (f"{size // 1024:>6}KB {r['accepted_per_s']:>11.0f} {r['delivered_per_s']:>12.0f} "
                f"{r['p50'] * 1000:>8.1f} {r['p99'] * 1000:>8.1f} {ceiling:>13.0f} "
                f"{r['accepted_per_s'] / ceiling:>6.2f}")
        if args.baseline:
            fwd = forwarder_baseline(size, args.messages, args.concurrency)
            line += f" {fwd:>12.0f} {r['delivered_per_s'] / fwd:>6.2f}"
        print(line, flush=True)
        warm, end = r["rss"]
        print("         RSS MB after warm-up → after the run: " + ", ".join(
            f"{k} {warm[k]:.0f}→{end[k]:.0f} ({(end[k] / warm[k] - 1) * 100:+.0f} %)" for k in warm if k in end),
              flush=True)
        print_stages(r["stages"])
    if args.rates:
        print(f"\nopen loop, {sizes[0] // 1024} KB, {args.seconds:g} s per rate "
              f"(load average {os.getloadavg()[0]:.2f})")
        print(f"{'rate/s':>7} {'sent':>6} {'refused':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} "
              f"{'generator lag p99/max ms':>25}")
        for rate in (float(x) for x in args.rates.split(",")):
            with gateway(args.workers, args.database, args.api_processes, args.journal_preload, not args.unsigned) as (gw, clinic):
                r = open_loop(gw, clinic, sizes[0], rate, args.seconds)
            lag = r["generator_lag_ms"]
            print(f"{rate:>7.0f} {r['ok']:>6} {r['failed']:>8} {r['p50'] * 1000:>8.1f} {r['p95'] * 1000:>8.1f} "
                  f"{r['p99'] * 1000:>8.1f} {lag['p99']:>14}/{lag['max']}", flush=True)
            print_stages(r["stages"])


if __name__ == "__main__":
    main()
