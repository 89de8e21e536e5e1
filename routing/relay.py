"""The outbox relay: moves accepted messages from the journal to RabbitMQ.

Accepting writes only to the journal, so a broker outage never refuses a partner.
The relay publishes with publisher confirms and marks a message PUBLISHED only
after the broker has confirmed it. It streams each batch and collects the confirms
together (``PipelinedPublisher``) rather than waiting a round trip per message, so
it publishes far faster than the API can accept and is never the bottleneck.
"""
from __future__ import annotations

import logging
import threading

from gateway.config import RelaySettings
from gateway.journal import Journal, unavailable
from routing.broker import BROKER_ERRORS, BrokerAddress
from routing.pipelined import Outgoing, PipelinedPublisher
from routing.topology import Topology

log = logging.getLogger(__name__)
ACTOR = "outbox-relay"


class OutboxRelay:
    def __init__(self, journal: Journal, broker: BrokerAddress, topology: Topology, settings: RelaySettings) -> None:
        self.journal = journal
        self.topology = topology
        self.settings = settings
        self.publisher = PipelinedPublisher(broker, ACTOR)
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

    def _run(self) -> None:
        backoff = idle = self.settings.poll_interval_seconds
        journal_down = False
        while not self._stop.is_set():
            # Cleared before the poll, not after the wait: an accept that lands between the two is
            # either in this poll or wakes the next wait.
            self._wake.clear()
            try:
                moved = self.relay_once()
                backoff = self.settings.poll_interval_seconds
            except BROKER_ERRORS as exc:  # BrokerUnavailable is an OSError too
                self.broker_ok = False
                log.warning("broker unavailable, outbox waits (%s); retry in %.1fs", type(exc).__name__, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            except Exception as exc:
                if not unavailable(exc):
                    log.exception("outbox relay pass failed")
                elif not journal_down:
                    log.warning("journal out of reach, the outbox waits (%s)", type(exc).__name__)
                journal_down = unavailable(exc)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            if journal_down:
                log.warning("journal answers again, the outbox resumes")
                journal_down = False
            if moved:
                idle = self.settings.poll_interval_seconds
            if moved < self.settings.batch_size:
                if self._wake.wait(idle):
                    idle = self.settings.poll_interval_seconds
                elif not moved:
                    idle = min(idle * 2, self.settings.idle_poll_max_seconds)
        self.publisher.close()

    def relay_once(self) -> int:
        """Publish one batch; returns how many messages were confirmed."""
        published = self.journal.relay(self.settings.batch_size, self._publish, ACTOR)
        if published:
            self.published_total += published
            self.broker_ok = True
        return published

    def _publish(self, batch: list[tuple[str, bytes, int]]) -> list[str]:
        return self.publisher.publish_batch(
            self.topology.ingress_exchange,
            [Outgoing(message_id, "route", body, {"x-zl-generation": generation})
             for message_id, body, generation in batch],
        )
