"""The delivery worker: push to the recipient with retries, failover and dead letters.

A channel pushes over REST (httpx) or SOAP (zeep, ``adapters.soap.push``) under the
same policy, parks the message in the recipient's pull inbox, where GetRequest,
GetResponse or ``GET /api/v1/inbox`` take it and an Ack makes it DELIVERED, or asks a
federal registry and sends its answer back to the requester (``adapters.registries``).

For each message it walks the route's channels in order (failover). On one channel:
short waits between attempts run in process with tenacity; a wait longer than
``delivery.in_process_max_delay`` parks the message in a delayed-retry queue, so a
retry due in an hour survives a restart and does not hold a worker thread. A
permanent failure (a 4xx other than 408/425/429) skips the retries and goes to the
dead letter channel; a channel whose breaker is open is skipped without a call.

Redelivered messages are checked against the journal first (idempotent consumer):
a message already DELIVERED or DEAD is dropped, and a message whose replay
generation has moved on is a stale copy and is dropped too.
"""
from __future__ import annotations

import enum
import logging
import os
import threading
from typing import Any

import httpx
import pika
from tenacity import RetryCallState, Retrying, retry_if_result

from adapters.intake import Intake
from adapters.registries.channel import RegistryChannel
from adapters.rest.push import PushResult, push
from adapters.soap.push import SoapPusher
from gateway.accept import AcceptPipeline
from gateway.config import Channel, GatewayConfig, Route
from gateway.journal import Journal, MessageRecord, Status
from gateway.journal.inbox import Inbox
from gateway.keyring import KeyRing
from monitoring import metrics
from routing.breaker import BreakerBoard, State
from routing.broker import ThreadPublisher, properties
from routing.deadletter import DeadLetterChannel
from routing.topology import Topology

log = logging.getLogger(__name__)

DELIVERABLE = (Status.ACCEPTED.value, Status.PUBLISHED.value, Status.ROUTED.value, Status.RETRYING.value)


class WorkerStopping(Exception):
    """Raised out of a retry wait on shutdown; the message is left unacked for redelivery."""


class Outcome(enum.Enum):
    DONE = "done"          # delivered or dead-lettered
    PARKED = "parked"      # waiting in a delayed-retry queue
    EXHAUSTED = "exhausted"  # this channel is used up: fail over


class DeliveryWorker:
    def __init__(self, config: GatewayConfig, journal: Journal, topology: Topology,
                 publisher: ThreadPublisher, dead: DeadLetterChannel, keyring: KeyRing | None = None) -> None:
        s = config.settings
        self.keyring = keyring or KeyRing()
        self.config = config
        self.journal = journal
        self.topology = topology
        self.publisher = publisher
        self.dead = dead
        self.actor = f"delivery-worker:{os.getpid()}"
        self.in_process_max_delay = s.delivery.in_process_max_delay
        self.client = httpx.Client(timeout=s.delivery.timeout_seconds, follow_redirects=False,
                                   limits=httpx.Limits(max_connections=64))
        self.breakers = BreakerBoard(s.circuit_breaker.failure_threshold, s.circuit_breaker.reset_timeout_seconds,
                                     on_change=self._breaker_changed)
        self.soap = SoapPusher(s.delivery.timeout_seconds)
        self.inbox = Inbox(journal)
        self.registries: RegistryChannel | None = None
        if any(c.mode == "registry" for r in config.routes for c in r.channels):
            intake = Intake(AcceptPipeline(config, journal, self.keyring), journal)
            self.registries = RegistryChannel(config, journal, intake, self.keyring, s.delivery.timeout_seconds)
        self._routes = {r.name: r for r in config.routes}
        self._stopping = threading.Event()

    def stop(self) -> None:
        self._stopping.set()

    def close(self) -> None:
        self.client.close()
        self.soap.close()
        if self.registries is not None:
            self.registries.close()

    @staticmethod
    def _breaker_changed(key: str, state: State) -> None:
        participant, channel = key.split("/", 1)
        metrics.CIRCUIT_STATE.labels(participant, channel).set(int(state))
        log.info("circuit %s is now %s", key, state.name)

    # ---- one message --------------------------------------------------

    def handle(self, body: bytes, props: pika.BasicProperties) -> None:
        h: dict[str, Any] = props.headers or {}
        rec = self.journal.get(props.message_id)
        if rec is None or rec.status not in DELIVERABLE or int(h.get("x-zl-generation", 0)) != rec.replays:
            return
        route = self._routes.get(str(h.get("x-zl-route", "")))
        if route is None:
            self.dead.send(body, rec, route=None, reason=f"route {h.get('x-zl-route')!r} no longer configured",
                           channel=None, attempts=rec.attempts)
            return
        index, attempt = int(h.get("x-zl-channel", 0)), int(h.get("x-zl-attempt", 1))
        attempts = rec.attempts
        # A registry channel sends the registry a query, not the envelope: nothing there to sign.
        pushes = any(c.mode in ("rest", "soap") for c in route.channels[index:])
        signed = self.keyring.sign_envelope(body) if pushes else body
        last = "no channel tried"
        while index < len(route.channels):
            channel = route.channels[index]
            outcome, attempts, last = self._deliver_on(body, signed, rec, route, index, attempt, attempts)
            if outcome is not Outcome.EXHAUSTED:
                return
            index, attempt = index + 1, 1
            if index < len(route.channels):
                nxt = route.channels[index].name
                self.journal.record(rec.message_id, "FAILOVER", self.actor,
                                    {"from": channel.name, "to": nxt, "reason": last})
                metrics.FAILOVERS.labels(route.name, "circuit_open" if last == "circuit open" else "exhausted").inc()
        self.dead.send(body, rec, route=route, reason=f"all channels failed; last: {last}",
                       channel=route.channels[-1].name, attempts=attempts)

    def _deliver_on(self, body: bytes, signed: bytes, rec: MessageRecord, route: Route, index: int,
                    first_attempt: int, attempts: int) -> tuple[Outcome, int, str]:
        """Try one channel with ``signed`` (the body with the gateway's signature); returns the outcome,
        the message's attempt count and the last error. ``body`` is what parks or dead-letters."""
        channel = route.channels[index]
        breaker = self.breakers.get(f"{route.recipient}/{channel.name}")
        delays: dict[int, float] = {}
        state = {"attempts": attempts, "attempt": first_attempt}

        def next_delay(rs: RetryCallState) -> float:
            n = first_attempt + rs.attempt_number - 1
            if n not in delays:
                result: PushResult = rs.outcome.result()
                delays[n] = max(route.retry.delay(n), result.retry_after or 0.0)
            return delays[n]

        def stop(rs: RetryCallState) -> bool:
            n = first_attempt + rs.attempt_number - 1
            return n >= route.retry.attempts or next_delay(rs) > self.in_process_max_delay

        def before_sleep(rs: RetryCallState) -> None:
            n = first_attempt + rs.attempt_number - 1
            self.journal.record(rec.message_id, "RETRY_SCHEDULED", self.actor,
                                {"channel": channel.name, "next_attempt": n + 1, "delay_s": round(delays[n], 3),
                                 "mode": "in-process"}, status=Status.RETRYING, only_from=DELIVERABLE)
            metrics.RETRIES.labels(route.recipient, "in_process").inc()

        def sleep(seconds: float) -> None:
            if self._stopping.wait(seconds):
                raise WorkerStopping()

        def attempt_once() -> PushResult:
            if not breaker.allow():
                return PushResult(False, True, "circuit open")
            n = state["attempt"]
            state["attempt"] += 1
            state["attempts"] += 1
            if channel.mode == "soap":
                res = self.soap.push(channel, signed, rec.message_id, n)
            elif channel.mode == "registry" and self.registries is not None:
                res = self.registries.deliver(channel, rec)
            else:
                res = push(self.client, channel.url, signed, rec.message_id, channel.format, n)
            if res.delivered or not res.retryable:
                breaker.success()
            else:
                breaker.failure()
            if not res.delivered:
                outcome = "retryable" if res.retryable else "permanent"
                metrics.DELIVERY_FAILURES.labels(route.recipient, channel.name, outcome).inc()
                self.journal.record(rec.message_id, "DELIVERY_FAILED", self.actor,
                                    {"channel": channel.name, "attempt": n, "error": res.detail, "outcome": outcome},
                                    attempts=state["attempts"])
            return res

        if channel.mode == "pull":
            self.inbox.park(rec, self.actor, channel.name)
            return Outcome.DONE, attempts, "parked for pickup"
        res: PushResult = Retrying(
            retry=retry_if_result(lambda r: not r.delivered and r.retryable and r.detail != "circuit open"),
            stop=stop,
            wait=next_delay,
            before_sleep=before_sleep,
            sleep=sleep,
            retry_error_callback=lambda rs: rs.outcome.result(),
            reraise=True,
        )(attempt_once)
        attempts = state["attempts"]
        if res.delivered:
            self._delivered(rec, route, channel, attempts)
            return Outcome.DONE, attempts, res.detail
        if not res.retryable:
            return self._dead(body, rec, route, channel, f"permanent failure: {res.detail}", attempts)
        done = state["attempt"] - 1  # the channel attempt that just failed
        if res.detail == "circuit open" or done >= route.retry.attempts:
            if res.detail == "circuit open":
                self.journal.record(rec.message_id, "CIRCUIT_OPEN", self.actor, {"channel": channel.name})
            return Outcome.EXHAUSTED, attempts, res.detail
        delay = delays.get(done) or route.retry.delay(done)
        bucket = self.topology.retry_bucket(delay)
        headers = {"x-zl-route": route.name, "x-zl-channel": index, "x-zl-attempt": done + 1,
                   "x-zl-generation": rec.replays}
        self.publisher.publish(self.topology.retry_exchange(bucket), route.recipient, body,
                               properties(rec.message_id, headers))
        self.journal.record(rec.message_id, "RETRY_SCHEDULED", self.actor,
                            {"channel": channel.name, "next_attempt": done + 1, "delay_s": bucket, "mode": "queued",
                             "queue": self.topology.retry_queue(bucket)},
                            status=Status.RETRYING, only_from=DELIVERABLE)
        metrics.RETRIES.labels(route.recipient, "queued").inc()
        return Outcome.PARKED, attempts, res.detail

    def _delivered(self, rec: MessageRecord, route: Route, channel: Channel, attempts: int) -> None:
        self.journal.record(rec.message_id, "DELIVERED", self.actor, {"channel": channel.name, "url": channel.url},
                            status=Status.DELIVERED, only_from=DELIVERABLE, channel=channel.name, attempts=attempts)
        metrics.DELIVERED.labels(route.name, route.recipient, channel.name).inc()
        done = self.journal.get(rec.message_id)
        if done is not None and done.delivered_at is not None:
            metrics.LATENCY.labels(route.name).observe((done.delivered_at - rec.created_at).total_seconds())

    def _dead(self, body: bytes, rec: MessageRecord, route: Route, channel: Channel, reason: str,
              attempts: int) -> tuple[Outcome, int, str]:
        self.dead.send(body, rec, route=route, reason=reason, channel=channel.name, attempts=attempts)
        return Outcome.DONE, attempts, reason
