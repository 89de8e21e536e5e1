"""A lean open-loop load generator: POSTs at a fixed rate, whatever the answers' pace, from its own process.

Closed-loop clients send the next request when the last is answered, so a slow gateway
is never measured slow; and a generator that shares the process (or uses a heavy client)
steals the CPU it measures. This one sends request *i* at ``t0 + i / rate`` over a few
keep-alive HTTP/1.1 connections with asyncio streams, and reports how late it was itself,
so its lag can be told from the gateway's.

    .venv/bin/python bench/loadgen.py --host 127.0.0.1 --port P --rate 100 --seconds 30 \\
        --token T --template envelope.json     # one JSON line: sent, ok, failed, lag p50/p99/max, ids
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid


async def run(host: str, port: int, rate: float, count: int, connections: int, token: str, template: str) -> dict:
    ids: list[str] = []
    lags: list[float] = []
    failed: list[int] = []
    queue: asyncio.Queue[int | None] = asyncio.Queue()
    t0 = time.perf_counter() + 0.2

    async def connection() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        while (i := await queue.get()) is not None:
            lags.append(time.perf_counter() - (t0 + i / rate))
            mid = str(uuid.uuid1())
            body = template.replace("@MESSAGE_ID@", mid).encode()
            writer.write(f"POST /api/v1/messages HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
                         f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = next(int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length"))
            await reader.readexactly(length)
            (ids.append(mid) if status == 202 else failed.append(status))
        writer.close()

    workers = [asyncio.create_task(connection()) for _ in range(connections)]
    for i in range(count):
        delay = t0 + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        await queue.put(i)
    for _ in workers:
        await queue.put(None)
    await asyncio.gather(*workers)
    lags.sort()
    pick = lambda q: round(lags[min(len(lags) - 1, int(q * len(lags)))] * 1000, 1) if lags else None  # noqa: E731
    return {"sent": count, "ok": len(ids), "failed": failed[:20], "lag_ms": {"p50": pick(0.5), "p99": pick(0.99),
            "max": round(lags[-1] * 1000, 1) if lags else None}, "seconds": round(time.perf_counter() - t0, 2),
            "ids": ids}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--rate", type=float, required=True)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--token", required=True)
    ap.add_argument("--template", required=True, help="a JSON envelope file whose messageId is @MESSAGE_ID@")
    args = ap.parse_args()
    template = open(args.template, encoding="utf-8").read()
    result = asyncio.run(run(args.host, args.port, args.rate, int(args.rate * args.seconds), args.connections,
                             args.token, template))
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
