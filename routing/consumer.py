"""A RabbitMQ consumer with manual acks, bounded prefetch and a thread pool.

The handler runs on a pool thread; its outcome is turned into an ack (or a requeue)
on the connection's own thread through ``add_callback_threadsafe``. A clean stop lets the
pool finish and sends every ack it owes before it closes the connection; an ack left
behind hands the message out again, and the router would route it a second time.

What a failing handler does to its message depends on why it failed:

* the journal is out of reach: the thread holds the message unacked and waits for the
  journal (``JournalGate``), then runs the handler again; RabbitMQ counts nothing, so an
  outage of any length never uses up the queue's delivery limit;
* the worker is stopping: the message is left unacked, and the broker hands it out again;
* anything else (a bug, a message the handler cannot digest): the failure is written to
  the message's trail, and the message is requeued after a short pause that grows with
  its delivery count. After ``POISON_DELIVERY_LIMIT`` deliveries RabbitMQ dead-letters it
  to the poison queue, where the reconciler records it DEAD in the journal
  (``routing.reconciler``), so it shows in the trail and ``replay`` finds it.
"""
from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import pika
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

from gateway.journal import Journal, unavailable
from gateway.masking import mask_text
from monitoring import metrics
from monitoring.logs import message_context
from routing.broker import BROKER_ERRORS, BrokerAddress, connect
from routing.journal_gate import JournalGate, WorkerStopping

log = logging.getLogger(__name__)

Handler = Callable[[bytes, pika.BasicProperties], None]
#: Told of a handler failure that is not the journal's: (message id, the error, its delivery count).
FailureNote = Callable[[str, BaseException, int], None]


def failure_in_trail(journal: Journal, actor: str) -> FailureNote:
    """Note each handler failure in the message's trail, so the reconciler can name the last one."""

    def note(message_id: str, exc: BaseException, count: int) -> None:
        journal.record(message_id, "HANDLER_FAILED", actor,
                       {"error": mask_text(f"{type(exc).__name__}: {exc}")[:500], "delivery": count + 1})

    return note


def delivery_count(props: pika.BasicProperties) -> int:
    """How many times RabbitMQ handed this message out before (quorum queues count it in a header)."""
    return int((props.headers or {}).get("x-delivery-count", 0))


class Consumer:
    def __init__(
        self,
        broker: BrokerAddress,
        name: str,
        queues: list[str],
        handler: Handler,
        prefetch: int,
        concurrency: int,
        on_connect: Callable[[BlockingChannel], None] | None = None,
        gate: JournalGate | None = None,
        on_failure: FailureNote | None = None,
    ) -> None:
        self.broker = broker
        self.name = name
        self.queues = queues
        self.handler = handler
        self.prefetch = prefetch
        self.on_connect = on_connect
        self.gate = gate
        self.on_failure = on_failure
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix=name)
        self._stop = gate.stopping if gate is not None else threading.Event()
        self._conn: BlockingConnection | None = None
        #: Acks (and requeues) handed to the connection's thread and not yet sent: a clean stop sends them
        #: all before it closes, or the broker hands those messages out again (a second routed copy).
        self._unsent = 0
        self._unsent_lock = threading.Lock()

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
                log.warning("%s: broker connection lost (%s); reconnecting in %.1fs", self.name, type(exc).__name__,
                            backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
        self._pool.shutdown(wait=True)
        if self._conn is not None and self._conn.is_open:
            try:
                # One pass of the I/O loop may leave callbacks added from other threads for the next.
                deadline = time.monotonic() + 5.0
                self._conn.process_data_events(0)
                while self._unsent and time.monotonic() < deadline:
                    self._conn.process_data_events(time_limit=0.05)
                self._conn.close()
            except BROKER_ERRORS:
                pass

    def _consume(self) -> None:
        self._conn = conn = connect(self.broker, self.name)
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
        fut = self._pool.submit(self._work, body, props)
        fut.add_done_callback(functools.partial(self._settle, ch, method.delivery_tag))

    def _work(self, body: bytes, props: pika.BasicProperties) -> bool | None:
        """Run the handler; True: ack, False: requeue, None: leave unacked (the worker is stopping)."""
        with message_context(props.message_id, (props.headers or {}).get("x-zl-route")):
            return self._work_on(body, props)

    def _work_on(self, body: bytes, props: pika.BasicProperties) -> bool | None:
        while True:
            try:
                self.handler(body, props)
                return True
            except WorkerStopping:
                return None
            except Exception as exc:
                if self.gate is not None and unavailable(exc):
                    try:
                        self.gate.wait(exc)
                    except WorkerStopping:
                        return None
                    continue  # the handler is an idempotent consumer: run it again from the start
                return self._failed(props, exc)

    def _failed(self, props: pika.BasicProperties, exc: BaseException) -> bool | None:
        count = delivery_count(props)
        metrics.HANDLER_FAILURES.labels(self.name).inc()
        log.error("%s: handling %s failed (delivery %d): %s", self.name, props.message_id, count + 1,
                  mask_text(repr(exc))[:500], exc_info=exc)
        if self.on_failure is not None:
            try:
                self.on_failure(str(props.message_id), exc, count)
            except Exception:
                log.warning("%s: could not note the failure of %s in its trail", self.name, props.message_id)
        # A pause before the requeue, so a message that fails every time does not spin.
        if self._stop.wait(min(0.1 * 2 ** count, 2.0)):
            return None
        return False

    def _settle(self, ch: BlockingChannel, tag: int, fut: Future[bool | None]) -> None:
        verdict = fut.result()
        if verdict is None:
            return  # stopping: the broker hands it out again once this connection closes

        def settle() -> None:
            try:
                if not ch.is_open:
                    return  # the broker will redeliver it on the new connection
                if verdict:
                    ch.basic_ack(tag)
                else:
                    ch.basic_nack(tag, requeue=True)
            finally:
                with self._unsent_lock:
                    self._unsent -= 1

        conn = ch.connection
        with self._unsent_lock:
            self._unsent += 1
        try:
            conn.add_callback_threadsafe(settle)
        except BROKER_ERRORS:
            with self._unsent_lock:
                self._unsent -= 1
