"""Connections to RabbitMQ with pika, and confirmed, persistent publishing.

pika connections are not thread-safe, so each thread that publishes owns its own
connection (``ThreadPublisher``); consumers ack through ``add_callback_threadsafe``.
"""
from __future__ import annotations

import logging
import threading
from typing import Any

import pika
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

log = logging.getLogger(__name__)

#: What a lost or refused broker connection looks like in pika.
BROKER_ERRORS: tuple[type[BaseException], ...] = (
    pika.exceptions.AMQPError,
    OSError,
)


def connect(url: str, name: str, heartbeat: int = 30) -> BlockingConnection:
    params = pika.URLParameters(url)
    params.heartbeat = heartbeat
    params.blocked_connection_timeout = 60
    params.socket_timeout = 5
    params.connection_attempts = 1
    params.client_properties = {"connection_name": name}
    return pika.BlockingConnection(params)


def properties(message_id: str, headers: dict[str, Any], content_type: str = "application/xml") -> pika.BasicProperties:
    return pika.BasicProperties(
        delivery_mode=pika.DeliveryMode.Persistent,
        message_id=message_id,
        content_type=content_type,
        headers=headers,
    )


class ThreadPublisher:
    """A confirmed publisher per thread, reconnecting after a broker outage."""

    def __init__(self, url: str, name: str) -> None:
        self.url = url
        self.name = name
        self._local = threading.local()

    def channel(self) -> BlockingChannel:
        ch: BlockingChannel | None = getattr(self._local, "channel", None)
        if ch is None or ch.is_closed or ch.connection.is_closed:
            conn = connect(self.url, f"{self.name}-{threading.get_ident()}", heartbeat=0)
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
