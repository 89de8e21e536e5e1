"""Relays share one outbox: four of them on one PostgreSQL journal publish 4,000 messages, each exactly once.

Small batches (50) make the relays contend for 80 claims, more than 10,000 messages in batches of 200
gave (50), at two fifths of the CPU."""
from __future__ import annotations

import time
import uuid

import pytest

from gateway.config import RelaySettings
from gateway.envelope import Envelope
from gateway.journal import Journal, Status
from gateway.journal.messages import AcceptRequest
from routing.broker import connect
from routing.relay import OutboxRelay
from routing.topology import Topology
from tests.conftest import PG_URL, _pg_database
from tests.support.gateway_proc import envelope_json

pytestmark = [pytest.mark.broker, pytest.mark.postgres]
COUNT = 4_000
BATCH = 50


@pytest.fixture
def journal():
    gen = _pg_database(PG_URL)
    url = next(gen)
    j = Journal(url)
    j.migrate()
    yield j
    j.engine.dispose()
    next(gen, None)


def test_four_relays_publish_every_message_exactly_once(journal: Journal, amqp_url: str) -> None:
    template = Envelope.from_json(envelope_json("lab", "clinic"))
    for start in range(0, COUNT, 1000):  # accepted in thousands: the relays find a full outbox
        journal.accept_many([AcceptRequest(Envelope(message_id=str(uuid.uuid1()), sender="lab", recipient="clinic",
                                                    message_type=template.message_type, payload=template.payload),
                                           "bench", "t", "r") for _ in range(start, start + 1000)])
    topo = Topology(f"zlt-{uuid.uuid4().hex[:8]}")
    conn = connect(amqp_url, "test-outbox", heartbeat=0)
    ch = conn.channel()
    ch.exchange_declare(topo.ingress_exchange, exchange_type="direct", durable=True)
    ch.queue_declare(topo.route_queue, durable=True, arguments={"x-queue-type": "quorum"})
    ch.queue_bind(topo.route_queue, topo.ingress_exchange, routing_key="route")
    relays = [OutboxRelay(Journal(journal.url), amqp_url, topo, RelaySettings(batch_size=BATCH, poll_interval_seconds=0.05))
              for _ in range(4)]
    try:
        for relay in relays:
            relay.start()
        deadline = time.monotonic() + 180
        while journal.count(Status.ACCEPTED) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert journal.count(Status.ACCEPTED) == 0
        seen: dict[str, int] = {}
        while True:
            method, props, _body = ch.basic_get(topo.route_queue, auto_ack=True)
            if method is None:
                break
            seen[str(props.message_id)] = seen.get(str(props.message_id), 0) + 1
        assert len(seen) == COUNT and set(seen.values()) == {1}, {k: v for k, v in seen.items() if v > 1}
        assert all(r.published_total > 0 for r in relays)  # the work was shared, not done by one
        print(f"\npublished per relay: {[r.published_total for r in relays]}")
        with journal.engine.connect() as db:
            published_events = db.exec_driver_sql("SELECT count(*) FROM events WHERE kind = 'PUBLISHED'").scalar()
        assert published_events == COUNT
    finally:
        for relay in relays:
            relay.stop()
        ch.queue_delete(topo.route_queue)
        ch.exchange_delete(topo.ingress_exchange)
        conn.close()
