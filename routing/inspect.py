"""Read-only looks at the broker for metrics and readiness, cached so scrapes stay cheap.

The broker is reachable when a connection opens. A queue that does not exist yet (the
API started before any worker declared the topology) has no depth, and is not a sign
that the broker is down.
"""
from __future__ import annotations

import threading
import time

import pika

from routing.broker import BROKER_ERRORS, BrokerAddress, connect


class BrokerInspector:
    def __init__(self, broker: BrokerAddress, queues: list[str], ttl: float = 2.0) -> None:
        self.broker = broker
        self.queues = queues
        self.ttl = ttl
        self._lock = threading.Lock()
        self._at = 0.0
        self._depths: dict[str, int] = {}
        self._ok = False

    def _refresh(self) -> None:
        with self._lock:
            if time.monotonic() - self._at < self.ttl:
                return
            depths: dict[str, int] = {}
            try:
                conn = connect(self.broker, "zl-inspector", heartbeat=0)
                try:
                    ch = conn.channel()
                    for q in self.queues:
                        try:
                            depths[q] = ch.queue_declare(q, passive=True).method.message_count
                        except pika.exceptions.ChannelClosedByBroker:  # 404: not declared yet
                            ch = conn.channel()
                finally:
                    conn.close()
                self._ok = True
            except BROKER_ERRORS:
                self._ok = False
            self._depths = depths
            self._at = time.monotonic()

    def depths(self) -> dict[str, int]:
        self._refresh()
        return dict(self._depths)

    def reachable(self) -> bool:
        self._refresh()
        return self._ok
