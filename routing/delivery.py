"""The delivery worker: push to the recipient with retries, failover and dead letters.

Each channel of a route is delivered through the implementation registered for its
mode (``routing.channels``: REST, SOAP, a federal registry), all under the same
policy; a pull channel parks the message in the recipient's inbox instead, where
GetRequest, GetResponse or ``GET /api/v1/inbox`` take it and an Ack makes it DELIVERED.

For each message it walks the route's channels in order (failover), skipping those
whose attempts are used up. On one channel, short waits between attempts run in
process; a wait longer than ``delivery.in_process_max_delay`` parks the message in a
delayed-retry queue, so a retry due in an hour survives a restart and holds no thread.
A permanent failure (a 4xx other than 408/425/429) goes to the dead letter channel.

Only the route's retry budget makes a message DEAD for failing: its attempts per
channel, and its time budget (``retry.max_total_seconds`` from routing). A channel
whose circuit breaker is open is skipped for the next one; when no channel is left
but some were skipped, the message waits in a delayed-retry queue until a breaker
lets a trial through, and its attempts stay unspent. What the message has used so far
travels with each copy in its headers (``DeliveryProgress``).

Redelivered messages are checked against the journal first (idempotent consumer):
a message already DELIVERED or DEAD is dropped, and a copy whose generation is not
the message's (it was replayed or swept since) is stale and is dropped too.

The router's PUBLISHED and ROUTED of this round, unwritten until now, go into the commit
of the copy's first outcome (``routing_noted``): DELIVERED, a failed attempt, a parked
retry, the inbox or the dead letter channel.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable
from typing import Any

import pika

from gateway.config import Channel, GatewayConfig, Route
from gateway.journal import Change, Journal, MessageRecord, Stage, Status
from gateway.journal.group_commit import Recorder
from gateway.journal.inbox import Inbox
from gateway.keyring import KeyRing
from gateway.masking import mask_text
from monitoring import metrics
from monitoring.logs import annotate
from routing.breaker import BreakerBoard, State
from routing.broker import ThreadPublisher, properties
from routing.channels import Channels, DeliveryResult
from routing.deadletter import DeadLetterChannel
from routing.delivery_progress import DeliveryProgress, routing_noted
from routing.journal_gate import JournalGate, WorkerStopping
from routing.topology import Topology

log = logging.getLogger(__name__)

DELIVERABLE = (Status.ACCEPTED, Status.PUBLISHED, Status.ROUTED, Status.RETRYING)
_DELIVERABLE_VALUES = frozenset(s.value for s in DELIVERABLE)
CIRCUIT_OPEN = "circuit open"


class DeliveryWorker:
    def __init__(self, config: GatewayConfig, journal: Journal, topology: Topology, publisher: ThreadPublisher,
                 dead: DeadLetterChannel, channels: Channels, keyring: KeyRing | None = None,
                 gate: JournalGate | None = None, recorder: Recorder | None = None) -> None:
        s = config.settings
        self.keyring = keyring or KeyRing()
        self.config = config
        self.journal = journal
        self.topology = topology
        self.publisher = publisher
        self.dead = dead
        self.channels = channels
        # Its threads' events and status changes, committed together as deliveries end (group commit).
        self.recorder: Recorder = recorder or journal
        self.actor = f"delivery-worker:{os.getpid()}"
        self.in_process_max_delay = s.delivery.in_process_max_delay
        self.breakers = BreakerBoard(s.circuit_breaker.failure_threshold, s.circuit_breaker.reset_timeout_seconds,
                                     on_change=self._breaker_changed)
        self.inbox = Inbox(journal)
        self.gate = gate or JournalGate(journal, threading.Event(), "delivery")
        self._stopping = self.gate.stopping
        self._routes = {r.name: r for r in config.routes}
        # Each handler thread's message: the router's stages not yet written (see the module's note).
        self._local = threading.local()

    def stop(self) -> None:
        self._stopping.set()

    def close(self) -> None:
        for channel in self.channels.values():
            channel.close()

    @staticmethod
    def _breaker_changed(key: str, state: State) -> None:
        participant, channel = key.split("/", 1)
        metrics.CIRCUIT_STATE.labels(participant, channel).set(int(state))
        log.info("circuit %s is now %s", key, state.name)

    # ---- one message --------------------------------------------------

    def handle(self, body: bytes, props: pika.BasicProperties) -> None:
        h: dict[str, Any] = props.headers or {}
        rec = self.journal.get(props.message_id)
        route = self._routes.get(str(h.get("x-zl-route", "")))
        progress = DeliveryProgress.from_headers(h, route)
        if rec is None or rec.status not in _DELIVERABLE_VALUES or progress.generation != rec.generation:
            return
        annotate(participant=rec.recipient, route=route.name if route else None)
        self._local.unwritten = ([] if rec.stages & Stage.ROUTED
                                 else routing_noted(rec.message_id, route, progress, self.actor))
        try:
            self._handle(body, rec, route, progress)
        finally:
            self._local.unwritten = []

    def _handle(self, body: bytes, rec: MessageRecord, route: Route | None, progress: DeliveryProgress) -> None:
        if route is None:
            self._dead(body, rec, None, None, f"route {progress.route!r} no longer configured", progress)
            return
        budget = route.retry.max_total_seconds
        if budget is not None and time.time() - progress.since > budget:
            self._dead(body, rec, route, None, f"the route's time budget of {budget:g} s is used up; "
                       f"last: {rec.last_error or 'no attempt made'}", progress)
            return
        # Sign once, and only if a channel of the route sends the envelope (a registry channel sends a query).
        sends = any(c.mode in self.channels and self.channels[c.mode].sends_envelope for c in route.channels)
        signed = self.keyring.sign_envelope(body) if sends else body
        self._walk(body, signed, rec, route, progress)

    def _take_unwritten(self) -> list[Change]:
        """The router's stages still unwritten for this thread's message, for the commit about to be made."""
        unwritten: list[Change] = self._local.unwritten
        self._local.unwritten = []
        return unwritten

    def _unwritten_and(self, change: Change) -> list[Change]:
        return [*self._take_unwritten(), change]

    def _record(self, message_id: str, kind: str, detail: dict[str, Any], *, status: Status | None = None,
                only_from: Iterable[Status] | None = None, **columns: Any) -> bool:
        change = Change.of(message_id, kind, self.actor, detail, status=status, only_from=only_from, **columns)
        return self.recorder.record_many(self._unwritten_and(change))[-1]

    def _walk(self, body: bytes, signed: bytes, rec: MessageRecord, route: Route, progress: DeliveryProgress) -> None:
        """Try the channels in failover order until one delivers, parks the message, or none is left."""
        waits: list[float] = []  # for each channel skipped because its breaker is open: seconds to its trial
        previous: Channel | None = None
        for index, channel in enumerate(route.channels):
            if progress.tries[index] >= route.retry.attempts:
                continue
            if previous is not None:
                log.warning("failover of %s from channel %s to %s: %s", rec.message_id, previous.name, channel.name,
                            mask_text(progress.last_error)[:500])
                self._record(rec.message_id, "FAILOVER",
                             {"from": previous.name, "to": channel.name, "reason": progress.last_error})
                metrics.FAILOVERS.labels(route.name, "circuit_open" if progress.last_error == CIRCUIT_OPEN
                                         else "exhausted").inc()
            previous = channel
            if channel.mode == "pull":
                self.inbox.park(rec, self.actor, channel.name, also=self._take_unwritten())
                return
            breaker = self.breakers.get(f"{route.recipient}/{channel.name}")
            if not breaker.allow():
                waits.append(breaker.retry_in())
                progress.last_error = CIRCUIT_OPEN
                self._record(rec.message_id, "CIRCUIT_OPEN",
                             {"channel": channel.name, "trial_in_s": round(waits[-1], 1)})
                continue
            if self._on_channel(body, signed, rec, route, index, progress):
                return
            if progress.tries[index] < route.retry.attempts:  # its breaker opened between two attempts
                waits.append(breaker.retry_in())
        if waits:
            self._wait_for_breaker(body, rec, route, progress, min(waits))
        else:
            self._dead(body, rec, route, route.channels[-1], f"all channels failed; last: {progress.last_error}",
                       progress)

    def _on_channel(self, body: bytes, signed: bytes, rec: MessageRecord, route: Route, index: int,
                    progress: DeliveryProgress) -> bool:
        """Attempt one channel, retrying in process while the waits are short.

        True when the message is settled here: delivered, dead-lettered or parked for a
        later retry; False when the channel is used up or its breaker opened (fail over).
        """
        channel = route.channels[index]
        breaker = self.breakers.get(f"{route.recipient}/{channel.name}")
        while True:
            progress.tries[index] += 1
            attempt = progress.tries[index]
            kind = self.channels.get(channel.mode)
            res = kind.deliver(channel, signed, rec, attempt) if kind is not None else DeliveryResult(
                False, False, f"no {channel.mode!r} channel in this worker")
            if res.delivered or not res.retryable:
                breaker.success()
            else:
                breaker.failure()
            if res.delivered:
                self._delivered(rec, route, channel, progress)
                return True
            outcome = "retryable" if res.retryable else "permanent"
            metrics.DELIVERY_FAILURES.labels(route.recipient, channel.name, outcome).inc()
            log.warning("delivery of %s to %s over %s failed, attempt %d of %d (%s): %s", rec.message_id,
                        route.recipient, channel.name, attempt, route.retry.attempts, outcome,
                        mask_text(res.detail)[:500])
            self._record(rec.message_id, "DELIVERY_FAILED",
                         {"channel": channel.name, "attempt": attempt, "error": res.detail, "outcome": outcome},
                         attempts=progress.attempts, last_error=res.detail[:2000])
            progress.last_error = res.detail
            if not res.retryable:
                self._dead(body, rec, route, channel, f"permanent failure: {res.detail}", progress)
                return True
            if attempt >= route.retry.attempts:
                return False
            delay = max(route.retry.delay(attempt), res.retry_after or 0.0)
            if delay > self.in_process_max_delay:
                self._park(body, rec, route, progress, delay, "RETRY_SCHEDULED",
                           {"channel": channel.name, "next_attempt": attempt + 1})
                return True
            self._record(rec.message_id, "RETRY_SCHEDULED",
                         {"channel": channel.name, "next_attempt": attempt + 1, "delay_s": round(delay, 3),
                          "mode": "in-process"}, status=Status.RETRYING, only_from=DELIVERABLE)
            metrics.RETRIES.labels(route.recipient, "in_process").inc()
            if self._stopping.wait(delay):
                raise WorkerStopping()
            if not breaker.allow():
                progress.last_error = CIRCUIT_OPEN
                return False

    def _wait_for_breaker(self, body: bytes, rec: MessageRecord, route: Route, progress: DeliveryProgress,
                          retry_in: float) -> None:
        """Every channel left has an open breaker: wait for the first trial, spending no attempt.

        Waits in a row grow (up to the route's max_delay) so that a long outage does not
        churn thousands of parked messages through the broker every reset timeout.
        """
        spaced = min(route.retry.max_delay, self.breakers.reset_timeout * 2 ** progress.waits)
        delay = max(retry_in, spaced, 0.001)
        progress.waits += 1
        metrics.CIRCUIT_WAITS.labels(route.recipient).inc()
        self._park(body, rec, route, progress, delay, "RETRY_SCHEDULED",
                   {"reason": CIRCUIT_OPEN, "wait": progress.waits,
                    "channels": [c.name for i, c in enumerate(route.channels)
                                 if progress.tries[i] < route.retry.attempts]})

    def _park(self, body: bytes, rec: MessageRecord, route: Route, progress: DeliveryProgress, delay: float,
              kind: str, detail: dict[str, Any]) -> None:
        """Hand the message to a delayed-retry queue; it comes back to a delivery worker after ``delay``."""
        budget = route.retry.max_total_seconds
        if budget is not None:  # wake no later than the budget's end, to be declared dead on time
            delay = min(delay, max(0.0, progress.since + budget - time.time()) + 1.0)
        bucket = self.topology.retry_bucket(delay)
        if detail.get("reason") != CIRCUIT_OPEN:
            progress.waits = 0
        self.publisher.publish(self.topology.retry_exchange(bucket), route.recipient, body,
                               properties(rec.message_id, progress.headers()))
        self._record(rec.message_id, kind,
                     {**detail, "delay_s": bucket, "mode": "queued", "queue": self.topology.retry_queue(bucket)},
                     status=Status.RETRYING, only_from=DELIVERABLE)
        metrics.RETRIES.labels(route.recipient, "queued").inc()

    def _delivered(self, rec: MessageRecord, route: Route, channel: Channel, progress: DeliveryProgress) -> None:
        changes = self._unwritten_and(Change(
            rec.message_id, "DELIVERED", self.actor, {"channel": channel.name, "url": channel.url}, Status.DELIVERED,
            DELIVERABLE, {"channel": channel.name, "attempts": progress.attempts}))
        # The recipient has it: wait out a journal outage here rather than deliver it again later.
        self.gate.until_written(lambda: self.recorder.record_many(changes))
        metrics.DELIVERED.labels(route.name, route.recipient, channel.name).inc()
        metrics.LATENCY.labels(route.name).observe(
            max(0.0, time.time() - rec.created_at.timestamp()))

    def _dead(self, body: bytes, rec: MessageRecord, route: Route | None, channel: Channel | None, reason: str,
              progress: DeliveryProgress) -> None:
        unwritten = self._take_unwritten()
        self.gate.until_written(lambda: self.dead.send(
            body, rec, route=route, reason=reason, channel=channel.name if channel else None,
            attempts=progress.attempts, also=unwritten))
