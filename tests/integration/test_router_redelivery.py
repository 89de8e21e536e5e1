"""The router given a copy of a message the delivery worker has already delivered.

When a whole gateway node is SIGKILLed, its relay and its router can both die after passing a
message on and before writing it down. The other node's delivery worker delivers it, and its
router then gets the dead router's unacknowledged copy. The relay never looks at a message past
ACCEPTED again, so unless that router notes both stages, the delivered message's trail lacks
PUBLISHED (seen once in 2,000 messages in the scale-out fault test).
"""
from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path

import pika
import pytest

from gateway.config import load_config
from gateway.journal import Change, Journal, Stage, Status
from routing.deadletter import DeadLetterChannel
from routing.router import Router
from routing.topology import Topology
from tests.conftest import AMQP_URL
from tests.integration.test_smev_soap import write_config
from tests.unit.test_journal import make_env

pytestmark = pytest.mark.broker


@pytest.mark.parametrize("written_before_death", [(), ("relay",), ("relay", "router")])
def test_a_copy_of_a_delivered_message_completes_its_trail_once(tmp_path: Path, demo_keys: Path, db_url: str,
                                                                  written_before_death: tuple[str, ...]) -> None:
    config = load_config(write_config(tmp_path / "config", demo_keys))
    journal = Journal(db_url)
    env = make_env()
    mid = env.message_id
    journal.accept(env, source="rest", actor="t", route="lab-to-clinic")
    if "relay" in written_before_death:
        journal.mark_published([mid], "relay")
    if "router" in written_before_death:
        journal.record_many([Change(mid, "ROUTED", "router", {"route": "lab-to-clinic"}, Status.ROUTED,
                                    (Status.PUBLISHED,), stage=Stage.ROUTED)])
    journal.record(mid, "DELIVERED", "delivery", {}, status=Status.DELIVERED)
    topology = Topology(f"zlt-{uuid.uuid4().hex[:8]}")
    router = Router(config, journal, topology, AMQP_URL, DeadLetterChannel(journal, topology, None, "t"))  # type: ignore[arg-type]
    copy = pika.BasicProperties(message_id=mid, headers={"x-zl-generation": 0})
    try:
        router.handle(env.to_xml(), copy)
        router.handle(env.to_xml(), copy)  # and the broker's copy of the dead relay's publish
        router.close()  # routes what it was handed before it returns
        trail = journal.trail(mid)
        assert sorted(e.kind for e in trail) == ["ACCEPTED", "DELIVERED", "PUBLISHED", "ROUTED"], trail
        assert journal.get(mid).status == "DELIVERED" and journal.verify_trail(mid)
    finally:
        journal.engine.dispose()


def test_a_second_copy_of_a_routed_round_is_not_routed_again_and_a_new_round_is(tmp_path: Path, demo_keys: Path,
                                                                                  db_url: str) -> None:
    """A relay that published and could not write PUBLISHED publishes again; a copy whose ack was lost
    comes back. The journal still says PUBLISHED (ROUTED comes with the delivery), so the router
    remembers the rounds it routed: two copies in the recipient's queue would reach two workers at once."""
    from tests.support.gateway_proc import delete_topology

    config = load_config(write_config(tmp_path / "config", demo_keys))
    journal = Journal(db_url)
    env = dataclasses.replace(make_env(), recipient="clinic")  # the route lab-to-clinic takes it
    mid = env.message_id
    journal.accept(env, source="rest", actor="t", route="lab-to-clinic")
    journal.mark_published([mid], "relay")
    topology = Topology(f"zlt-{uuid.uuid4().hex[:8]}")
    conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    ch = conn.channel()
    topology.declare(ch, config.participants)
    deliver = topology.deliver_queue(env.recipient)
    router = Router(config, journal, topology, AMQP_URL, DeadLetterChannel(journal, topology, None, "t"))  # type: ignore[arg-type]
    try:
        for _ in range(3):  # one at a time: each in a batch of its own
            router.handle(env.to_xml(), pika.BasicProperties(message_id=mid, headers={"x-zl-generation": 0}))
        assert ch.queue_declare(deliver, passive=True).method.message_count == 1
        assert journal.send_round_again(journal.get(mid), "sweeper", {})  # its copy lost: a new round
        router.handle(env.to_xml(), pika.BasicProperties(message_id=mid, headers={"x-zl-generation": 1}))
        assert ch.queue_declare(deliver, passive=True).method.message_count == 2
    finally:
        router.close()
        conn.close()
        delete_topology(AMQP_URL, topology.prefix, list(config.participants))
        journal.engine.dispose()
