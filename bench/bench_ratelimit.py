"""What a rate limit check costs per message: buckets kept in the process, and shared between processes.

Shared buckets (``ZL_RUN_DIR``) take a slot lock (``fcntl.lockf``, two system calls) and
read and write the slot in a mapped file at every check. This times ``admit`` for a
participant whose limit is never reached, in one thread, then with ``--processes``
processes checking the same participant at once, and prints microseconds per check.

    .venv/bin/python bench/bench_ratelimit.py --checks 200000 --processes 4
"""
from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.ratelimit import RateLimit, RateLimiter

LIMITS = {"lab": RateLimit(messages_per_second=1e9, bytes_per_second=10**15)}


def checks_per_second(shared: Path | None, checks: int) -> float:
    limiter = RateLimiter(LIMITS, shared_dir=shared)
    began = time.perf_counter()
    for _ in range(checks):
        limiter.admit("lab", 2048)
    return checks / (time.perf_counter() - began)


def _worker(shared: str, checks: int, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    out.put(checks_per_second(Path(shared), checks))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checks", type=int, default=200_000)
    ap.add_argument("--processes", type=int, default=4)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="zl-bench-ratelimit-") as tmp:
        for label, shared in (("in the process", None), ("shared file", Path(tmp))):
            rate = checks_per_second(shared, args.checks)
            print(f"{label:<16} 1 process : {1e6 / rate:6.2f} µs per check")
        out: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
        procs = [multiprocessing.Process(target=_worker, args=(tmp, args.checks, out))
                 for _ in range(args.processes)]
        began = time.perf_counter()
        for p in procs:
            p.start()
        rates = [out.get() for _ in procs]
        for p in procs:
            p.join()
        took = time.perf_counter() - began
        print(f"{'shared file':<16} {args.processes} processes, one participant: "
              f"{1e6 / (sum(rates) / len(rates)):6.2f} µs per check in each, "
              f"{args.processes * args.checks / took:,.0f} checks/s in all")


if __name__ == "__main__":
    main()
