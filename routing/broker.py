"""Connections to RabbitMQ with pika, and confirmed, persistent publishing.

Every connection the gateway opens is built here (``node_parameters``), to one node or
to a cluster: the nodes are tried in turn from a random one, so a process's connections
spread over the cluster and one that finds its node gone opens the next (pika tries a
sequence of parameters in order). Quorum queues live on several nodes, so whichever node
a connection lands on reaches every queue.

pika connections are not thread-safe, so each thread that publishes owns its own
connection (``ThreadPublisher``); consumers ack through ``add_callback_threadsafe``.
"""
from __future__ import annotations

import logging
import random
import threading
from collections.abc import Sequence
from typing import Any

import pika
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

log = logging.getLogger(__name__)

#: What a lost or refused broker connection looks like in pika.
BROKER_ERRORS: tuple[type[BaseException], ...] = (
    pika.exceptions.AMQPError,
    OSError,
)

#: One node's URL, or the URLs of a cluster's nodes (``BrokerSettings.nodes``).
BrokerAddress = str | Sequence[str]


def node_urls(address: BrokerAddress) -> list[str]:
    """The nodes in the order to try them this time: all of them, from a random one on.

    A string may name several nodes separated by commas, as ``ZL_AMQP_URL`` does."""
    urls = [u.strip() for u in address.split(",") if u.strip()] if isinstance(address, str) else list(address)
    if not urls:
        raise ValueError("no RabbitMQ node given")
    start = random.randrange(len(urls))
    return urls[start:] + urls[:start]


def node_parameters(address: BrokerAddress, name: str, heartbeat: int = 30) -> list[pika.URLParameters]:
    """Connection parameters for each node, in the order to try them (``node_urls``)."""
    params = []
    for url in node_urls(address):
        p = pika.URLParameters(url)
        p.heartbeat = heartbeat
        p.blocked_connection_timeout = 60
        p.socket_timeout = 5
        p.connection_attempts = 1
        p.client_properties = {"connection_name": name}
        params.append(p)
    return params


def connect(address: BrokerAddress, name: str, heartbeat: int = 30) -> BlockingConnection:
    """A connection to the first node that answers, trying each once."""
    return pika.BlockingConnection(node_parameters(address, name, heartbeat))


def properties(message_id: str, headers: dict[str, Any], content_type: str = "application/xml") -> pika.BasicProperties:
    return pika.BasicProperties(
        delivery_mode=pika.DeliveryMode.Persistent,
        message_id=message_id,
        content_type=content_type,
        headers=headers,
    )


class ThreadPublisher:
    """A confirmed publisher per thread, reconnecting after a broker outage."""

    def __init__(self, address: BrokerAddress, name: str) -> None:
        self.address = address
        self.name = name
        self._local = threading.local()

    def channel(self) -> BlockingChannel:
        ch: BlockingChannel | None = getattr(self._local, "channel", None)
        if ch is None or ch.is_closed or ch.connection.is_closed:
            conn = connect(self.address, f"{self.name}-{threading.get_ident()}", heartbeat=0)
            ch = conn.channel()
            ch.confirm_delivery()
            self._local.channel = ch
        return ch

    def publish(self, exchange: str, routing_key: str, body: bytes, props: pika.BasicProperties) -> None:
        """Publish and wait for the broker's confirm; raises if not confirmed or unroutable."""
        try:
            self.channel().basic_publish(exchange, routing_key, body, props, mandatory=True)
        except BROKER_ERRORS:
            self.reset()
            raise

    def reset(self) -> None:
        ch = getattr(self._local, "channel", None)
        self._local.channel = None
        if ch is not None:
            try:
                ch.connection.close()
            except BROKER_ERRORS:
                pass

    def close(self) -> None:
        self.reset()
