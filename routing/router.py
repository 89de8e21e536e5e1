"""The router: resolves each published message to its route and hands it to delivery.

The route is resolved again here, against the configuration in force, rather than
trusted from acceptance: a route whose condition no longer matches is a dead letter
with a reason, not a silent delivery to the wrong place.
"""
from __future__ import annotations

import logging

import pika

from gateway.config import GatewayConfig
from gateway.envelope import Envelope
from gateway.journal import Journal, Status
from gateway.xmlsafe import parse_xml
from monitoring import metrics
from routing.broker import ThreadPublisher, properties
from routing.deadletter import DeadLetterChannel
from routing.topology import Topology

log = logging.getLogger(__name__)
ACTOR = "router"


class Router:
    def __init__(self, config: GatewayConfig, journal: Journal, topology: Topology, publisher: ThreadPublisher,
                 dead: DeadLetterChannel) -> None:
        self.config = config
        self.journal = journal
        self.topology = topology
        self.publisher = publisher
        self.dead = dead

    def handle(self, body: bytes, props: pika.BasicProperties) -> None:
        rec = self.journal.get(props.message_id)
        if rec is None or rec.status not in (Status.ACCEPTED.value, Status.PUBLISHED.value):
            # A repeat from the relay or a redelivery: the journal shows it has moved on.
            return
        env = Envelope.from_element(parse_xml(body))
        route = self.config.resolve_route(env.sender, env.message_type, env.recipient, env.payload)
        if route is None:
            self.dead.send(body, rec, route=None, reason="no route matches under the current configuration",
                           channel=None, attempts=0)
            return
        headers = {"x-zl-route": route.name, "x-zl-channel": 0, "x-zl-attempt": 1, "x-zl-generation": rec.replays}
        self.publisher.publish(self.topology.deliver_exchange, env.recipient, body, properties(rec.message_id, headers))
        self.journal.record(
            rec.message_id, "ROUTED", ACTOR, {"route": route.name, "channels": [c.name for c in route.channels]},
            status=Status.ROUTED, only_from=(Status.ACCEPTED, Status.PUBLISHED), route=route.name,
        )
        metrics.ROUTED.labels(route.name).inc()
