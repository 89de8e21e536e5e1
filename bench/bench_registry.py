"""Registry verification round trips: MIS request → gateway → ФРМР emulator → answer delivered to the MIS.

Starts a whole gateway (API, router, delivery workers, deadline watcher) on a temporary
configuration with signed ФРМР/ФРМО emulators and two clinics as REST recipients, sends
``--requests`` worker verification requests from ``--concurrency`` threads and waits
until every answer has reached its clinic. Prints, from the same run:

- round trips/s through the gateway with the cache off (every request calls ФРМР);
- the same with the cache on and one repeated question (answers from the cache);
- the ceiling: FrmrClient alone (HTTP call plus the registry's GOST signature check), one thread
  per concurrency slot, against the same emulator.

    .venv/bin/python bench/bench_registry.py [--requests 500] [--concurrency 16] [--database URL]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.registries.clients import FrmrClient
from demo.ca import create_demo_keys, demo_signer
from gateway.journal import Journal
from signing import TrustStore
from tests.conftest import AMQP_URL, free_port
from tests.integration.test_registry_flow import CLINICS, World
from tests.support.gateway_proc import GatewayProcesses

PEOPLE = ["11223344595", "12345678964", "34567891226", "45678912344", "56789123453", "10987654303"]


class _Env:
    """What World needs of pytest's monkeypatch."""

    @staticmethod
    def setenv(name: str, value: str) -> None:
        os.environ[name] = value


def round_trips(world: World, n: int, concurrency: int, same_question: bool) -> tuple[float, str]:
    """Round trips per second, and the median time of each half: request accepted → registry answered
    (spine, call, answer journalled), answer journalled → delivered to the clinic (spine again)."""
    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        ids = list(pool.map(lambda i: world.ask_worker(CLINICS[i % 2],
                                                       PEOPLE[0 if same_question else i % len(PEOPLE)]), range(n)))
    while sum(len(s.accepted) for s in world.clinics.values()) < n:
        if time.perf_counter() - t0 > 600:
            raise SystemExit("answers missing after 600 s")
        time.sleep(0.05)
    rate = n / (time.perf_counter() - t0)
    journal = Journal(world.gw.db_url)
    asked, back = [], []
    for mid in ids:
        request = journal.get(mid)
        answered = next(e for e in journal.trail(mid) if e.kind in ("REGISTRY_ANSWERED", "LATE_ANSWER"))
        answer = journal.get(answered.detail["answer"])
        asked.append((answered.at - request.created_at).total_seconds())
        back.append((answer.delivered_at - answer.created_at).total_seconds())
    journal.engine.dispose()
    return rate, f"median ms: accepted→answered {statistics.median(asked) * 1000:.0f}, " \
                 f"answer→delivered {statistics.median(back) * 1000:.0f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--database", default=None, help="journal URL (default: a fresh SQLite file); an empty "
                    "PostgreSQL database per run, e.g. postgresql+psycopg://zdravlink:zdravlink@127.0.0.1/zl_bench")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        keys = base / "keys"
        create_demo_keys(keys, ["gateway", "clinic", "frmr", "frmo"], ("gost2012-256",))
        signers = {name: (demo_signer(keys, name), keys / f"{name}-gost2012-256.pem") for name in ("frmr", "frmo")}
        started: list[GatewayProcesses] = []

        def gateway(participants: str, routes: str, *, settings: str, delivery_workers: int) -> GatewayProcesses:
            gw = GatewayProcesses(base / f"gw{len(started)}", participants, routes, settings=settings,
                                  amqp_url=AMQP_URL, db_url=args.database, api_port=free_port(),
                                  delivery_workers=delivery_workers)
            started.append(gw)
            gw.start()
            return gw

        results: dict[str, float] = {}
        lags: dict[str, str] = {}
        for label, ttl, same in (("cache off", 0, False), ("cache on, one question", 600, True)):
            world = World(gateway, _Env(), keys, signers, worker_ttl=ttl, delivery_workers=2)
            try:
                world.ask_worker("clinic-a", PEOPLE[0])  # warm up connections and the WSDL-free ФРМР path
                while not world.clinics["clinic-a"].accepted:
                    time.sleep(0.05)
                world.clinics["clinic-a"].accepted.clear()
                results[label], lags[label] = round_trips(world, args.requests, args.concurrency, same)
                if label == "cache off":
                    http = httpx.Client(timeout=10)
                    client = FrmrClient(http, world.frmr.url, "frmr-token", trust=TrustStore.from_directory(keys / "trust"),
                                        signers=[signers["frmr"][0].certificate])
                    t0 = time.perf_counter()
                    with ThreadPoolExecutor(args.concurrency) as pool:
                        list(pool.map(lambda i: client.person(PEOPLE[i % len(PEOPLE)]), range(args.requests)))
                    results["ceiling: FrmrClient alone"] = args.requests / (time.perf_counter() - t0)
                    http.close()
            finally:
                world.stop()
                started[-1].stop()
    journal = "SQLite" if args.database is None else args.database.split("@")[-1]
    print(f"{args.requests} worker verification requests, {args.concurrency} concurrent, 2 delivery workers, {journal}")
    for label, value in results.items():
        print(f"  {label:<28} {value:8.1f} per second   {lags.get(label, '')}")
    print(f"  ratio gateway/ceiling        {results['cache off'] / results['ceiling: FrmrClient alone']:8.2f}")


if __name__ == "__main__":
    main()
