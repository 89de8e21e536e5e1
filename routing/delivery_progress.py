"""What a message has spent on its way to the recipient, carried in the headers of each copy.

The router starts it (``routed_headers``); the delivery worker reads it from every copy
it takes and writes it into every copy it parks for a later retry. Keeping it in the
copy rather than in the journal costs no write per attempt, and a stale copy is told
apart by its generation.

The router's own stages travel the same way: the router writes nothing for a copy it
routes, and the delivery worker writes its PUBLISHED and ROUTED (``routing_noted``) in the
commit of the copy's first outcome. A commit of the router's per group of messages was one
of four commit stages per message on the journal's one writer (docs/PERFORMANCE.md).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from gateway.config import Route
from gateway.journal import Change, Stage, Status

#: Who took the routing decision that the delivery worker writes down.
ROUTER = "router"
ROUTABLE = (Status.ACCEPTED, Status.PUBLISHED)


@dataclass
class DeliveryProgress:
    """What one message has spent so far, carried in the headers of each copy.

    ``tries`` counts attempts per channel of the route; ``since`` is when it was routed
    (epoch seconds), the start of its time budget; ``waits`` counts the times in a row it
    waited behind open breakers, which spaces those waits out.
    """

    route: str
    generation: int
    tries: list[int]
    since: float
    waits: int = 0
    last_error: str = field(default="no channel tried")

    @classmethod
    def from_headers(cls, h: dict[str, Any], route: Route | None) -> DeliveryProgress:
        n = len(route.channels) if route else 0
        raw = h.get("x-zl-tries")
        if isinstance(raw, list) and len(raw) == n:
            tries = [int(t) for t in raw]
        else:  # a copy routed by an earlier version: x-zl-channel and the next x-zl-attempt
            tries = [0] * n
            index, attempt = int(h.get("x-zl-channel", 0)), int(h.get("x-zl-attempt", 1))
            for i in range(min(index, n)):
                tries[i] = route.retry.attempts if route else 0
            if index < n:
                tries[index] = attempt - 1
        return cls(str(h.get("x-zl-route", "")), int(h.get("x-zl-generation", 0)), tries,
                   int(h.get("x-zl-since-ms") or time.time() * 1000) / 1000, int(h.get("x-zl-waits", 0)))

    def headers(self) -> dict[str, Any]:
        return {"x-zl-route": self.route, "x-zl-generation": self.generation, "x-zl-tries": list(self.tries),
                "x-zl-since-ms": int(self.since * 1000), "x-zl-waits": self.waits}  # AMQP tables take no floats

    @property
    def attempts(self) -> int:
        return sum(self.tries)


def routed_headers(route: Route, generation: int) -> dict[str, Any]:
    """The headers of a freshly routed copy: nothing spent yet, the time budget starts now."""
    return DeliveryProgress(route.name, generation, [0] * len(route.channels), time.time()).headers()


def published_noted(message_id: str, noted: str) -> Change:
    """PUBLISHED as seen after the broker: a copy came through it, so it was published whether or not
    the relay has written that down (it may have died first); the stage guard keeps one either way."""
    return Change(message_id, "PUBLISHED", ROUTER, {"noted": noted}, Status.PUBLISHED, (Status.ACCEPTED,),
                  even_if_late=True, stage=Stage.PUBLISHED)


def routing_noted(message_id: str, route: Route | None, progress: DeliveryProgress, noted_by: str) -> list[Change]:
    """The router's stages of this round, to be written with the first outcome of its copy.

    Each is written once per round (``Stage``), so a retried copy, a second copy or a router
    that noted them on a redelivery adds nothing. ROUTED keeps the router's time in its detail;
    the event's own time is when it was written. A copy whose route is no longer configured
    was still published: only that is noted.
    """
    if route is None:
        return [published_noted(message_id, "by the router")]
    routed_at = datetime.fromtimestamp(progress.since, UTC).isoformat(timespec="milliseconds")
    return [published_noted(message_id, "by the router"),
            Change(message_id, "ROUTED", ROUTER,
                   {"route": route.name, "channels": [c.name for c in route.channels], "routed_at": routed_at,
                    "noted_by": noted_by},
                   Status.ROUTED, ROUTABLE, {"route": route.name}, even_if_late=True, stage=Stage.ROUTED)]
