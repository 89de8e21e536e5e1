"""The broker as a list of nodes: how the configuration names them, the order connections try them in,
and the replication the topology asks RabbitMQ for."""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from gateway.config import BrokerSettings, load_config
from routing.broker import node_parameters, node_urls
from routing.topology import Topology
from tests.unit.test_config import problems, write

NODES = [f"amqp://zl:secret@mq{i}.example:5672/zdravlink" for i in (1, 2, 3)]


def test_one_url_many_urls_or_a_comma_list_from_the_environment(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("ZL_AMQP_URL", raising=False)  # scripts/test sets it
    assert BrokerSettings().nodes == ("amqp://guest:guest@127.0.0.1:5672/%2F",)
    cfg = load_config(write(tmp_path, gateway="broker: {urls: [" + ", ".join(NODES) + "]}\n"))
    assert cfg.settings.broker.nodes == tuple(NODES)
    monkeypatch.setenv("ZL_AMQP_URL", f"{NODES[2]}, {NODES[0]}")  # the environment replaces the file's list
    assert load_config(tmp_path).settings.broker.nodes == (NODES[2], NODES[0])
    monkeypatch.delenv("ZL_AMQP_URL")
    write(tmp_path, gateway="broker: {urls: ['http://mq1.example/']}\n")
    assert ("gateway.yaml", "broker.urls", "each node is an amqp:// or amqps:// URL (got 'http://mq1.example/')") \
        in problems(tmp_path)


def test_every_node_is_tried_from_a_different_one_each_time() -> None:
    orders = [tuple(node_urls(NODES)) for _ in range(300)]
    assert all(sorted(o) == sorted(NODES) for o in orders)
    firsts = Counter(o[0] for o in orders)
    assert set(firsts) == set(NODES) and min(firsts.values()) > 50  # connections spread over the cluster
    for order in orders:  # the rest follow in the cluster's order, so each node is tried once
        i = NODES.index(order[0])
        assert list(order) == NODES[i:] + NODES[:i]
    params = node_parameters(",".join(NODES), "zl-test", heartbeat=0)
    assert sorted(p.host for p in params) == ["mq1.example", "mq2.example", "mq3.example"]
    assert {(p.heartbeat, p.connection_attempts, p.client_properties["connection_name"]) for p in params} == {
        (0, 1, "zl-test")}


class Recorder:
    """A channel that keeps what was declared."""

    def __init__(self) -> None:
        self.queues: dict[str, dict[str, Any]] = {}

    def queue_declare(self, name: str, durable: bool, arguments: dict[str, Any]) -> None:
        self.queues[name] = arguments

    def __getattr__(self, _name: str):
        return lambda *a, **k: None


@pytest.mark.parametrize("replicas", [None, 3])
def test_every_queue_is_a_quorum_queue_with_the_replicas_asked_for(replicas: int | None) -> None:
    ch = Recorder()
    topo = Topology.of(BrokerSettings(prefix="zl", quorum_replicas=replicas))
    topo.declare(ch, ["clinic", "lab"])  # type: ignore[arg-type]
    assert set(ch.queues) == set(topo.all_queues(["clinic", "lab"]))
    for args in ch.queues.values():
        assert args["x-queue-type"] == "quorum"
        assert args.get("x-quorum-initial-group-size") == replicas
