"""Which of the gateway's peers an exception says is out of reach, for a one-line message to the operator."""
from __future__ import annotations

import os

import httpx

from gateway.journal import unavailable
from routing.broker import BROKER_ERRORS
from zdravlink.errors import ConfigurationError


class CannotListen(ConfigurationError):
    """A listening address that is taken or not this host's: the gateway's own setting, not a peer out of reach.

    Raised apart from ``OSError`` because pika's errors include it: "address already in use" at an API's
    start read "cannot reach the broker", which sent the operator to the wrong server.
    """

    def __init__(self, section: str, host: str, port: int, exc: OSError) -> None:
        """``section``: where the address is set (``api``, ``metrics``, ``hl7``: its ``host`` and ``port``)."""
        # The system's words for the errno (asyncio wraps them in a sentence of its own); a name that does not
        # resolve has a negative resolver code, whose words only the exception carries.
        reason = os.strerror(exc.errno) if exc.errno and exc.errno > 0 else exc.strerror or str(exc)
        super().__init__(f"{host}:{port} ({section}.host, {section}.port): {reason}")


def unreachable(exc: BaseException) -> str | None:
    """"the journal", "the broker" or "the gateway" (its API, from a client command); None for anything else."""
    if unavailable(exc):
        return "the journal"
    if isinstance(exc, httpx.TransportError):
        return "the gateway"
    if isinstance(exc, BROKER_ERRORS):
        return "the broker"
    return None
