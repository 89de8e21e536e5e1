"""Which of the gateway's peers an exception says is out of reach, for a one-line message to the operator."""
from __future__ import annotations

import httpx

from gateway.journal import unavailable
from routing.broker import BROKER_ERRORS


def unreachable(exc: BaseException) -> str | None:
    """"the journal", "the broker" or "the gateway" (its API, from a client command); None for anything else."""
    if unavailable(exc):
        return "the journal"
    if isinstance(exc, httpx.TransportError):
        return "the gateway"
    if isinstance(exc, BROKER_ERRORS):
        return "the broker"
    return None
