"""Publish a whole batch and collect its confirms together (streaming publisher confirms).

pika's ``BlockingChannel`` in confirm mode waits one round trip per message; in a
busy process each of those waits also queues for the GIL, which measured here cut a
relay to ~100 messages/s. This publisher uses pika's asynchronous ``SelectConnection``
instead: it writes every message of the batch, then runs the I/O loop until the
broker has acked (usually with ``multiple=True``), nacked or returned each one. The
caller learns exactly which messages the broker took responsibility for; the rest
stay in the outbox and go out again with the next batch.

A batch the broker nacked any of is followed by a new connection (from a random node of
a cluster): a quorum queue nacks what it cannot take. In the scale-out fault test a relay
that had reconnected just as the node leading the queue died was nacked on every batch of
its new channel for as long as it lived (12 s), while the other node's relay published the
same messages on its own channel. That was not reproduced outside the test; with a new
connection after each nacked batch, the same test's relay was nacked for under a second
(7 batches) and then published. It costs nothing when nacks are rare (nothing here sets
a queue length limit).

Not thread-safe: one instance belongs to one thread (the relay's).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, NamedTuple

import pika
from pika.adapters.select_connection import SelectConnection
from pika.channel import Channel
from pika.frame import Method

from routing.broker import BrokerAddress, node_parameters, properties
from zdravlink.errors import ExchangeError

log = logging.getLogger(__name__)


class Outgoing(NamedTuple):
    message_id: str
    routing_key: str
    body: bytes
    headers: dict[str, Any] = {}


class BrokerUnavailable(ExchangeError, ConnectionError):
    """The connection could not be opened or was lost before anything was confirmed."""


class PipelinedPublisher:
    def __init__(self, address: BrokerAddress, name: str, confirm_timeout: float = 30.0) -> None:
        self.address = address
        self.name = name
        self.confirm_timeout = confirm_timeout
        self._conn: SelectConnection | None = None
        self._channel: Channel | None = None
        self._error: BaseException | None = None
        self._next_tag = 0
        self._pending: dict[int, str] = {}
        self._confirmed: list[str] = []
        self._refused: set[str] = set()
        self._nacked = 0
        #: Connections opened so far (a new one after a lost connection, a timeout or a nack).
        self.connections = 0

    # ---- connection -------------------------------------------------------

    def _open(self) -> None:
        """A confirmed channel on the first node that gives one (a cluster's nodes in turn)."""
        # heartbeat 0: the loop only runs during a batch; idle gaps must not kill the connection.
        failures = []
        for params in node_parameters(self.address, self.name, heartbeat=0):
            try:
                self._open_on(params)
                return
            except BrokerUnavailable as exc:
                failures.append(f"{params.host}:{params.port}: {exc}")
        raise BrokerUnavailable("; ".join(failures))

    def _open_on(self, params: pika.URLParameters) -> None:
        self._error = None
        self._next_tag = 0

        def on_open(conn: SelectConnection) -> None:
            conn.channel(on_open_callback=on_channel)

        def on_channel(ch: Channel) -> None:
            ch.add_on_return_callback(self._on_return)
            ch.add_on_close_callback(self._on_channel_closed)
            ch.confirm_delivery(self._on_confirm, callback=lambda _frame: self._ready(ch))

        def on_open_error(conn: SelectConnection, err: BaseException) -> None:
            self._error = err if isinstance(err, BaseException) else BrokerUnavailable(str(err))
            conn.ioloop.stop()

        self.connections += 1
        self._conn = SelectConnection(params, on_open_callback=on_open,
                                      on_open_error_callback=on_open_error, on_close_callback=self._on_conn_closed)
        self._conn.ioloop.start()
        if self._channel is None:
            conn, self._conn = self._conn, None
            if conn is not None and not conn.is_closed:
                conn.close()
            raise BrokerUnavailable(f"cannot open a confirmed channel: {self._error!r}")

    def _ready(self, ch: Channel) -> None:
        self._channel = ch
        ch.connection.ioloop.stop()

    def _on_conn_closed(self, conn: SelectConnection, reason: BaseException) -> None:
        self._error = self._error or reason
        self._channel = None
        conn.ioloop.stop()

    def _on_channel_closed(self, ch: Channel, reason: BaseException) -> None:
        self._error = self._error or reason
        self._channel = None
        if ch.connection.is_open:
            ch.connection.close()
        else:
            ch.connection.ioloop.stop()

    # ---- confirms ---------------------------------------------------------

    def _on_confirm(self, frame: Method) -> None:
        method = frame.method
        tags = ([t for t in self._pending if t <= method.delivery_tag] if method.multiple
                else [method.delivery_tag])
        acked = isinstance(method, pika.spec.Basic.Ack)
        for tag in tags:
            message_id = self._pending.pop(tag, None)
            if message_id is None:
                continue
            if acked and message_id not in self._refused:
                self._confirmed.append(message_id)
            elif not acked:
                self._nacked += 1
                log.warning("broker nacked message %s; it stays in the outbox", message_id)
        if not self._pending and self._conn is not None:
            self._conn.ioloop.stop()

    def _on_return(self, _ch: Channel, method: pika.spec.Basic.Return, props: pika.BasicProperties,
                   _body: bytes) -> None:
        # An unroutable message is acked after its return: remember it so the ack does not count.
        log.error("message %s returned by the broker: %s %s", props.message_id, method.reply_code, method.reply_text)
        self._refused.add(props.message_id)

    # ---- the batch ----------------------------------------------------------

    def publish_batch(self, exchange: str, items: Sequence[Outgoing]) -> list[str]:
        """Publish persistent messages; return the ids the broker confirmed, in confirm order.

        Raises BrokerUnavailable only when nothing at all was confirmed because the broker
        could not be reached; a partial batch returns what was confirmed.
        """
        if not items:
            return []
        if self._channel is None or self._conn is None or not self._conn.is_open:
            self._open()
        assert self._channel is not None and self._conn is not None
        self._confirmed, self._refused, self._pending, self._nacked = [], set(), {}, 0
        for item in items:
            self._next_tag += 1
            self._pending[self._next_tag] = item.message_id
            self._channel.basic_publish(exchange, item.routing_key, item.body,
                                        properties(item.message_id, item.headers), mandatory=True)
        timer = self._conn.ioloop.call_later(self.confirm_timeout, self._timed_out)
        self._conn.ioloop.start()
        if self._conn is not None:
            self._conn.ioloop.remove_timeout(timer)
        if self._pending:
            # Lost connection or timeout: what is unconfirmed is retried with a fresh connection.
            log.warning("%d of %d messages unconfirmed (%r); reconnecting", len(self._pending), len(items),
                        self._error)
            self._pending = {}
            self.close()
            if not self._confirmed:
                raise BrokerUnavailable(f"no confirms: {self._error!r}")
        elif self._nacked:
            log.warning("%d of %d messages nacked; the next batch goes on a new connection", self._nacked, len(items))
            self.close()
        return list(self._confirmed)

    def _timed_out(self) -> None:
        self._error = self._error or TimeoutError(f"no confirm within {self.confirm_timeout}s")
        if self._conn is not None:
            self._conn.ioloop.stop()

    def close(self) -> None:
        conn, self._conn, self._channel = self._conn, None, None
        if conn is not None and conn.is_open:
            try:
                conn.close()
                conn.ioloop.start()  # until on_close stops it
            except Exception:
                pass
