"""The sweeper: messages that stopped moving are sent round again.

A message can stop between two stages with no copy left anywhere: a publish whose
confirm was lost, a queue purged by hand, a broker that lost a non-replicated queue.
The journal shows it PUBLISHED, ROUTED or RETRYING for ever. The sweeper looks for
messages whose last change is older than ``stuck_after_seconds`` (for a queued retry:
older than its due time plus that) while the queue their copy would be waiting in is
empty, and sends each round again through the outbox on a new generation, with a
SWEPT event in its trail. Should the old copy turn up after all, its generation marks
it stale and it is dropped, so a sweep never makes a message go twice.

"Empty" is what AMQP can tell: no message *ready*. A copy a consumer holds unacknowledged
is not counted, and a worker holds one for the whole of a delivery attempt, which writes
nothing until its outcome. So when a queue the copy could be in has a consumer, the
message is only a suspect: it is swept when a later sweep, ``confirm_after_seconds`` (one
attempt's timeout) on, finds it still unchanged. A queue with no consumer hides nothing,
and its messages are swept at once. A copy still held past that (one waiting behind a
backlog in a worker's prefetch window) is stale once swept, and dropped when its turn comes.

Not swept: ACCEPTED (the outbox relay still has it), AWAITING_PICKUP (the recipient's
inbox holds it). Right after a journal outage the sweeper waits one more
``stuck_after_seconds``: workers that held messages through the outage are still
catching up on their writes.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from gateway.journal import Journal, MessageRecord, Status, unavailable, utcnow
from monitoring import metrics
from monitoring.logs import about
from routing.inspect import QueueLook
from routing.topology import Topology

log = logging.getLogger(__name__)
ACTOR = "sweeper"
SWEPT_STATUSES = (Status.PUBLISHED, Status.ROUTED, Status.RETRYING)


@dataclass(frozen=True)
class Stuck:
    record: MessageRecord
    why: str
    #: A queue its copy could be in has a consumer, which may hold the copy unacknowledged.
    may_be_held: bool


class Sweeper:
    def __init__(self, journal: Journal, topology: Topology, queues: Callable[[], dict[str, QueueLook]],
                 stuck_after_seconds: float, confirm_after_seconds: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.journal = journal
        self.topology = topology
        self.queues = queues
        self.stuck_after = stuck_after_seconds
        self.confirm_after = confirm_after_seconds
        self._clock = clock
        self._quiet_until = 0.0
        #: Suspects awaiting a second look: message id -> (its updated_at then, when it was first seen).
        self._suspects: dict[str, tuple[datetime, float]] = {}

    @property
    def awaiting_confirmation(self) -> int:
        """Suspects a sweep ``confirm_after`` seconds on will sweep if they have not moved."""
        return len(self._suspects)

    def stuck(self, limit: int = 1000) -> list[Stuck]:
        """Messages that stopped moving with no copy waiting for them, each with why it counts as stuck."""
        now = utcnow()
        looks = self.queues()
        found = []
        for rec in self.journal.unchanged_since(SWEPT_STATUSES, now - timedelta(seconds=self.stuck_after), limit):
            waiting_in = self._queues_for(rec)
            if waiting_in is None:
                continue
            seen = [looks.get(q) for q in waiting_in]
            if any(look is None or look.ready for look in seen):
                continue  # a copy may be waiting its turn (or the broker could not say)
            held = any(look.consumers for look in seen if look is not None)
            age = (now - rec.updated_at).total_seconds()
            why = f"{rec.status} for {age:.0f} s with nothing in {', '.join(waiting_in)}"
            found.append(Stuck(rec, why + ("; a consumer there may hold its copy" if held else ""), held))
        return found

    def _queues_for(self, rec: MessageRecord) -> list[str] | None:
        if rec.status == Status.PUBLISHED.value:
            # ROUTED is written with the delivery's first outcome: a routed copy may wait in the recipient's queue.
            return [self.topology.route_queue, self.topology.deliver_queue(rec.recipient)]
        if rec.status == Status.ROUTED.value:
            return [self.topology.deliver_queue(rec.recipient)]
        # RETRYING: a queued retry is due after its delay; an in-process one is held by a worker.
        last = self.journal.trail(rec.message_id)[-1]
        delay = float(last.detail.get("delay_s", 0)) if last.kind == "RETRY_SCHEDULED" else 0.0
        if (utcnow() - rec.updated_at).total_seconds() < delay + self.stuck_after:
            return None
        queues = [self.topology.deliver_queue(rec.recipient)]
        if "queue" in last.detail:
            queues.append(str(last.detail["queue"]))
        return queues

    def _confirmed(self, rec: MessageRecord, now: float, suspects: dict[str, tuple[datetime, float]]) -> bool:
        """Whether a message a consumer may hold was already a suspect, unchanged, ``confirm_after`` ago."""
        first = self._suspects.get(rec.message_id)
        if first is None or first[0] != rec.updated_at:
            first = (rec.updated_at, now)
        if now - first[1] >= self.confirm_after:
            return True
        suspects[rec.message_id] = first
        return False

    def sweep_once(self) -> list[str]:
        """Send every stuck message round again; the ids swept. Quiet for a while after a journal outage."""
        now = self._clock()
        if now < self._quiet_until:
            return []
        try:
            swept = []
            suspects: dict[str, tuple[datetime, float]] = {}
            for found in self.stuck():
                rec, why = found.record, found.why
                if found.may_be_held and not self._confirmed(rec, now, suspects):
                    continue
                if self.journal.send_round_again(rec, ACTOR, {"reason": why}):
                    swept.append(rec.message_id)
                    metrics.SWEPT.labels(rec.status).inc()
                    log.warning("swept %s: %s; sent round again", rec.message_id, why,
                                extra=about(rec.message_id, rec.route, rec.recipient))
            self._suspects = suspects
            return swept
        except Exception as exc:
            if not unavailable(exc):
                raise
            self._suspects = {}
            self._quiet_until = self._clock() + self.stuck_after
            log.warning("sweeper: the journal is out of reach; next sweep in %.0f s at the earliest", self.stuck_after)
            return []
