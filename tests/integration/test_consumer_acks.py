"""A consumer that finishes its whole prefetch at once and stops loses none of those acks.

Each ack frame is one command to the quorum queue's Raft leader; once 32 are unapplied the
channel's queue client holds further acks back, and a channel closed before the leader
catches up drops them: the queue hands those messages out again. Acked one frame each, a
clean stop with 1000 messages done at once left 34-45 of them in the queue in 3 runs of 10
(on the router: a second routed copy of each; a CI run routed 331 copies of 300 messages).
The consumer now acks the leading run of done deliveries with one ``multiple`` ack
(``routing.consumer.Settlements``).
"""
from __future__ import annotations

import threading
import uuid

import pika
import pytest

from routing.consumer import Consumer
from routing.pipelined import Outgoing, PipelinedPublisher
from tests.support.queues import quorum_queue, ready_in

pytestmark = pytest.mark.broker

MESSAGES = 1000


@pytest.fixture
def queue(amqp_url: str):
    with quorum_queue(amqp_url, "zlt-acks") as name:
        yield name


@pytest.mark.parametrize("stops", range(3))
def test_a_whole_prefetch_done_at_once_is_acked_before_the_stop_closes_the_channel(amqp_url, queue, stops):
    publisher = PipelinedPublisher(amqp_url, "zl-test")
    sent = [str(uuid.uuid1()) for _ in range(MESSAGES)]
    assert len(publisher.publish_batch("", [Outgoing(m, queue, b"<a/>") for m in sent])) == MESSAGES
    publisher.close()
    held = threading.Semaphore(0)
    release = threading.Event()

    def handle(_body: bytes, _props: pika.BasicProperties) -> None:
        held.release()
        release.wait(30)

    consumer = Consumer(amqp_url, "zl-test", [queue], handle, prefetch=MESSAGES, concurrency=MESSAGES)
    thread = threading.Thread(target=consumer.run)
    thread.start()
    for _ in range(MESSAGES):  # every message in a handler
        assert held.acquire(timeout=30)
    consumer.stop()
    release.set()  # all done at once, as a router's batch is
    thread.join(30)
    assert not thread.is_alive()
    assert ready_in(amqp_url, queue) == 0
