"""The System page's facts: queues and their consumers, breakers, workers, configuration as loaded.

Each fact is read when the page is asked for, from where it is true: queue depths and
consumers from RabbitMQ (a worker that died has no consumer), breaker states from the
delivery workers' own metric files (each worker process keeps its breakers; the API
process has none of its own), the configuration check by loading the directory again,
as ``zdravlink check-config`` does, so the page shows a mistake made since start-up.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pika
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from gateway.config import ConfigError, ConfigProblem, GatewayConfig, load_config
from routing.broker import BROKER_ERRORS, connect
from routing.topology import Topology

BREAKER_STATES = {0: "closed", 1: "half-open", 2: "open"}


@dataclass(frozen=True)
class QueueState:
    name: str
    messages: int | None  # None: not declared yet
    consumers: int | None


def queues(config: GatewayConfig) -> list[QueueState] | None:
    """Every gateway queue with its depth and consumers; None when the broker is out of reach."""
    topology = Topology.of(config.settings.broker)
    try:
        conn = connect(config.settings.broker.nodes, "zl-console", heartbeat=0)
    except BROKER_ERRORS:
        return None
    found = []
    try:
        ch = conn.channel()
        for name in topology.all_queues(config.participants):
            try:
                ok = ch.queue_declare(name, passive=True).method
                found.append(QueueState(name, ok.message_count, ok.consumer_count))
            except pika.exceptions.ChannelClosedByBroker:  # 404: not declared yet
                found.append(QueueState(name, None, None))
                ch = conn.channel()
    finally:
        conn.close()
    return found


def workers(config: GatewayConfig, found: list[QueueState] | None) -> list[tuple[str, int | None]]:
    """Each kind of worker with how many are consuming: the router, delivery workers, the reconciler."""
    if found is None:
        return []
    topology = Topology.of(config.settings.broker)
    by_name = {q.name: q.consumers for q in found}
    delivery = [by_name.get(topology.deliver_queue(p)) for p in config.participants]
    return [("router", by_name.get(topology.route_queue)),
            ("delivery", max((d for d in delivery if d is not None), default=None)),
            ("reconciler", by_name.get(topology.poison_queue))]


def breakers() -> list[tuple[str, str, str]]:
    """(participant, channel, state) of every breaker a delivery worker reported, from the metric files."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory or not Path(directory).is_dir():
        return []
    registry = CollectorRegistry()
    MultiProcessCollector(registry, directory)
    out = []
    for family in registry.collect():
        if family.name == "zl_circuit_state":
            for sample in family.samples:
                out.append((sample.labels["participant"], sample.labels["channel"],
                            BREAKER_STATES.get(int(sample.value), str(sample.value))))
    return sorted(out)


def check_config(directory: Path) -> tuple[list[ConfigProblem], str]:
    """The problems ``zdravlink check-config`` would print for ``directory`` now, and a one-line summary."""
    from adapters.console.operators import load_operators
    from adapters.mapping.lab_mapping import load_mappings
    from gateway.keyring import load_keyring
    from gateway.oms.profiles import load_oms_config
    from gateway.schemas import known_message_types
    from gateway.tariffs import load_tariffs

    try:
        config = load_config(directory, known_message_types=known_message_types())
        load_keyring(config)
        load_operators(directory)
    except ConfigError as exc:
        return exc.problems, ""
    problems: list[ConfigProblem] = []
    labs = load_mappings(config.directory, set(config.participants), problems)
    tariffs = load_tariffs(config.directory, problems)
    load_oms_config(config, problems)
    return problems, (f"{len(config.participants)} participants, {len(config.routes)} routes, "
                      f"{len(labs)} lab mappings, {len(tariffs)} tariffs")
