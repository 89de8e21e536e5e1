"""Read-only looks at the broker for metrics and readiness, cached so scrapes stay cheap.

The broker is reachable when a connection opens. A queue that does not exist yet (the
API started before any worker declared the topology) has no depth, and is not a sign
that the broker is down.

AMQP tells only how many messages are *ready* in a queue and how many consumers it has;
copies a consumer holds unacknowledged are not counted (the management plugin would
say, at the cost of running it). The consumer count is what lets the sweeper tell a
queue that cannot hold a copy out of sight from one that may (``routing.sweeper``).
"""
from __future__ import annotations

import threading
import time
from typing import NamedTuple

import pika

from routing.broker import BROKER_ERRORS, BrokerAddress, connect


class QueueLook(NamedTuple):
    ready: int
    consumers: int


class BrokerInspector:
    def __init__(self, broker: BrokerAddress, queues: list[str], ttl: float = 2.0) -> None:
        self.broker = broker
        self.queues = queues
        self.ttl = ttl
        self._lock = threading.Lock()
        self._at = 0.0
        self._looks: dict[str, QueueLook] = {}
        self._ok = False

    def _refresh(self) -> None:
        with self._lock:
            if time.monotonic() - self._at < self.ttl:
                return
            looks: dict[str, QueueLook] = {}
            try:
                conn = connect(self.broker, "zl-inspector", heartbeat=0)
                try:
                    ch = conn.channel()
                    for q in self.queues:
                        try:
                            ok = ch.queue_declare(q, passive=True).method
                            looks[q] = QueueLook(ok.message_count, ok.consumer_count)
                        except pika.exceptions.ChannelClosedByBroker:  # 404: not declared yet
                            ch = conn.channel()
                finally:
                    conn.close()
                self._ok = True
            except BROKER_ERRORS:
                self._ok = False
            self._looks = looks
            self._at = time.monotonic()

    def depths(self) -> dict[str, int]:
        """Messages ready in each declared queue."""
        return {q: look.ready for q, look in self.looks().items()}

    def looks(self) -> dict[str, QueueLook]:
        self._refresh()
        return dict(self._looks)

    def reachable(self) -> bool:
        self._refresh()
        return self._ok
