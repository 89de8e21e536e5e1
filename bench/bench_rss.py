"""Each gateway process's memory over a long run: RSS after a warm-up, then at every checkpoint up to a million messages.

Issue 18 asks that every process's RSS after 1,000,000 messages stay within +10 % of its RSS after
the warm-up. The gateway of bench_spine.py (API + relay, router, two delivery workers, deliveries
signed with the gateway's GOST 2012-256 key, a fresh SQLite journal unless ``--database``) takes a
closed loop of ``--concurrency`` clients; the recipient forgets each body once counted, so the bench
itself stays small. At each checkpoint it prints the messages delivered, the rate since the last
one, and each process's RSS with its change from the warm-up. Nothing is asserted: a leak shows as a
column that keeps growing.

    .venv/bin/python bench/bench_rss.py --messages 1000000 --every 100000
"""
from __future__ import annotations

import argparse
import itertools
import os
import sys
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_spine import gateway, payload_of, rss_mb, warm_up

from tests.support.configs import LAB_TOKEN
from tests.support.gateway_proc import envelope_json


def send(base: str, payload: str, total: int, counter: itertools.count[int], refused: list[int]) -> None:
    """One client: post until ``total`` messages have been taken from ``counter``."""
    with httpx.Client(base_url=base, timeout=60) as client:
        headers = {"Authorization": f"Bearer {LAB_TOKEN}"}
        while next(counter) < total:
            code = client.post("/api/v1/messages", json=envelope_json("lab", "clinic", payload=payload),
                               headers=headers).status_code
            if code != 202:
                refused.append(code)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--every", type=int, default=100_000, help="a checkpoint every this many delivered")
    ap.add_argument("--warm-up", type=int, default=5_000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2, help="delivery worker processes")
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--database", default=None, help="journal URL (default: a fresh SQLite file)")
    args = ap.parse_args()
    payload = payload_of(args.size)
    with gateway(args.workers, args.database) as (gw, clinic):
        warm_up(gw, clinic, args.size, args.warm_up, args.concurrency)
        clinic.drain_accepted()
        base = rss_mb(gw)
        print(f"Zdravlink RSS over {args.messages:,} messages of {args.size // 1024} KB, {args.concurrency} clients, "
              f"{args.workers} delivery workers, signed; load average {os.getloadavg()[0]:.2f}", flush=True)
        print("after warm-up (MB): " + ", ".join(f"{k} {v:.0f}" for k, v in base.items()), flush=True)
        counter, refused = itertools.count(), []
        clients = [threading.Thread(target=send, args=(gw.base, payload, args.messages, counter, refused), daemon=True)
                   for _ in range(args.concurrency)]
        for c in clients:
            c.start()
        delivered, mark, t_mark, t0 = set(), args.every, time.monotonic(), time.monotonic()
        while len(delivered) < args.messages:
            time.sleep(1)
            delivered.update(clinic.drain_accepted())
            if len(delivered) >= mark or len(delivered) >= args.messages:
                now, rss = time.monotonic(), rss_mb(gw)
                rate = (len(delivered) - (mark - args.every)) / (now - t_mark)
                print(f"{len(delivered):>9,} delivered, {rate:5.0f}/s, {(now - t0) / 60:5.1f} min: " + ", ".join(
                    f"{k} {rss[k]:.0f} ({(rss[k] / base[k] - 1) * 100:+.0f} %)" for k in base if k in rss), flush=True)
                mark, t_mark = mark + args.every, now
            if not any(c.is_alive() for c in clients) and time.monotonic() - t_mark > 600:
                print(f"stopped waiting: {len(delivered):,} of {args.messages:,} delivered", flush=True)
                break
        print(f"refused: {len(refused)}; load average {os.getloadavg()[0]:.2f}", flush=True)


if __name__ == "__main__":
    main()
