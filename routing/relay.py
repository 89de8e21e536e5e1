"""The outbox relay: moves accepted messages from the journal to RabbitMQ.

Accepting writes only to the journal, so a broker outage never refuses a partner.
The relay publishes with publisher confirms and marks a message PUBLISHED only
after the broker has confirmed it. pika's blocking confirm costs one round trip per
message, so a batch is split over several channels, each on its own thread and
connection, to keep that wait from capping throughput.
"""
from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from gateway.config import RelaySettings
from gateway.journal import Journal
from routing.broker import BROKER_ERRORS, ThreadPublisher, properties
from routing.topology import Topology

log = logging.getLogger(__name__)
ACTOR = "outbox-relay"


class OutboxRelay:
    def __init__(self, journal: Journal, amqp_url: str, topology: Topology, settings: RelaySettings) -> None:
        self.journal = journal
        self.topology = topology
        self.settings = settings
        self.publisher = ThreadPublisher(amqp_url, ACTOR)
        self._pool = ThreadPoolExecutor(max_workers=settings.channels, thread_name_prefix="relay")
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.broker_ok = False
        self.published_total = 0

    def wake(self) -> None:
        """Called after an accept so the relay need not wait for its next poll."""
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="outbox-relay", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout)
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _run(self) -> None:
        backoff = self.settings.poll_interval_seconds
        while not self._stop.is_set():
            try:
                moved = self.relay_once()
                backoff = self.settings.poll_interval_seconds
            except BROKER_ERRORS as exc:
                self.broker_ok = False
                log.warning("broker unavailable, outbox waits (%s); retry in %.1fs", type(exc).__name__, backoff)
                moved = 0
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            except Exception:
                log.exception("outbox relay pass failed")
                moved = 0
            if moved < self.settings.batch_size:
                self._wake.wait(self.settings.poll_interval_seconds)
                self._wake.clear()

    def _publish_chunk(self, chunk: list[tuple[str, bytes]]) -> list[str]:
        done: list[str] = []
        try:
            for message_id, body in chunk:
                self.publisher.publish(
                    self.topology.ingress_exchange, "route", body, properties(message_id, {})
                )
                done.append(message_id)
        except BROKER_ERRORS as exc:
            log.warning("publish interrupted after %d of %d: %s", len(done), len(chunk), type(exc).__name__)
            if not done:
                raise
        return done

    def relay_once(self) -> int:
        """Publish one batch; returns how many messages were confirmed."""
        batch = self.journal.outbox(self.settings.batch_size)
        if not batch:
            return 0
        n = self.settings.channels
        chunks = [batch[i::n] for i in range(n) if batch[i::n]]
        published: list[str] = []
        first_error: BaseException | None = None
        for fut in [self._pool.submit(self._publish_chunk, c) for c in chunks]:
            try:
                published.extend(fut.result())
            except BROKER_ERRORS as exc:
                first_error = first_error or exc
        if published:
            self.journal.mark_published(published, ACTOR)
            self.published_total += len(published)
            self.broker_ok = True
        if first_error is not None and not published:
            raise first_error
        return len(published)
