"""The reconciler: what RabbitMQ dead-lettered by itself becomes DEAD in the journal too.

A quorum queue dead-letters a message after ``POISON_DELIVERY_LIMIT`` deliveries (a
handler failed on it every time) into ``{p}.poison``. Until the journal hears of it the
message would stay ROUTED for ever, and ``replay`` would not find it. The reconciler
takes each one, records DEAD with the reason (where RabbitMQ took it from, how many
deliveries, and the last failure the workers noted in its trail) and moves it into the
dead letter channel, where every other dead message is. A copy that belongs to an
earlier round, or whose message has moved on, is only dropped.
"""
from __future__ import annotations

import logging
from typing import Any

import pika

from gateway.config import GatewayConfig
from gateway.journal import Journal, MessageRecord, Status
from monitoring import metrics
from routing.deadletter import DeadLetterChannel

log = logging.getLogger(__name__)

#: Statuses in which a message's copy is the one that matters: a dead-lettered copy ends it.
RECONCILABLE = frozenset(s.value for s in (Status.ACCEPTED, Status.PUBLISHED, Status.ROUTED, Status.RETRYING))


def broker_death(headers: dict[str, Any]) -> tuple[str, str]:
    """Why and from where RabbitMQ dead-lettered a message (its x-death headers)."""
    deaths = headers.get("x-death") or []
    first = deaths[0] if deaths and isinstance(deaths[0], dict) else {}
    reason = headers.get("x-first-death-reason") or first.get("reason") or "unknown"
    queue = headers.get("x-first-death-queue") or first.get("queue") or "unknown"
    return (reason.decode() if isinstance(reason, bytes) else str(reason),
            queue.decode() if isinstance(queue, bytes) else str(queue))


class Reconciler:
    def __init__(self, config: GatewayConfig, journal: Journal, dead: DeadLetterChannel) -> None:
        self.journal = journal
        self.dead = dead
        self._routes = {r.name: r for r in config.routes}

    def handle(self, body: bytes, props: pika.BasicProperties) -> None:
        headers: dict[str, Any] = props.headers or {}
        rec = self.journal.get(str(props.message_id))
        if rec is None:
            log.warning("poison queue: %s is not in the journal; dropped", props.message_id)
            return
        generation = int(headers.get("x-zl-generation", rec.generation))
        if rec.status not in RECONCILABLE or generation != rec.generation:
            return  # the message moved on, or this copy is from an earlier round
        reason, queue = broker_death(headers)
        last, deliveries = self._last_failure(rec)
        route = self._routes.get(str(headers.get("x-zl-route", rec.route or "")))
        self.dead.send(body, rec, route=route,
                       reason=f"RabbitMQ dead-lettered it from {queue} ({reason}) after {deliveries} deliveries; "
                              f"last failure: {last}",
                       channel=None, attempts=rec.attempts)
        metrics.RECONCILED.labels(reason).inc()
        log.warning("reconciled %s: dead-lettered by RabbitMQ from %s (%s), now DEAD in the journal",
                    rec.message_id, queue, reason)

    def _last_failure(self, rec: MessageRecord) -> tuple[str, str]:
        """The last failure the workers noted in the trail, and at which delivery; the queue keeps neither."""
        for event in reversed(self.journal.trail(rec.message_id)):
            if event.kind == "HANDLER_FAILED":
                return str(event.detail.get("error", "unknown")), str(event.detail.get("delivery", "?"))
        return rec.last_error or "none noted", "?"
