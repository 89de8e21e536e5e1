"""The dead letter channel: the original message plus why it could not be delivered.

The broker queue ``{prefix}.dead`` holds the original envelope with the reason in
its headers, for operators and tools that read queues; the journal marks the message
DEAD with the same reason, and ``zdravlink replay`` works from there.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime

from gateway.config import Route
from gateway.journal import Change, Journal, MessageRecord, Status
from gateway.journal.group_commit import Recorder
from gateway.masking import mask_text
from monitoring import metrics
from monitoring.logs import about
from routing.broker import ThreadPublisher, properties
from routing.topology import Topology

log = logging.getLogger(__name__)

#: Where a message can be when it is given up on; a message that moved on (delivered meanwhile) stays so.
IN_TRANSIT = (Status.ACCEPTED, Status.PUBLISHED, Status.ROUTED, Status.RETRYING)


class DeadLetterChannel:
    def __init__(self, journal: Journal, topology: Topology, publisher: ThreadPublisher, actor: str,
                 recorder: Recorder | None = None) -> None:
        self.journal = journal
        self.recorder: Recorder = recorder or journal
        self.topology = topology
        self.publisher = publisher
        self.actor = actor

    def send(self, body: bytes, rec: MessageRecord, *, route: Route | None, reason: str,
             channel: str | None, attempts: int, also: Sequence[Change] = ()) -> None:
        """Publish the original to the dead letter queue, then record DEAD; ``also``: changes of the
        message's trail that are written in the same commit, before DEAD (the router's stages)."""
        headers = {
            "x-zl-reason": reason[:1000],
            "x-zl-route": route.name if route else "",
            "x-zl-channel": channel or "",
            "x-zl-attempts": attempts,
            "x-zl-failed-at": datetime.now(UTC).isoformat(),
            "x-zl-generation": rec.generation,
        }
        self.publisher.publish(self.topology.dead_exchange, "dead", body, properties(rec.message_id, headers))
        self.recorder.record_many([*also, Change(
            rec.message_id, "DEAD", self.actor,
            {"reason": reason, "channel": channel, "attempts": attempts, "queue": self.topology.dead_queue},
            Status.DEAD, IN_TRANSIT, {"last_error": reason[:2000]})])
        metrics.DEAD.labels(route.name if route else "", rec.recipient).inc()
        log.warning("%s is DEAD after %d attempt(s): %s", rec.message_id, attempts, mask_text(reason)[:500],
                    extra=about(rec.message_id, route.name if route else rec.route, rec.recipient))
