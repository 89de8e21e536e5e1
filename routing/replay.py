"""Replay of dead letters: back through the outbox, with the lineage in the trail.

The journal is the source of truth: replay moves a DEAD message back to ACCEPTED,
the outbox relay publishes it again, and the trail records the replay with the
previous error and attempt count. The copies parked in the dead letter queue are
removed so that the queue keeps showing only what is still dead.
"""
from __future__ import annotations

from dataclasses import dataclass

from gateway.journal import Journal, Status
from routing.broker import BROKER_ERRORS, connect
from routing.topology import Topology


@dataclass(frozen=True)
class ReplayResult:
    message_id: str
    replayed: bool
    reason: str


def replay(journal: Journal, message_ids: list[str], actor: str = "operator") -> list[ReplayResult]:
    results = []
    for mid in message_ids:
        rec = journal.get(mid)
        if rec is None:
            results.append(ReplayResult(mid, False, "no such message"))
        elif journal.replay(mid, actor):
            results.append(ReplayResult(mid, True, f"was {rec.status}: {rec.last_error or ''}".strip()))
        else:
            results.append(ReplayResult(mid, False, f"status is {rec.status}; only DEAD or FAILED can be replayed"))
    return results


def dead_ids(journal: Journal) -> list[str]:
    return journal.with_status(Status.DEAD)


def drop_from_dead_queue(amqp_url: str, topology: Topology, message_ids: set[str]) -> int:
    """Remove the dead-queue copies of these messages; every other entry stays, in order.

    Entries are taken without ack: the wanted ones are acked, the rest go back to the
    queue when the channel closes. Returns how many were removed; 0 if the broker is down
    (the stale copies are harmless: delivery drops a copy whose replay generation is old).
    """
    removed = 0
    try:
        conn = connect(amqp_url, "zl-replay", heartbeat=0)
    except BROKER_ERRORS:
        return 0
    try:
        ch = conn.channel()
        while True:
            method, props, _body = ch.basic_get(topology.dead_queue, auto_ack=False)
            if method is None:
                break
            if props.message_id in message_ids:
                ch.basic_ack(method.delivery_tag)
                removed += 1
        ch.basic_recover(requeue=True)
    finally:
        conn.close()
    return removed
