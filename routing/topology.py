"""The durable RabbitMQ topology the gateway declares, and the names in it.

    {p}.ingress ──"route"──▶ {p}.route ──router──▶ {p}.deliver ──<recipient>──▶ {p}.deliver.<recipient>
    {p}.retry.<n>s ──(fanout)──▶ {p}.retry.<n>s  (TTL n seconds, dead-letters back to {p}.deliver)
    {p}.dead  ──"dead"──▶ {p}.dead        (the dead letter channel: what the gateway gave up on)
    {p}.dead  ──"poison"──▶ {p}.poison    (what RabbitMQ dead-lettered by itself: the delivery limit)

All queues are quorum queues: replicated, durable, and dead-lettering at-least-once,
so a retry parked for an hour survives a broker restart. On a cluster each has its
replicas on ``quorum_replicas`` nodes (unset: on every node of the cluster when it is
declared), and keeps working while a majority of them is up. Retry delays are rounded up
to the next bucket because a queue-level TTL is the only expiry RabbitMQ applies in order.
A retry is published to its bucket's fanout exchange with the recipient as routing key;
on expiry the broker dead-letters it with that same key, which is what {p}.deliver
routes on, so each bucket needs its own exchange rather than one keyed by bucket.

A message that RabbitMQ dead-letters by itself (a handler failed on it
``POISON_DELIVERY_LIMIT`` times) lands in {p}.poison, not in the dead letter channel:
the journal does not know of it yet. The reconciler records it DEAD with the reason and
only then moves it into {p}.dead, so the queue and the journal never disagree for long.
"""
from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pika
from pika.adapters.blocking_connection import BlockingChannel

from gateway.config import BrokerSettings
from zdravlink.errors import ConfigurationError

#: Delayed-retry buckets in seconds. A delay is rounded up to the next bucket.
RETRY_BUCKETS: tuple[int, ...] = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600)
#: A message redelivered this many times (a worker crashing on it) is dead-lettered by the broker.
POISON_DELIVERY_LIMIT = 20


class TopologyMismatch(ConfigurationError):
    """A queue exists with other arguments than this version declares (an older gateway made it)."""


@dataclass(frozen=True)
class Topology:
    prefix: str
    #: Redeliveries of one message (so limit + 1 deliveries) before RabbitMQ dead-letters it to the poison queue.
    delivery_limit: int = POISON_DELIVERY_LIMIT
    #: Replicas of each queue (``x-quorum-initial-group-size``); None: RabbitMQ's default, every node.
    quorum_replicas: int | None = None

    @property
    def ingress_exchange(self) -> str:
        return f"{self.prefix}.ingress"

    @property
    def route_queue(self) -> str:
        return f"{self.prefix}.route"

    @property
    def deliver_exchange(self) -> str:
        return f"{self.prefix}.deliver"

    def deliver_queue(self, recipient: str) -> str:
        return f"{self.prefix}.deliver.{recipient}"

    def retry_exchange(self, bucket: int) -> str:
        return f"{self.prefix}.retry.{bucket}s"

    def retry_queue(self, bucket: int) -> str:
        return f"{self.prefix}.retry.{bucket}s"

    @property
    def dead_exchange(self) -> str:
        return f"{self.prefix}.dead"

    @property
    def dead_queue(self) -> str:
        return f"{self.prefix}.dead"

    @property
    def poison_queue(self) -> str:
        return f"{self.prefix}.poison"

    @staticmethod
    def retry_bucket(delay: float) -> int:
        i = bisect.bisect_left(RETRY_BUCKETS, delay)
        return RETRY_BUCKETS[min(i, len(RETRY_BUCKETS) - 1)]

    def all_queues(self, recipients: Iterable[str]) -> list[str]:
        return [
            self.route_queue,
            *(self.deliver_queue(r) for r in sorted(set(recipients))),
            *(self.retry_queue(b) for b in RETRY_BUCKETS),
            self.dead_queue,
            self.poison_queue,
        ]

    def all_exchanges(self) -> list[str]:
        return [self.ingress_exchange, self.deliver_exchange, *(self.retry_exchange(b) for b in RETRY_BUCKETS),
                self.dead_exchange]

    def declare(self, ch: BlockingChannel, recipients: Iterable[str]) -> None:
        """Idempotently declare everything; safe to call from every process at start."""
        try:
            self._declare(ch, recipients)
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code != 406:
                raise
            raise TopologyMismatch(
                f"RabbitMQ refused the topology: {exc.reply_text}. A queue of prefix {self.prefix!r} was declared "
                "by an earlier version or with other broker settings (delivery_limit, quorum_replicas); move its "
                "messages off and delete it "
                "(rabbitmqctl delete_queue NAME), or start with another broker.prefix") from None

    @classmethod
    def of(cls, broker: BrokerSettings) -> Topology:
        return cls(broker.prefix, broker.delivery_limit, broker.quorum_replicas)

    def _quorum(self) -> dict[str, Any]:
        if self.quorum_replicas is None:
            return {"x-queue-type": "quorum"}
        return {"x-queue-type": "quorum", "x-quorum-initial-group-size": self.quorum_replicas}

    def _declare(self, ch: BlockingChannel, recipients: Iterable[str]) -> None:
        quorum = self._quorum()
        poison_dlx = {
            **quorum,
            "x-delivery-limit": self.delivery_limit,
            "x-dead-letter-exchange": self.dead_exchange,
            "x-dead-letter-routing-key": "poison",
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }
        for name in (self.ingress_exchange, self.deliver_exchange, self.dead_exchange):
            ch.exchange_declare(name, exchange_type="direct", durable=True)
        ch.queue_declare(self.dead_queue, durable=True, arguments=quorum)
        ch.queue_bind(self.dead_queue, self.dead_exchange, routing_key="dead")
        ch.queue_declare(self.poison_queue, durable=True, arguments=quorum)
        ch.queue_bind(self.poison_queue, self.dead_exchange, routing_key="poison")
        ch.queue_declare(self.route_queue, durable=True, arguments=poison_dlx)
        ch.queue_bind(self.route_queue, self.ingress_exchange, routing_key="route")
        for r in sorted(set(recipients)):
            ch.queue_declare(self.deliver_queue(r), durable=True, arguments=poison_dlx)
            ch.queue_bind(self.deliver_queue(r), self.deliver_exchange, routing_key=r)
        for b in RETRY_BUCKETS:
            ch.queue_declare(
                self.retry_queue(b),
                durable=True,
                arguments={
                    **quorum,
                    "x-message-ttl": b * 1000,
                    "x-dead-letter-exchange": self.deliver_exchange,
                    "x-dead-letter-strategy": "at-least-once",
                    "x-overflow": "reject-publish",
                },
            )
            ch.exchange_declare(self.retry_exchange(b), exchange_type="fanout", durable=True)
            ch.queue_bind(self.retry_queue(b), self.retry_exchange(b))
