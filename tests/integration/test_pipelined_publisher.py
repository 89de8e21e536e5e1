"""The relay's streaming publisher against the real broker: what it reports confirmed is in the queue."""
from __future__ import annotations

import uuid

import pytest

from routing.broker import connect
from routing.pipelined import BrokerUnavailable, Outgoing, PipelinedPublisher
from tests.conftest import AMQP_URL
from tests.support.ports import free_port

pytestmark = pytest.mark.broker


@pytest.fixture
def queue():
    name = f"zlt-pp-{uuid.uuid4().hex[:8]}"
    conn = connect(AMQP_URL, "zl-test", heartbeat=0)
    ch = conn.channel()
    ch.exchange_declare(name, exchange_type="direct", durable=True)
    ch.queue_declare(name, durable=True, arguments={"x-queue-type": "quorum"})
    ch.queue_bind(name, name, routing_key="route")
    yield ch, name
    ch.queue_delete(name)
    ch.exchange_delete(name)
    conn.close()


def drain(ch, name: str) -> list[str]:
    ids = []
    while True:
        method, props, _body = ch.basic_get(name, auto_ack=True)
        if method is None:
            return ids
        ids.append(props.message_id)


def test_batches_are_confirmed_in_full_and_land_in_order(queue):
    ch, name = queue
    pub = PipelinedPublisher(AMQP_URL, "zl-test")
    try:
        first = [Outgoing(f"m{i}", "route", b"<x/>") for i in range(300)]
        second = [Outgoing(f"n{i}", "route", b"<y/>", {"x-zl-attempt": 2}) for i in range(5)]
        assert pub.publish_batch(name, first) == [o.message_id for o in first]
        assert pub.publish_batch(name, second) == [o.message_id for o in second]  # delivery tags continue
        assert drain(ch, name) == [o.message_id for o in first + second]
    finally:
        pub.close()


def test_an_unroutable_message_is_not_reported_as_published(queue):
    ch, name = queue
    pub = PipelinedPublisher(AMQP_URL, "zl-test")
    try:
        assert pub.publish_batch(name, [Outgoing("lost", "no-such-binding", b"<x/>")]) == []
        assert pub.publish_batch(name, [Outgoing("kept", "route", b"<x/>")]) == ["kept"]
        assert drain(ch, name) == ["kept"]
    finally:
        pub.close()


def test_a_nacked_batch_is_followed_by_a_new_connection(queue):
    """A queue that refuses (here: full, with reject-publish) nacks; what it nacked is not reported published,
    and the next batch opens a connection of its own rather than go on with the one that was refused."""
    ch, _ = queue
    full = f"zlt-pp-full-{uuid.uuid4().hex[:8]}"
    ch.queue_declare(full, durable=True, arguments={"x-queue-type": "quorum", "x-max-length": 1,
                                                    "x-overflow": "reject-publish"})
    pub = PipelinedPublisher(AMQP_URL, "zl-test")
    try:
        # A quorum queue applies its limit once it is over it: the first message or two get in.
        sent = 0
        while pub.publish_batch("", [Outgoing(f"m{sent}", full, b"<x/>")]) == [f"m{sent}"]:
            sent += 1
            assert sent < 5, "the full queue never nacked"
        assert sent >= 1 and pub.connections == 1  # the nacked one, not reported published, on the first connection
        assert pub.publish_batch("", [Outgoing("again", full, b"<x/>")]) == []  # still full: nacked again
        assert pub.connections == 2  # the batch after a nack opened a new connection
    finally:
        pub.close()
        ch.queue_delete(full)


def test_an_unreachable_broker_raises_and_reports_nothing():
    pub = PipelinedPublisher(f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F", "zl-test")
    with pytest.raises(BrokerUnavailable):
        pub.publish_batch("x", [Outgoing("m", "route", b"<x/>")])
