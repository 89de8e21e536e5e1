"""A RabbitMQ consumer with manual acks, bounded prefetch and a thread pool.

The handler runs on a pool thread; its outcome is turned into an ack (or a requeue)
on the connection's own thread through ``add_callback_threadsafe``. A handler that
raises gets its message requeued; the queues' delivery limit dead-letters a message
that keeps failing, so one poison message cannot block a queue forever.
"""
from __future__ import annotations

import functools
import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

import pika
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

from routing.broker import BROKER_ERRORS, connect

log = logging.getLogger(__name__)

Handler = Callable[[bytes, pika.BasicProperties], None]


class Consumer:
    def __init__(
        self,
        amqp_url: str,
        name: str,
        queues: list[str],
        handler: Handler,
        prefetch: int,
        concurrency: int,
        on_connect: Callable[[BlockingChannel], None] | None = None,
    ) -> None:
        self.amqp_url = amqp_url
        self.name = name
        self.queues = queues
        self.handler = handler
        self.prefetch = prefetch
        self.on_connect = on_connect
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix=name)
        self._stop = threading.Event()
        self._conn: BlockingConnection | None = None

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        """Consume until ``stop()``; reconnects with backoff when the broker goes away."""
        backoff = 0.5
        while not self._stop.is_set():
            try:
                self._consume()
                backoff = 0.5
            except BROKER_ERRORS as exc:
                log.warning("%s: broker connection lost (%s); reconnecting in %.1fs", self.name, type(exc).__name__, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
        self._pool.shutdown(wait=True)
        if self._conn is not None and self._conn.is_open:
            try:
                self._conn.process_data_events(0)
                self._conn.close()
            except BROKER_ERRORS:
                pass

    def _consume(self) -> None:
        self._conn = conn = connect(self.amqp_url, self.name)
        ch = conn.channel()
        if self.on_connect:
            self.on_connect(ch)
        ch.basic_qos(prefetch_count=self.prefetch)
        for q in self.queues:
            ch.basic_consume(q, self._on_message)
        log.info("%s consuming %s", self.name, ", ".join(self.queues))
        while not self._stop.is_set():
            conn.process_data_events(time_limit=0.5)
        try:
            for tag in list(ch.consumer_tags):
                ch.basic_cancel(tag)
        except BROKER_ERRORS:
            pass

    def _on_message(self, ch: BlockingChannel, method: pika.spec.Basic.Deliver,
                    props: pika.BasicProperties, body: bytes) -> None:
        fut = self._pool.submit(self.handler, body, props)
        fut.add_done_callback(functools.partial(self._settle, ch, method.delivery_tag))

    def _settle(self, ch: BlockingChannel, tag: int, fut: Future[None]) -> None:
        exc = fut.exception()
        if exc is not None:
            log.error("%s: handler failed, message requeued: %r", self.name, exc, exc_info=exc)

        def settle() -> None:
            if not ch.is_open:
                return  # the broker will redeliver it on the new connection
            if exc is None:
                ch.basic_ack(tag)
            else:
                ch.basic_nack(tag, requeue=True)

        conn = ch.connection
        try:
            conn.add_callback_threadsafe(settle)
        except BROKER_ERRORS:
            pass
