"""A RabbitMQ consumer with manual acks, bounded prefetch and a thread pool.

The handler runs on a pool thread; its outcome is turned into an ack (or a requeue)
on the connection's own thread through ``add_callback_threadsafe``. A clean stop lets the
pool finish and sends every ack it owes before it closes the connection; an ack left
behind hands the message out again, and the router would route it a second time.

Acks go as few frames as they can (``Settlements``): the lowest delivery tags that are
all done are acked with one ``multiple`` ack. Each ack frame becomes one command to a
quorum queue's Raft leader, and once 32 are unapplied the channel's queue client holds
further acks back until the leader catches up; a channel closed meanwhile drops them and
the queue hands those messages out again. A clean stop that acked a router's whole
prefetch one by one under load lost a few dozen acks that way (a CI run: 331 copies
routed for 300 messages).

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
import itertools
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


class Settlements:
    """The open deliveries of one channel and their outcomes, touched on the connection's thread alone.

    A run of done deliveries at the lowest open tags goes as one ``multiple`` ack; a done
    delivery behind an open one is acked on its own rather than waiting (a slow delivery
    must not hold its neighbours' acks and fill the prefetch window). An open delivery
    whose worker stopped stays unacked, and no ``multiple`` ack ever covers it.
    """

    def __init__(self, ch: BlockingChannel) -> None:
        self.ch = ch
        self._open: dict[int, bool | None] = {}  # delivery tag -> ack, requeue, or not decided; in tag order
        self.flush_due = False

    def delivered(self, tag: int) -> None:
        self._open[tag] = None

    def decide(self, tag: int, ack: bool) -> None:
        if tag in self._open:
            self._open[tag] = ack

    def flush(self) -> None:
        """Send what is decided: each run of acks at the lowest open tags as one frame, the rest one by one."""
        self.flush_due = False
        if not self.ch.is_open:
            return  # the broker hands these out again on the new connection
        while self._open:
            head, ack = next(iter(self._open.items()))
            if ack is None:
                break
            if not ack:
                del self._open[head]
                self.ch.basic_nack(head, requeue=True)
                continue
            run = list(itertools.takewhile(lambda t: self._open[t] is True, self._open))
            for tag in run:
                del self._open[tag]
            self.ch.basic_ack(run[-1], multiple=True)
        for tag, ack in [(t, a) for t, a in self._open.items() if a is not None]:  # behind an open one
            del self._open[tag]
            if ack:
                self.ch.basic_ack(tag)
            else:
                self.ch.basic_nack(tag, requeue=True)

    def release(self) -> None:
        """At a clean stop, once every worker is done: hand back what none will finish, then ack the rest.

        Decided as requeues, those no longer stand between the done ones, and the whole
        prefetch goes as a few frames rather than one ack each behind the first of them.
        """
        for tag, ack in self._open.items():
            if ack is None:
                self._open[tag] = False
        self.flush()


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
        self._settlements: Settlements | None = None  # the current channel's
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
                if self._settlements is not None:
                    self._settlements.release()
                self._conn.close()
            except BROKER_ERRORS:
                pass

    def _consume(self) -> None:
        self._conn = conn = connect(self.broker, self.name)
        ch = conn.channel()
        if self.on_connect:
            self.on_connect(ch)
        ch.basic_qos(prefetch_count=self.prefetch)
        self._settlements = Settlements(ch)
        on_message = functools.partial(self._on_message, self._settlements)
        for q in self.queues:
            ch.basic_consume(q, on_message)
        log.info("%s consuming %s", self.name, ", ".join(self.queues))
        while not self._stop.is_set():
            conn.process_data_events(time_limit=0.5)
        try:
            for tag in list(ch.consumer_tags):
                ch.basic_cancel(tag)
        except BROKER_ERRORS:
            pass

    def _on_message(self, settlements: Settlements, _ch: BlockingChannel, method: pika.spec.Basic.Deliver,
                    props: pika.BasicProperties, body: bytes) -> None:
        settlements.delivered(method.delivery_tag)
        fut = self._pool.submit(self._work, body, props)
        fut.add_done_callback(functools.partial(self._settle, settlements, method.delivery_tag))

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

    def _settle(self, settlements: Settlements, tag: int, fut: Future[bool | None]) -> None:
        verdict = fut.result()
        if verdict is None:
            return  # stopping: the broker hands it out again once this connection closes

        def decide() -> None:
            # Decisions queued together are flushed together: the flush is queued behind them.
            settlements.decide(tag, verdict)
            if not settlements.flush_due:
                settlements.flush_due = True
                self._on_connection_thread(settlements, settlements.flush)

        self._on_connection_thread(settlements, decide)

    def _on_connection_thread(self, settlements: Settlements, callback: Callable[[], None]) -> None:
        """Run ``callback`` on the thread of the settlements' connection; a clean stop waits for it."""

        def run() -> None:
            try:
                callback()
            finally:
                with self._unsent_lock:
                    self._unsent -= 1

        with self._unsent_lock:
            self._unsent += 1
        try:
            settlements.ch.connection.add_callback_threadsafe(run)
        except BROKER_ERRORS:  # that connection is gone: the broker hands its messages out again
            with self._unsent_lock:
                self._unsent -= 1
