"""Readiness tells the broker apart from the topology: a queue not declared yet is not a dead broker."""
from __future__ import annotations

import uuid

import pytest

from routing.inspect import BrokerInspector

pytestmark = pytest.mark.broker


def test_a_reachable_broker_is_ready_before_any_queue_exists(amqp_url):
    missing = f"zlt-{uuid.uuid4().hex[:8]}.route"
    inspector = BrokerInspector(amqp_url, [missing, f"{missing}.other"], ttl=0)
    assert inspector.reachable() and inspector.depths() == {}


def test_an_unreachable_broker_is_not_ready():
    inspector = BrokerInspector("amqp://guest:guest@127.0.0.1:1/%2F", ["q"], ttl=0)
    assert not inspector.reachable()
