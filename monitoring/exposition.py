"""What ``/metrics`` serves: the counters of every process plus gauges read at scrape time.

Queue depth and the age of the oldest in-flight message are read when Prometheus
asks, from the broker and the journal, so they are true even if a worker has died,
which is exactly when an operator needs them.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
from collections.abc import Callable, Iterable, Sequence

from prometheus_client import REGISTRY as DEFAULT_REGISTRY
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from gateway.journal import IN_FLIGHT, Journal, Status

log = logging.getLogger(__name__)


#: (owner, subject, serial, not after) of a certificate the gateway relies on.
CertificateInfo = tuple[str, str, str, dt.datetime]


class GatewayStateCollector(Collector):
    def __init__(self, journal: Journal, queue_depths: Callable[[], dict[str, int]],
                 certificates: Sequence[CertificateInfo] = ()) -> None:
        self.journal = journal
        self.queue_depths = queue_depths
        self.certificates = certificates

    def collect(self) -> Iterable[Metric]:
        count = GaugeMetricFamily("zl_messages_in_flight", "Journalled messages not yet delivered or dead",
                                  labels=["status"])
        age = GaugeMetricFamily("zl_oldest_in_flight_age_seconds", "Age of the oldest message in each in-flight status",
                                labels=["status"])
        try:
            summary = self.journal.in_flight_summary()
        except Exception:  # a scrape must still answer when the journal does not
            log.exception("journal unavailable for metrics")
            summary = {}
        for status in IN_FLIGHT:
            n, oldest = summary.get(status.value, (0, 0.0))
            count.add_metric([status.value], n)
            age.add_metric([status.value], oldest)
        yield count
        yield age
        depth = GaugeMetricFamily("zl_queue_depth", "Messages ready in each gateway queue", labels=["queue"])
        for queue, n in self.queue_depths().items():
            depth.add_metric([queue], n)
        yield depth
        dead = GaugeMetricFamily("zl_messages_dead", "Messages in DEAD status awaiting replay")
        try:
            dead.add_metric([], self.journal.count(Status.DEAD))
        except Exception:
            log.exception("journal unavailable for metrics")
        yield dead
        expiry = GaugeMetricFamily("zl_certificate_expiry_days",
                                   "Days until a certificate expires (negative: expired)",
                                   labels=["owner", "subject", "serial"])
        now = dt.datetime.now(dt.UTC)
        for owner, subject, serial, not_after in self.certificates:
            expiry.add_metric([owner, subject, serial], round((not_after - now).total_seconds() / 86400, 2))
        yield expiry


def certificate_labels(subject: str, serial: str, details: bool) -> tuple[str, str]:
    """A certificate's labels on /metrics: its subject and serial, or a pseudonymous id that tells them apart."""
    if details:
        return subject, serial
    return "hidden", hashlib.sha256(f"{subject}|{serial}".encode()).hexdigest()[:12]


def render(state: GatewayStateCollector) -> bytes:
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        MultiProcessCollector(registry)
    else:
        for collector in list(DEFAULT_REGISTRY._collector_to_names):  # the process's own metrics
            registry.register(collector)
    registry.register(state)
    return generate_latest(registry)
