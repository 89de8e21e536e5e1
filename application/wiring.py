"""The composition root: the lower layers' parts built from the configuration and plugged together.

Routing delivers through ``routing.channels.DeliveryChannel`` implementations it never
imports; here each channel mode gets its adapter. The intake (accept pipeline, journal,
audit) is built the same way for every inbound adapter.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from application.runtime import has_registry_routes
from gateway.config import GatewayConfig
from gateway.journal import Journal
from gateway.keyring import KeyRing
from routing.broker import connect
from routing.channels import DeliveryChannel
from routing.topology import Topology

if TYPE_CHECKING:
    from adapters.intake import Intake


def topology(config: GatewayConfig) -> Topology:
    return Topology.of(config.settings.broker)


def declare_topology(config: GatewayConfig) -> None:
    conn = connect(config.settings.broker.nodes, "zl-declare")
    try:
        topology(config).declare(conn.channel(), config.participants)
    finally:
        conn.close()


def intake(config: GatewayConfig, journal: Journal, keyring: KeyRing, *, from_partners: bool = False,
           on_accepted: Callable[[], None] | None = None) -> Intake:
    """The intake of a process that accepts messages (its accept pipeline is imported only then).

    ``from_partners``: partners send to it (the API, the MLLP listener), so it holds their rate limits,
    shared with this host's other such processes through ``run_dir()``. ``on_accepted``: told of each
    first acceptance (the API's outbox relay, so it need not wait for its next poll).
    """
    from adapters.intake import Intake
    from gateway.accept import AcceptPipeline

    return Intake(AcceptPipeline(config, journal, keyring), journal, on_accepted=on_accepted,
                  shared_limits=run_dir() if from_partners else None)


def run_dir() -> Path | None:
    """``ZL_RUN_DIR``: where the processes of one gateway on this host share state (rate limit buckets).

    ``zdravlink run`` sets it to ``$ZL_VAR_DIR/run``, the systemd units to ``/run/zdravlink``.
    """
    where = os.environ.get("ZL_RUN_DIR")
    return Path(where) if where else None


def delivery_channels(config: GatewayConfig, journal: Journal, keyring: KeyRing) -> dict[str, DeliveryChannel]:
    """One implementation per channel mode the routes use: REST and SOAP push, and the registries."""
    from adapters.rest.push import RestChannel
    from adapters.soap.push import SoapPusher
    from gateway.tls import ClientContexts

    timeout = config.settings.delivery.timeout_seconds
    tls = ClientContexts(config.directory)  # channels' CAs, client certificates, pins
    channels: dict[str, DeliveryChannel] = {"rest": RestChannel(timeout, tls), "soap": SoapPusher(timeout, tls)}
    if has_registry_routes(config):
        from adapters.registries.channel import RegistryChannel

        channels["registry"] = RegistryChannel(config, journal, intake(config, journal, keyring), keyring, timeout)
    return channels
