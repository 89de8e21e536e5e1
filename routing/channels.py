"""Delivery channels: the one interface routing delivers through, and the registry of kinds by mode.

Like httpx's ``BaseTransport`` (one ``handle_request``), a channel does one thing:
``deliver`` a signed envelope to one endpoint of a route and say what happened. The
delivery worker applies the same retry, failover, circuit breaker and dead letter
policy to every kind, and never knows how REST, SOAP or a registry is spoken: the
application registers the implementations by channel mode (``application.wiring``),
so routing imports no adapter, and a unit test registers a scripted fake.

The pull mode is not a channel: a polling recipient's message waits in the journal's
inbox, which routing parks it in itself.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from gateway.config import Channel
from gateway.journal import MessageRecord

#: 4xx answers worth trying again (timeout, too early, rate limited); every 5xx is retried too,
#: since a recipient's server error says nothing against the message itself.
RETRYABLE_4XX = frozenset({408, 425, 429})


@dataclass(frozen=True)
class DeliveryResult:
    """What one attempt on one channel came to; ``retryable`` decides between a retry and a dead letter."""

    delivered: bool
    retryable: bool
    detail: str
    status_code: int | None = None
    retry_after: float | None = None


class DeliveryChannel(Protocol):
    #: Does this kind send the envelope (which then carries the gateway's signature)? A registry
    #: channel sends the registry a query built from the payload instead.
    sends_envelope: bool

    def deliver(self, channel: Channel, signed: bytes, rec: MessageRecord, attempt: int) -> DeliveryResult:
        """One attempt; ``signed`` is the envelope with the gateway's signature, ``attempt`` counts from 1."""

    def close(self) -> None:
        """Release connections; called once when the worker stops."""


#: The implementations a delivery worker has, by channel mode ("rest", "soap", "registry").
Channels = Mapping[str, DeliveryChannel]
