"""The sweeper's rule on a real journal (SQLite and PostgreSQL); the broker's answers and the clock are the test's.

A copy a consumer holds unacknowledged is not counted in its queue's depth, so a queue
with a consumer may hide a copy being delivered right now: such a message is swept only
when a second look, one attempt's timeout later, finds it unchanged.
"""
from __future__ import annotations

import uuid

from gateway.envelope import Envelope
from gateway.journal import Journal
from gateway.xmlsafe import parse_xml
from routing.inspect import QueueLook
from routing.sweeper import Sweeper
from routing.topology import Topology

TOPOLOGY = Topology("zlu")
ROUTE, CLINIC = TOPOLOGY.route_queue, TOPOLOGY.deliver_queue("clinic")
CONFIRM = 5.0


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now



def published(journal: Journal) -> str:
    payload = parse_xml(b'<n:Notice xmlns:n="urn://zdravlink/types/notice/1.0"><n:Text>x</n:Text></n:Notice>')
    env = Envelope(message_id=str(uuid.uuid1()), sender="lab", recipient="clinic",
                   message_type="urn://zdravlink/types/notice/1.0", payload=payload)
    journal.accept(env, source="rest", actor="t", route="lab-to-clinic")
    journal.mark_published([env.message_id], "relay")
    return env.message_id


def sweeper(journal: Journal, looks: dict[str, QueueLook], clock: Clock) -> Sweeper:
    return Sweeper(journal, TOPOLOGY, lambda: dict(looks), stuck_after_seconds=0.0, confirm_after_seconds=CONFIRM,
                   clock=clock)


def test_a_message_whose_queues_have_no_consumer_is_swept_at_once(journal: Journal) -> None:
    mid = published(journal)
    s = sweeper(journal, {ROUTE: QueueLook(0, 0), CLINIC: QueueLook(0, 0)}, Clock())
    assert s.sweep_once() == [mid]
    assert journal.get(mid).generation == 1 and s.awaiting_confirmation == 0


def test_a_message_a_consumer_may_hold_is_swept_only_when_still_unchanged_one_timeout_later(journal: Journal) -> None:
    mid = published(journal)
    clock = Clock()
    s = sweeper(journal, {ROUTE: QueueLook(0, 1), CLINIC: QueueLook(0, 2)}, clock)
    assert s.sweep_once() == [] and s.awaiting_confirmation == 1
    assert "may hold its copy" in s.stuck()[0].why
    clock.now += CONFIRM - 0.5
    assert s.sweep_once() == [] and journal.get(mid).generation == 0
    clock.now += 0.5
    assert s.sweep_once() == [mid] and s.awaiting_confirmation == 0
    assert journal.trail(mid)[-1].kind == "SWEPT"


def test_a_suspect_that_moved_between_the_two_looks_starts_again(journal: Journal) -> None:
    mid = published(journal)
    clock = Clock()
    s = sweeper(journal, {ROUTE: QueueLook(0, 1), CLINIC: QueueLook(0, 1)}, clock)
    assert s.sweep_once() == []
    journal.record(mid, "DELIVERY_FAILED", "delivery-1", {"channel": "rest", "attempt": 1})  # its worker wrote
    clock.now += CONFIRM
    assert s.sweep_once() == [] and s.awaiting_confirmation == 1  # seen anew, not confirmed
    clock.now += CONFIRM
    assert s.sweep_once() == [mid]


def test_a_copy_ready_in_a_queue_or_a_queue_the_broker_did_not_describe_is_never_swept(journal: Journal) -> None:
    mid = published(journal)
    clock = Clock()
    waiting = sweeper(journal, {ROUTE: QueueLook(0, 0), CLINIC: QueueLook(1, 0)}, clock)
    unknown = sweeper(journal, {ROUTE: QueueLook(0, 0)}, clock)
    for _ in range(2):
        assert waiting.sweep_once() == [] and unknown.sweep_once() == []
        clock.now += CONFIRM
    assert journal.get(mid).generation == 0 and waiting.awaiting_confirmation == unknown.awaiting_confirmation == 0
