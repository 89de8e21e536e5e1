"""A plain forwarder, the baseline the gateway is measured against: HTTP in → confirmed publish →
consume → HTTP out, with the libraries the gateway uses (uvicorn with uvloop, pika, httpx) and
nothing else — no journal, no validation, no signature, no routing table.

    .venv/bin/python bench/forwarder.py in  --port P --amqp URL --queue Q
    .venv/bin/python bench/forwarder.py out --amqp URL --queue Q --to http://…/inbox [--threads 32]

``bench_spine.py --baseline`` runs both beside the gateway in the same run and reports the ratio.
"""
from __future__ import annotations

import argparse
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
import pika

from routing.broker import ThreadPublisher, connect, properties


def inbound(port: int, amqp: str, queue: str) -> None:
    import uvicorn

    publisher = ThreadPublisher(amqp, "forwarder-in")

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        # Confirmed and persistent, as the gateway's relay publishes (here straight to the queue).
        from starlette.concurrency import run_in_threadpool

        await run_in_threadpool(publisher.publish, "", queue, body, properties(uuid.uuid4().hex, {}))
        await send({"type": "http.response.start", "status": 202, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"accepted"})

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, loop="uvloop",
                http="httptools")


def outbound(amqp: str, queue: str, to: str, threads: int) -> None:
    client = httpx.Client(timeout=10, limits=httpx.Limits(max_connections=threads))
    pool = ThreadPoolExecutor(threads)
    conn = connect(amqp, "forwarder-out")
    ch = conn.channel()
    ch.basic_qos(prefetch_count=threads)

    def deliver(tag: int, key: str, body: bytes) -> None:
        client.post(to, content=body, headers={"Content-Type": "application/xml", "Idempotency-Key": key})
        conn.add_callback_threadsafe(lambda: ch.basic_ack(tag))

    def on_message(_ch: Any, method: pika.spec.Basic.Deliver, props: pika.BasicProperties, body: bytes) -> None:
        pool.submit(deliver, method.delivery_tag, str(props.message_id), body)

    ch.basic_consume(queue, on_message)
    ch.start_consuming()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("side", choices=("in", "out"))
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--amqp", required=True)
    ap.add_argument("--queue", required=True)
    ap.add_argument("--to", default="")
    ap.add_argument("--threads", type=int, default=32)
    args = ap.parse_args()
    if args.side == "in":
        inbound(args.port, args.amqp, args.queue)
    else:
        outbound(args.amqp, args.queue, args.to, args.threads)


if __name__ == "__main__":
    main()
