"""The delivery policy with a scripted channel: only the retry budget kills a message.

The journal is a real SQLite file; the channel calls and the broker are fakes that
record what the worker did, so each rule can be seen on its own.
"""
from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pika
import pytest
from sqlalchemy import event

from gateway.config import load_config
from gateway.journal import Journal
from routing.channels import DeliveryResult
from routing.deadletter import DeadLetterChannel
from routing.delivery import DeliveryWorker
from routing.delivery_progress import DeliveryProgress, routed_headers
from routing.topology import Topology
from tests.support import configs
from tests.unit.test_journal import make_env

OK = DeliveryResult(True, False, "HTTP 200", 200)
DOWN = DeliveryResult(False, True, "HTTP 503", 503)
REFUSED = DeliveryResult(False, False, "HTTP 400", 400)


class FakePublisher:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str, dict[str, Any]]] = []

    def publish(self, exchange: str, routing_key: str, body: bytes, props: pika.BasicProperties) -> None:
        self.sent.append((exchange, routing_key, dict(props.headers or {})))


class Script:
    """A REST channel that answers per channel name, in order; the last answer repeats."""

    sends_envelope = True

    def __init__(self, **answers: list[DeliveryResult]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, int]] = []

    def close(self) -> None:
        pass

    def deliver(self, channel, signed, rec, attempt) -> DeliveryResult:
        self.calls.append((channel.name, attempt))
        seq = self.answers[channel.name]
        return seq.pop(0) if len(seq) > 1 else seq[0]


@pytest.fixture
def world(tmp_path: Path):
    def make(script: Script, *, attempts: int = 3, threshold: int = 5, reset: float = 30.0,
             budget: float | None = None, channels: int = 2, in_process: float = 0.0,
             initial_delay: float = 10.0) -> tuple[DeliveryWorker, Journal, FakePublisher]:
        cfg_dir = tmp_path / "cfg"
        cfg_dir.mkdir(exist_ok=True)
        (cfg_dir / "participants.yaml").write_text(configs.participants("http://127.0.0.1:9/x"))
        names = ["primary", "backup"][:channels]
        (cfg_dir / "routes.yaml").write_text(configs.routes(
            channels=[(n, f"http://127.0.0.1:9/{n}") for n in names], attempts=attempts, initial_delay=initial_delay,
            max_delay=60.0, max_total_seconds=budget))
        (cfg_dir / "gateway.yaml").write_text(configs.settings(in_process_max_delay=in_process, failure_threshold=threshold,
                                                               reset_timeout=reset))
        cfg = load_config(cfg_dir)
        journal = Journal(f"sqlite:///{tmp_path / 'j.db'}")
        journal.migrate()
        pub = FakePublisher()
        topo = Topology("t")
        worker = DeliveryWorker(cfg, journal, topo, pub, DeadLetterChannel(journal, topo, pub, "t"),
                                channels={"rest": script})
        return worker, journal, pub

    return make


def routed(journal: Journal, route: str = "lab-to-clinic", channels: int = 2,
           published: bool = True) -> tuple[str, bytes, dict[str, Any]]:
    """A message as the router leaves it: published (unless the relay has not written that yet), its
    routed copy on its way, and nothing of the router's in the journal."""
    env = make_env(str(uuid.uuid4()))
    journal.accept(env, source="rest", actor="t", route=route)
    if published:
        journal.mark_published([env.message_id], "relay")
    headers = DeliveryProgress(route, 0, [0] * channels, time.time()).headers()
    return env.message_id, env.to_xml(), headers


def commits_during(journal: Journal, action: Callable[[], object]) -> int:
    count = [0]

    def counted(_conn: object) -> None:
        count[0] += 1

    event.listen(journal.engine, "commit", counted)
    try:
        action()
    finally:
        event.remove(journal.engine, "commit", counted)
    return count[0]


def kinds(journal: Journal, mid: str) -> list[str]:
    return [e.kind for e in journal.trail(mid)]


@pytest.mark.parametrize("relay_wrote_it", [True, False])
def test_the_routers_stages_are_written_in_the_commit_of_the_delivery(world, relay_wrote_it: bool) -> None:
    worker, journal, _ = world(Script(primary=[OK], backup=[OK]))
    mid, body, headers = routed(journal, published=relay_wrote_it)
    assert commits_during(journal, lambda: handle(worker, mid, body, headers)) == 1
    assert kinds(journal, mid) == ["ACCEPTED", "PUBLISHED", "ROUTED", "DELIVERED"]
    routed_event = journal.trail(mid)[2]
    assert routed_event.actor == "router" and routed_event.detail["route"] == "lab-to-clinic"
    assert routed_event.detail["channels"] == ["primary", "backup"] and "routed_at" in routed_event.detail
    rec = journal.get(mid)
    assert rec.status == "DELIVERED" and rec.route == "lab-to-clinic" and journal.verify_trail(mid)
    journal.mark_published([mid], "relay")  # a relay that writes its confirm only now adds nothing
    assert kinds(journal, mid) == ["ACCEPTED", "PUBLISHED", "ROUTED", "DELIVERED"]


def test_the_routers_stages_come_once_with_the_first_outcome_whatever_it_is(world) -> None:
    worker, journal, pub = world(Script(primary=[DOWN, REFUSED], backup=[OK]))
    mid, body, headers = routed(journal)
    handle(worker, mid, body, headers)  # a failed attempt, parked for a retry
    assert kinds(journal, mid) == ["ACCEPTED", "PUBLISHED", "ROUTED", "DELIVERY_FAILED", "RETRY_SCHEDULED"]
    handle(worker, mid, body, pub.sent[-1][2])  # the retried copy: refused for good
    assert kinds(journal, mid)[3:] == ["DELIVERY_FAILED", "RETRY_SCHEDULED", "DELIVERY_FAILED", "DEAD"]
    assert journal.verify_trail(mid)


def test_a_copy_dead_before_any_attempt_still_has_the_routers_stages(world) -> None:
    script = Script(primary=[OK], backup=[OK])
    worker, journal, _ = world(script, budget=1.0)
    mid, body, headers = routed(journal, published=False)
    headers["x-zl-since-ms"] = int((time.time() - 5) * 1000)  # routed longer ago than the route's time budget
    assert commits_during(journal, lambda: handle(worker, mid, body, headers)) == 1
    assert script.calls == [] and kinds(journal, mid) == ["ACCEPTED", "PUBLISHED", "ROUTED", "DEAD"]
    assert journal.get(mid).status == "DEAD" and journal.verify_trail(mid)


def handle(worker: DeliveryWorker, mid: str, body: bytes, headers: dict[str, Any]) -> None:
    worker.handle(body, pika.BasicProperties(message_id=mid, headers=headers))


def test_routed_headers_start_with_nothing_spent() -> None:
    cfg_route = type("R", (), {"name": "r", "channels": [1, 2, 3]})()
    h = routed_headers(cfg_route, 4)  # type: ignore[arg-type]
    assert h["x-zl-tries"] == [0, 0, 0] and h["x-zl-generation"] == 4
    assert abs(h["x-zl-since-ms"] / 1000 - time.time()) < 5 and isinstance(h["x-zl-since-ms"], int)


def test_a_failed_attempt_parks_the_message_with_what_it_has_spent(world) -> None:
    worker, journal, pub = world(Script(primary=[DOWN], backup=[OK]))
    mid, body, headers = routed(journal)
    handle(worker, mid, body, headers)
    exchange, key, h = pub.sent[-1]
    assert exchange.startswith("t.retry.") and key == "clinic" and h["x-zl-tries"] == [1, 0]
    assert journal.get(mid).status == "RETRYING"
    # The copy comes back from the retry queue: the second attempt is attempt 2 of the primary.
    handle(worker, mid, body, h)
    assert worker.channels["rest"].calls == [("primary", 1), ("primary", 2)]  # type: ignore[attr-defined]


def test_open_breakers_make_a_message_wait_without_spending_attempts(world) -> None:
    script = Script(primary=[DOWN], backup=[DOWN])
    worker, journal, pub = world(script, attempts=3, threshold=1, reset=30.0)
    first, body1, h1 = routed(journal)
    handle(worker, first, body1, h1)  # primary fails (opens), backup is tried only after primary is used up
    victims = [routed(journal) for _ in range(5)]
    worker.breakers.get("clinic/backup").failure()  # both breakers open now
    calls_before = len(script.calls)
    for mid, body, headers in victims:
        handle(worker, mid, body, headers)
    assert len(script.calls) == calls_before  # nobody called a dead endpoint
    for mid, _, _ in victims:
        rec = journal.get(mid)
        assert rec.status == "RETRYING" and rec.attempts == 0
        kinds = [e.kind for e in journal.trail(mid)]
        assert kinds.count("CIRCUIT_OPEN") == 2 and "DEAD" not in kinds
    parked = [h for _, _, h in pub.sent if h.get("x-zl-tries") == [0, 0]]
    assert len(parked) == 5 and all(h["x-zl-waits"] == 1 for h in parked)
    # Waits in a row are spaced out: the next one asks for twice the reset timeout.
    mid, body, _ = victims[0]
    handle(worker, mid, body, parked[0])
    assert pub.sent[-1][0] == "t.retry.60s" and pub.sent[-1][2]["x-zl-waits"] == 2


def test_a_breaker_that_opens_between_in_process_attempts_makes_the_message_wait_not_die(world) -> None:
    script = Script(primary=[DOWN], backup=[DOWN])
    worker, journal, pub = world(script, attempts=5, threshold=2, in_process=5.0, initial_delay=0.01)
    mid, body, headers = routed(journal)
    handle(worker, mid, body, headers)
    rec = journal.get(mid)
    assert rec.status == "RETRYING", rec.last_error
    assert script.calls == [("primary", 1), ("primary", 2), ("backup", 1), ("backup", 2)]
    assert pub.sent[-1][2]["x-zl-tries"] == [2, 2] and pub.sent[-1][0].startswith("t.retry.")


def test_a_closed_breaker_lets_the_waiting_message_through(world) -> None:
    script = Script(primary=[OK], backup=[OK])
    # The breakers open just before the message is handled and stay open long enough for a loaded
    # machine (at 0.05 s the message sometimes reached a breaker already half open).
    worker, journal, pub = world(script, threshold=1, reset=1.0)
    mid, body, headers = routed(journal)
    worker.breakers.get("clinic/primary").failure()
    worker.breakers.get("clinic/backup").failure()
    handle(worker, mid, body, headers)
    assert journal.get(mid).status == "RETRYING"
    time.sleep(1.05)
    handle(worker, mid, body, pub.sent[-1][2])
    assert journal.get(mid).status == "DELIVERED" and script.calls == [("primary", 1)]


def test_attempts_used_up_on_every_channel_is_dead(world) -> None:
    worker, journal, pub = world(Script(primary=[DOWN], backup=[DOWN]), attempts=2)
    mid, body, h = routed(journal)
    for _ in range(6):
        if journal.get(mid).status == "DEAD":
            break
        handle(worker, mid, body, h)
        h = pub.sent[-1][2]
    rec = journal.get(mid)
    assert rec.status == "DEAD" and rec.attempts == 4 and "all channels failed" in rec.last_error
    assert pub.sent[-1][0] == "t.dead"


def test_the_time_budget_ends_a_message_that_keeps_waiting(world) -> None:
    worker, journal, pub = world(Script(primary=[DOWN], backup=[DOWN]), threshold=1, budget=60.0)
    worker.breakers.get("clinic/primary").failure()
    worker.breakers.get("clinic/backup").failure()
    mid, body, h = routed(journal)
    h["x-zl-since-ms"] = int((time.time() - 61) * 1000)
    handle(worker, mid, body, h)
    rec = journal.get(mid)
    assert rec.status == "DEAD" and "time budget of 60 s is used up" in rec.last_error


def test_a_wait_never_outlasts_the_time_budget(world) -> None:
    worker, journal, pub = world(Script(primary=[DOWN], backup=[DOWN]), threshold=1, reset=3600.0, budget=4.0)
    worker.breakers.get("clinic/primary").failure()
    worker.breakers.get("clinic/backup").failure()
    mid, body, h = routed(journal)
    handle(worker, mid, body, h)
    assert pub.sent[-1][0] == "t.retry.5s"  # woken at the budget's end, not in an hour


def test_a_permanent_refusal_is_dead_at_once(world) -> None:
    worker, journal, pub = world(Script(primary=[REFUSED], backup=[OK]))
    mid, body, h = routed(journal)
    handle(worker, mid, body, h)
    rec = journal.get(mid)
    assert rec.status == "DEAD" and rec.last_error.startswith("permanent failure: HTTP 400")


def test_a_stale_copy_of_an_earlier_generation_is_dropped(world) -> None:
    script = Script(primary=[OK], backup=[OK])
    worker, journal, pub = world(script)
    mid, body, h = routed(journal)
    with journal.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE messages SET generation = 1 WHERE message_id = ?", (mid,))
    handle(worker, mid, body, h)
    assert script.calls == [] and journal.get(mid).status == "PUBLISHED" and "ROUTED" not in kinds(journal, mid)


def test_a_copy_from_an_earlier_version_keeps_its_channel_and_attempt() -> None:
    route = type("R", (), {"name": "r", "channels": [1, 2], "retry": type("P", (), {"attempts": 4})()})()
    p = DeliveryProgress.from_headers({"x-zl-route": "r", "x-zl-channel": 1, "x-zl-attempt": 3}, route)  # type: ignore[arg-type]
    assert p.tries == [4, 2]
