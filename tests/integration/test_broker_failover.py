"""Connections to a list of nodes open on whichever answers: a node that is down is passed over, by the
blocking connections, the streaming publisher and the consumer alike. (A node lost mid-stream, with a
real cluster: tests/faults/test_scale_out.py.)"""
from __future__ import annotations

import threading
import uuid

import pika
import pytest

from routing.broker import ThreadPublisher, connect, properties
from routing.consumer import Consumer
from routing.pipelined import BrokerUnavailable, Outgoing, PipelinedPublisher
from tests.support.ports import free_port
from tests.support.queues import quorum_queue

pytestmark = pytest.mark.broker


@pytest.fixture
def nodes(amqp_url: str):
    """A node that is down (nothing listens on its port) and the real one; and a queue on the real one."""
    with quorum_queue(amqp_url, "zlt-fo") as name:
        yield [f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F", amqp_url], name


def test_every_kind_of_connection_passes_over_a_node_that_is_down(nodes) -> None:
    urls, queue = nodes
    for _ in range(6):  # the order is random: the dead node comes first about half the time
        connect(urls, "zl-test", heartbeat=0).close()
    streaming = PipelinedPublisher(urls, "zl-test")
    blocking = ThreadPublisher(urls, "zl-test")
    sent = []
    for _ in range(4):
        sent.append(str(uuid.uuid1()))
        assert streaming.publish_batch("", [Outgoing(sent[-1], queue, b"<a/>")]) == [sent[-1]]
        streaming.close()  # the next batch opens a new connection, again from a random node
        sent.append(str(uuid.uuid1()))
        blocking.publish("", queue, b"<a/>", properties(sent[-1], {}))
        blocking.reset()
    got: list[str] = []
    done = threading.Event()

    def handle(_body: bytes, props: pika.BasicProperties) -> None:
        got.append(str(props.message_id))
        if len(got) == len(sent):
            done.set()

    consumer = Consumer(urls, "zl-test", [queue], handle, prefetch=4, concurrency=1)
    thread = threading.Thread(target=consumer.run)
    thread.start()
    assert done.wait(30), got
    consumer.stop()
    thread.join(10)
    assert sorted(got) == sorted(sent)


def test_no_node_up_is_one_error_naming_each() -> None:
    dead = [f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F" for _ in range(2)]
    with pytest.raises(BrokerUnavailable) as info:
        PipelinedPublisher(dead, "zl-test").publish_batch("", [Outgoing("m", "q", b"")])
    assert str(info.value).count("127.0.0.1:") == 2
