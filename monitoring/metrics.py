"""Prometheus metrics, in base units and with bounded labels.

Labels are only route names, participant mnemonics, channel names and outcome or
error codes, all of which come from configuration or a fixed list, never from
message content. With several worker processes, set ``PROMETHEUS_MULTIPROC_DIR``
before start (``zdravlink run`` does) and every process writes its own files that
``/metrics`` merges.
"""
from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

ACCEPTED = Counter("zl_messages_accepted_total", "Messages accepted and journalled", ["participant", "source"])
DUPLICATES = Counter("zl_messages_duplicate_total", "Repeats of an already accepted MessageID", ["participant"])
SECOND_COPIES = Counter("zl_second_copies_dropped_total",
                        "Second copies of a message's round dropped before they went on (a publish repeated "
                        "after its journal write failed, a redelivery after a lost ack)", ["stage"])
REJECTED = Counter("zl_messages_rejected_total", "Messages refused at intake", ["source", "code"])
MAPPING_GAPS = Counter("zl_mapping_gaps_total", "Lab messages refused for a gap in the mapping or the message",
                       ["lab", "code", "lab_code"])
ROUTED = Counter("zl_messages_routed_total", "Messages resolved to a route", ["route"])
DELIVERED = Counter("zl_messages_delivered_total", "Messages delivered", ["route", "participant", "channel"])
DELIVERY_FAILURES = Counter(
    "zl_delivery_failures_total", "Failed delivery attempts", ["participant", "channel", "outcome"]
)
RETRIES = Counter("zl_delivery_retries_total", "Retries scheduled", ["participant", "mode"])
FAILOVERS = Counter("zl_failovers_total", "Switches to the next channel of a route", ["route", "reason"])
DEAD = Counter("zl_messages_dead_total", "Messages sent to the dead letter channel", ["route", "participant"])
REPLAYED = Counter("zl_messages_replayed_total", "Dead messages replayed by an operator", ["participant"])
CIRCUIT_STATE = Gauge(
    "zl_circuit_state", "Circuit breaker state per endpoint: 0 closed, 1 half-open, 2 open",
    ["participant", "channel"], multiprocess_mode="livemax",
)
LATENCY = Histogram(
    "zl_accept_to_delivered_seconds", "Time from acceptance to confirmed delivery", ["route"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
)
REGISTRY_ANSWERS = Counter(
    "zl_registry_answers_total", "Answers sent to requesters for registry verification requests",
    ["registry", "origin", "verdict"],  # origin: registry, cache, timeout
)
REGISTRY_CACHE = Counter("zl_registry_cache_total", "Registry answer cache lookups", ["registry", "result"])
REGISTRY_LATE = Counter("zl_registry_late_answers_total", "Registry answers that came after the TIMEOUT answer",
                        ["registry"])
JOURNAL_WAITING = Gauge(
    "zl_journal_waiting_threads", "Worker threads holding a message until the journal answers again", ["role"],
    multiprocess_mode="livesum",
)
CIRCUIT_WAITS = Counter("zl_circuit_waits_total",
                        "Messages parked because every channel left had an open circuit breaker", ["participant"])
HANDLER_FAILURES = Counter("zl_handler_failures_total",
                           "Messages a worker failed to handle (requeued; RabbitMQ dead-letters repeated failures)",
                           ["role"])
RECONCILED = Counter("zl_reconciled_total",
                     "Messages RabbitMQ dead-lettered by itself, recorded DEAD in the journal by the reconciler",
                     ["reason"])
SWEPT = Counter("zl_swept_total", "Messages found stuck in a status and sent round again by the sweeper", ["status"])
MLLP_REFUSED = Counter("zl_mllp_refused_total",
                       "MLLP connections closed for a limit: too_many_connections, frame_too_large, frame_timeout, "
                       "memory_budget", ["reason"])
DUTY_HELD = Gauge("zl_duty_held",
                  "1 while this process holds the lease of a once-only duty (deadlines, acts, sweeper), 0 on standby",
                  ["duty"], multiprocess_mode="livesum")
RATE_LIMITED = Counter("zl_rate_limited_total",
                       "Messages over their sender's rate limit: refused with 429 (REST, SOAP) or slowed (hl7); "
                       "limit is messages or bytes", ["participant", "source", "limit"])
RATE_LIMIT_DELAY = Counter("zl_rate_limit_delay_seconds_total",
                           "Seconds MLLP ACKs were held back to slow a laboratory down to its rate limit",
                           ["participant"])
