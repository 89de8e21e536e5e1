"""A test's own quorum queue on the shared broker, and how many messages are ready in a queue."""
from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from routing.broker import connect


@contextmanager
def quorum_queue(amqp_url: str, prefix: str) -> Iterator[str]:
    """A quorum queue named ``<prefix>-<random>``, deleted afterwards."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    conn = connect(amqp_url, "zl-test", heartbeat=0)
    try:
        ch = conn.channel()
        ch.queue_declare(name, durable=True, arguments={"x-queue-type": "quorum"})
        yield name
        ch.queue_delete(name)
    finally:
        conn.close()


def ready_in(amqp_url: str, queue: str) -> int:
    """Messages ready in ``queue`` (AMQP does not count those a consumer holds unacknowledged)."""
    conn = connect(amqp_url, "zl-test-depth", heartbeat=0)
    try:
        return int(conn.channel().queue_declare(queue, passive=True).method.message_count)
    finally:
        conn.close()
