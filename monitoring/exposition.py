"""What ``/metrics`` serves: the counters of every process plus gauges read at scrape time.

Queue depth and the age of the oldest in-flight message are read when Prometheus
asks, from the broker and the journal, so they are true even if a worker has died,
which is exactly when an operator needs them. ``zl_journal_up`` says whether the
journal answered this scrape: the gauges read from it are empty when it did not, and
an alert on an absent series would not tell an outage from a quiet gateway.

Served as OpenMetrics when the scraper asks for it (Prometheus does), else in the
classic text format; both parse, which needs every family name to be unique (the
DEAD gauge is ``zl_dead_messages``, apart from the counter ``zl_messages_dead_total``).
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
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.registry import Collector

from gateway.journal import IN_FLIGHT, Journal, Status
from gateway.journal.search import relay_lag_seconds
from gateway.transport import Watched

log = logging.getLogger(__name__)


#: (owner, subject, serial, not after) of a certificate the gateway relies on.
CertificateInfo = tuple[str, str, str, dt.datetime]


class GatewayStateCollector(Collector):
    def __init__(self, journal: Journal, queue_depths: Callable[[], dict[str, int]],
                 certificates: Sequence[CertificateInfo] = (), watched: Sequence[Watched] = (),
                 details: bool = False, timestamp_alert_after: float | None = None) -> None:
        """``timestamp_alert_after``: evidence.timestamp_alert_after_seconds (None: no timestamp is expected)."""
        self.journal = journal
        self.queue_depths = queue_depths
        self.certificates = certificates
        #: Every certificate and CRL date (gateway.transport.watched), as zl_certificate_expiry_seconds.
        self.watched = watched
        self.details = details
        self.timestamp_alert_after = timestamp_alert_after

    def collect(self) -> Iterable[Metric]:
        count = GaugeMetricFamily("zl_messages_in_flight", "Journalled messages not yet delivered or dead",
                                  labels=["status"])
        age = GaugeMetricFamily("zl_oldest_in_flight_age_seconds", "Age of the oldest message in each in-flight status",
                                labels=["status"])
        up = GaugeMetricFamily("zl_journal_up", "1 when the journal answered this scrape, 0 when it was out of reach")
        try:
            summary = self.journal.in_flight_summary()
            lag = relay_lag_seconds(self.journal)
            dead_count: int | None = self.journal.count(Status.DEAD)
            up.add_metric([], 1)
        except Exception:  # a scrape must still answer when the journal does not
            log.exception("journal unavailable for metrics")
            summary, lag, dead_count = {}, None, None
            up.add_metric([], 0)
        yield up
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
        dead = GaugeMetricFamily("zl_dead_messages", "Messages in DEAD status awaiting replay")
        relay = GaugeMetricFamily("zl_relay_lag_seconds", "How long the oldest message waiting in the outbox "
                                  "(ACCEPTED, not yet published) has waited; 0 when none waits")
        if dead_count is not None:
            dead.add_metric([], dead_count)
        if lag is not None:
            relay.add_metric([], lag)
        yield dead
        yield relay
        expiry = GaugeMetricFamily("zl_certificate_expiry_days",
                                   "Days until a certificate expires (negative: expired)",
                                   labels=["owner", "subject", "serial"])
        now = dt.datetime.now(dt.UTC)
        for owner, subject, serial, not_after in self.certificates:
            expiry.add_metric([owner, subject, serial], round((not_after - now).total_seconds() / 86400, 2))
        yield expiry
        seconds = GaugeMetricFamily("zl_certificate_expiry_seconds",
                                    "Seconds until a certificate the gateway uses or trusts expires, or a CRL's next "
                                    "update is due (negative: past); kind says which (signing, tls-server, "
                                    "client-certificate, channel-client, trust-store, tls-client-ca, channel-ca, crl)",
                                    labels=["owner", "kind", "subject", "serial"])
        for w in self.watched:
            subject, serial = certificate_labels(w.subject, w.serial, self.details)
            seconds.add_metric([w.owner, w.kind, subject, serial], round(w.seconds_left(now)))
        yield seconds
        yield from self._evidence()

    def _evidence(self) -> Iterable[Metric]:
        from gateway.evidence.checkpoints import evidence_state

        try:
            st = evidence_state(self.journal)
        except Exception:  # out of reach: zl_journal_up already says so
            return
        values = [
            ("zl_evidence_batches", "Batches sealed into the evidence chain", st.batches),
            ("zl_evidence_unsealed_events", "Events not yet sealed into the chain", st.unsealed_events),
            ("zl_evidence_unsealed_age_seconds", "Age of the oldest event not yet sealed (is the reconciler "
             "running?)", st.oldest_unsealed_age),
            ("zl_evidence_checkpoints_waiting", "Checkpoints still waiting for the TSA's timestamp",
             st.waiting_timestamps),
            ("zl_evidence_timestamp_lag_seconds", "How long the oldest batch not under a timestamped checkpoint "
             "has waited; 0 when none waits", st.timestamp_lag),
        ]
        for name, doc, value in values:
            g = GaugeMetricFamily(name, doc)
            g.add_metric([], value)
            yield g
        try:
            from gateway.evidence.retention import prune_totals

            pruned = prune_totals(self.journal)
        except Exception:
            pruned = None
        if pruned is not None:
            for name, doc, value in (
                ("zl_retention_pruned_messages", "Messages retention has removed (archived first), in all",
                 pruned["messages"]),
                ("zl_retention_pruned_envelopes", "Envelopes retention has removed, in all", pruned["envelopes"]),
                ("zl_legal_holds", "Legal holds in force", pruned["holds"]),
                ("zl_retention_last_run_timestamp_seconds", "When the pruner last finished (Unix time; 0: never)",
                 pruned["last_run"].timestamp() if pruned["last_run"] else 0),
            ):
                g = GaugeMetricFamily(name, doc)
                g.add_metric([], value)
                yield g
        if self.timestamp_alert_after is not None:
            overdue = GaugeMetricFamily("zl_evidence_timestamp_overdue", "1 when the chain has gone longer than "
                                        "evidence.timestamp_alert_after_seconds without a TSA timestamp")
            overdue.add_metric([], 1 if st.timestamp_lag > self.timestamp_alert_after else 0)
            yield overdue


def certificate_labels(subject: str, serial: str, details: bool) -> tuple[str, str]:
    """A certificate's labels on /metrics: its subject and serial, or a pseudonymous id that tells them apart."""
    if details:
        return subject, serial
    return "hidden", hashlib.sha256(f"{subject}|{serial}".encode()).hexdigest()[:12]


def render(state: GatewayStateCollector, accept: str = "") -> tuple[bytes, str]:
    """The exposition and its content type: OpenMetrics if ``accept`` asks for it, else the text format."""
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        MultiProcessCollector(registry)
    else:
        for collector in list(DEFAULT_REGISTRY._collector_to_names):  # the process's own metrics
            registry.register(collector)
    registry.register(state)
    if "application/openmetrics-text" in accept:
        return openmetrics.generate_latest(registry), openmetrics.CONTENT_TYPE_LATEST
    return generate_latest(registry), "text/plain; version=0.0.4; charset=utf-8"
