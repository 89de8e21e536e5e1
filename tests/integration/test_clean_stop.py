"""A router stopped with SIGTERM sends every ack it owes before it closes its connection.

Its acks are handed to the connection's thread from the pool's threads; one pass of the
I/O loop at the stop used to leave some unsent, so RabbitMQ handed those copies out again
and the next router routed them a second time: two copies of one message in the
recipient's queue (found by the fault table's "SIGTERM everything": 4 repeats at the
recipient). The delivery worker is stopped here, so every routed copy stays countable.
"""
from __future__ import annotations

import signal

import pytest

from routing.topology import Topology
from tests.support import configs
from tests.support.configs import LAB_TOKEN
from tests.support.gateway_proc import envelope_json
from tests.support.waiting import wait_for

pytestmark = pytest.mark.broker

MESSAGES = 300


def test_a_router_stopped_mid_load_and_started_again_routes_each_message_once(gateway_factory):
    gw = gateway_factory(configs.participants("http://127.0.0.1:9/inbox"), configs.routes(),
                         settings=configs.settings())
    gw.kill("delivery-1", signal.SIGTERM)
    topology = Topology(gw.prefix)
    for i in range(MESSAGES):
        gw.post(envelope_json("lab", "clinic"), LAB_TOKEN).raise_for_status()
        if i % 75 == 74:  # three stops while it routes
            gw.kill("router", signal.SIGTERM)
            gw.spawn("router")
    wait_for(lambda: gw.ready_in(topology.route_queue) == 0 and gw.ready_in(topology.deliver_queue("clinic"))
             >= MESSAGES, timeout=60, what="every message routed")
    gw.kill("router", signal.SIGTERM)  # and a last stop with nothing left to route
    assert gw.ready_in(topology.deliver_queue("clinic")) == MESSAGES
