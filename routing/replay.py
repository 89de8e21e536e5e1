"""Replay of dead letters: back through the outbox, with the lineage in the trail.

The journal is the source of truth: replay moves a DEAD message back to ACCEPTED,
the outbox relay publishes it again, and the trail records the replay with the
previous error and attempt count. The copies parked in the dead letter queue are
removed so that the queue keeps showing only what is still dead.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime

from gateway.journal import Journal, Status, search
from routing.broker import BROKER_ERRORS, BrokerAddress, connect
from routing.topology import Topology


@dataclass(frozen=True)
class ReplayResult:
    message_id: str
    replayed: bool
    reason: str


def replay(journal: Journal, message_ids: Iterable[str], actor: str = "operator") -> Iterator[ReplayResult]:
    """Replay each message in turn, yielding as it goes, so any number can be replayed."""
    for mid in message_ids:
        rec = journal.get(mid)
        if rec is None:
            yield ReplayResult(mid, False, "no such message")
        elif journal.replay(mid, actor):
            yield ReplayResult(mid, True, f"was {rec.status}: {rec.last_error or ''}".strip())
        else:
            yield ReplayResult(mid, False, f"status is {rec.status}; only DEAD or FAILED can be replayed")


def dead_selection(route: str | None = None, recipient: str | None = None, since: datetime | None = None,
                   reason: str | None = None) -> search.MessageFilter:
    """The DEAD messages an operator narrowed by route, recipient, time of death and a part of the reason.

    The same selection the console's dead letter list makes, so ``replay --all-dead
    --route R`` and the console's "replay all matching" send the same messages.
    """
    return search.MessageFilter(statuses=(Status.DEAD.value,), route=route, recipient=recipient,
                                updated_since=since, reason=reason)


def selected_ids(journal: Journal, selection: search.MessageFilter) -> Iterator[str]:
    """The messages of ``selection``, oldest first, read a page at a time."""
    return (row.message_id for row in search.iterate(journal, selection, newest_first=False))


def prune_dead_queue(broker: BrokerAddress, topology: Topology, journal: Journal, page: int = 500) -> int:
    """Remove the dead-queue copies of messages that are no longer DEAD in that round; the rest stay, in order.

    Entries are taken without ack and looked up in the journal a page at a time: the
    ones whose message was replayed (or delivered since) are acked, the rest go back
    to the queue when the channel closes. Returns how many were removed; 0 if the
    broker is down (stale copies are harmless: delivery drops a copy of an old generation).
    """
    removed = 0
    try:
        conn = connect(broker, "zl-replay", heartbeat=0)
    except BROKER_ERRORS:
        return 0
    try:
        ch = conn.channel()
        while True:
            held = []
            for _ in range(page):
                method, props, _body = ch.basic_get(topology.dead_queue, auto_ack=False)
                if method is None:
                    break
                held.append((method.delivery_tag, props))
            if not held:
                break
            records = journal.get_many([str(p.message_id) for _, p in held])
            for tag, props in held:
                rec = records.get(str(props.message_id))
                generation = int((props.headers or {}).get("x-zl-generation", -1))
                if rec is None or rec.status != Status.DEAD.value or generation != rec.generation:
                    ch.basic_ack(tag)
                    removed += 1
            if len(held) < page:
                break
        ch.basic_recover(requeue=True)
    finally:
        conn.close()
    return removed
