"""Fault scenarios under steady load: what was accepted, delivered, dead, lost, repeated, and how fast it settled.

The same scenarios as the fault suite (tests/support/faults.py): a whole gateway on
PostgreSQL and a RabbitMQ node of its own, each reached through a TCP proxy, a real
recipient behind another; each fault applied once in the middle of the load. Prints one
row per scenario, the table of docs/RELIABILITY.md. Needs scripts/test's PostgreSQL
(``ZL_TEST_PG_URL``) and the Debian rabbitmq-server package.

    .venv/bin/python bench/bench_faults.py                 # every scenario (about 12 minutes)
    .venv/bin/python bench/bench_faults.py -k SIGKILL      # those whose name holds SIGKILL
    .venv/bin/python bench/bench_faults.py --count 3000 --rate 80
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.faults import HEADER, SCENARIOS, Bench, run

PG_URL = os.environ.get("ZL_TEST_PG_URL", "postgresql+psycopg://zdravlink:zdravlink@127.0.0.1:5432/zdravlink")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-k", default="", help="only scenarios whose name contains this text")
    ap.add_argument("--count", type=int, default=None, help="messages per scenario (default: the scenario's, 1000)")
    ap.add_argument("--rate", type=float, default=None, help="messages per second sent (default: 60)")
    args = ap.parse_args()
    chosen = [s for s in SCENARIOS if args.k.lower() in s.name.lower()]
    with tempfile.TemporaryDirectory(prefix="zl-faults-") as tmp:
        bench = Bench(Path(tmp), PG_URL)
        try:
            print(f"load: {args.count or 'scenario default'} messages at {args.rate or 'default'}/s per scenario; "
                  f"load average {os.getloadavg()[0]:.2f}\n")
            print(HEADER, flush=True)
            for i, scenario in enumerate(chosen):
                changes = {k: v for k, v in (("count", args.count), ("rate", args.rate)) if v}
                result = run(bench, dataclasses.replace(scenario, **changes), Path(tmp) / f"gw{i}")
                print(result.row(), flush=True)
                for note in result.notes[:5]:
                    print(f"    {note}", flush=True)
        finally:
            bench.close()


if __name__ == "__main__":
    main()
