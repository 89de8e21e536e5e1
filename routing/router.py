"""The router: resolves each published message to its route and hands it to delivery.

The route is resolved again here, against the configuration in force, rather than
trusted from acceptance: a route whose condition no longer matches is a dead letter
with a reason, not a silent delivery to the wrong place.

Messages are routed in groups (``GroupExecutor``): the messages the consumer's threads
hold at one moment are read from the journal in one query and published to the delivery
exchange as one streamed, confirmed batch; each is acked only after its confirm. Routing
one at a time cost a confirm round trip per message and made the router the slowest
stage of the spine.

The router writes nothing for a copy it routes: the route travels in the copy's headers,
and the delivery worker writes PUBLISHED and ROUTED with the copy's first outcome
(``routing_noted``). Until then the message shows PUBLISHED, and the sweeper looks for its
copy in the recipient's delivery queue as well as in the route queue.

So the journal cannot tell the router that a copy's round was routed already: a relay that
published and then could not write PUBLISHED (the journal cut) publishes again, and a copy
whose ack was lost with the connection comes back. Two copies in the recipient's queue
reach two workers at once, and the recipient gets the message twice (with one
Idempotency-Key). The router remembers the round of the last ``REMEMBERED`` messages it
routed (Camel's idempotent consumer, in memory) and drops a second copy of one of them.
A router started anew remembers nothing; then the worker's journal check drops the second
copy unless both are in flight at once.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence

import pika

from gateway.batching import GroupExecutor, ItemFailed
from gateway.config import GatewayConfig
from gateway.envelope import Envelope
from gateway.journal import Change, Journal, Stage, Status
from gateway.xmlsafe import parse_xml
from monitoring import metrics
from routing.broker import BrokerAddress
from routing.deadletter import DeadLetterChannel
from routing.delivery_progress import ROUTABLE, ROUTER, published_noted, routed_headers
from routing.pipelined import Outgoing, PipelinedPublisher
from routing.topology import Topology
from zdravlink.errors import ExchangeError

log = logging.getLogger(__name__)
_ROUTABLE_VALUES = frozenset(s.value for s in ROUTABLE)
#: Messages whose routed round the router remembers: at 300 routed a second, the last minute or so
#: (about 3 MB). A relay's second publish comes within seconds of the journal's return.
REMEMBERED = 20_000


class NotConfirmed(ExchangeError):
    """The broker did not confirm a routed copy; the original is requeued and routed again."""


class Router:
    def __init__(self, config: GatewayConfig, journal: Journal, topology: Topology, broker: BrokerAddress,
                 dead: DeadLetterChannel, max_batch: int = 64) -> None:
        self.config = config
        self.journal = journal
        self.topology = topology
        self.publisher = PipelinedPublisher(broker, "zl-router")
        self.dead = dead
        self._group: GroupExecutor[tuple[bytes, pika.BasicProperties], None] = GroupExecutor(
            self._route_batch, max_batch, name="router-batch")
        #: message id -> the generation routed (its copy confirmed); touched by the batch thread alone.
        self._routed: OrderedDict[str, int] = OrderedDict()

    def handle(self, body: bytes, props: pika.BasicProperties) -> None:
        self._group.submit((body, props))

    def close(self) -> None:
        self._group.close()
        self.publisher.close()

    def _route_batch(self, items: Sequence[tuple[bytes, pika.BasicProperties]]) -> list[ItemFailed | None]:
        records = self.journal.get_many([props.message_id for _, props in items])
        outgoing: list[Outgoing] = []
        routes: dict[str, str] = {}
        results: list[ItemFailed | None] = []
        late: list[Change] = []
        for body, props in items:
            results.append(None)
            rec = records.get(props.message_id)
            if rec is None or props.message_id in routes:
                continue
            if int((props.headers or {}).get("x-zl-generation", rec.generation)) != rec.generation:
                continue  # a copy from before a replay or a sweep; the current round has its own copy
            if self._routed.get(rec.message_id) == rec.generation:
                metrics.SECOND_COPIES.labels("router").inc()
                continue  # this round is in the recipient's queue already (see the module's docstring)
            if rec.status not in _ROUTABLE_VALUES:
                # A repeat, or a router that died after routing it and before writing it down: the
                # delivery worker has it. When a whole node dies, its relay may have died unwritten
                # too, and the relay never looks at a message past ACCEPTED again. The stage guards
                # write PUBLISHED and ROUTED only where this round's trail lacks them.
                late += [published_noted(rec.message_id, "by the router, on redelivery"),
                         Change(rec.message_id, "ROUTED", ROUTER, {"route": rec.route, "noted": "on redelivery"},
                                Status.ROUTED, ROUTABLE, even_if_late=True, stage=Stage.ROUTED)]
                continue
            try:
                env = Envelope.from_element(parse_xml(body))
                route = self.config.resolve_route(env.sender, env.message_type, env.recipient, env.payload)
                if route is None:
                    self.dead.send(body, rec, route=None, reason="no route matches under the current configuration",
                                   channel=None, attempts=0)
                    continue
            except Exception as exc:
                log.exception("cannot route %s", props.message_id)
                results[-1] = ItemFailed(exc)
                continue
            routes[rec.message_id] = route.name
            outgoing.append(Outgoing(rec.message_id, env.recipient, body, routed_headers(route, rec.generation)))
        confirmed = set(self.publisher.publish_batch(self.topology.deliver_exchange, outgoing))
        if late:
            self.journal.record_many(late)
        for mid in confirmed:
            metrics.ROUTED.labels(routes[mid]).inc()
            self._routed[mid] = records[mid].generation
            self._routed.move_to_end(mid)
        while len(self._routed) > REMEMBERED:
            self._routed.popitem(last=False)
        missing = [o.message_id for o in outgoing if o.message_id not in confirmed]
        if missing:
            raise NotConfirmed(f"{len(missing)} routed copies not confirmed by the broker")
        return results
