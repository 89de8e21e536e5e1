"""Acks leave a consumer in as few frames as they can (routing.consumer.Settlements).

Each ack frame is one command to a quorum queue's Raft leader; past 32 unapplied ones the
channel holds acks back, and a channel closed then drops them (the queue hands those
messages out again). The channel here records what would go on the wire.
"""
from __future__ import annotations

from routing.consumer import Settlements


class RecordingChannel:
    def __init__(self) -> None:
        self.frames: list[tuple[str, int, bool]] = []
        self.is_open = True

    def basic_ack(self, delivery_tag: int, multiple: bool = False) -> None:
        self.frames.append(("ack", delivery_tag, multiple))

    def basic_nack(self, delivery_tag: int, requeue: bool = True) -> None:
        assert requeue
        self.frames.append(("nack", delivery_tag, False))


def settlements(tags: range) -> tuple[Settlements, RecordingChannel]:
    ch = RecordingChannel()
    s = Settlements(ch)  # type: ignore[arg-type]
    for tag in tags:
        s.delivered(tag)
    return s, ch


def test_a_batch_done_together_is_acked_with_one_multiple_ack():
    s, ch = settlements(range(1, 129))
    for tag in reversed(range(1, 129)):  # the pool finishes them in any order
        s.decide(tag, True)
    s.flush()
    assert ch.frames == [("ack", 128, True)]
    s.flush()
    assert ch.frames == [("ack", 128, True)]  # nothing is acked twice


def test_a_done_delivery_behind_an_open_one_is_acked_alone_and_the_open_one_is_never_covered():
    s, ch = settlements(range(1, 6))
    for tag in (1, 2, 4, 5):
        s.decide(tag, True)
    s.flush()
    assert ch.frames == [("ack", 2, True), ("ack", 4, False), ("ack", 5, False)]
    s.decide(3, True)
    s.flush()
    assert ch.frames[-1] == ("ack", 3, True)


def test_a_requeue_breaks_the_run_and_goes_as_a_nack():
    s, ch = settlements(range(1, 5))
    s.decide(1, True)
    s.decide(2, False)
    s.decide(3, True)
    s.flush()
    assert ch.frames == [("ack", 1, True), ("nack", 2, False), ("ack", 3, True)]


def test_a_delivery_left_open_by_a_stopping_worker_stays_unacked():
    s, ch = settlements(range(1, 4))
    s.decide(2, True)
    s.decide(3, True)  # 1 never decided: its worker stopped, the broker hands it out again
    s.flush()
    assert ("ack", 1, False) not in ch.frames and all(not multiple for _, _, multiple in ch.frames)


def test_nothing_goes_on_a_closed_channel():
    s, ch = settlements(range(1, 3))
    s.decide(1, True)
    ch.is_open = False
    s.flush()
    assert ch.frames == []


def test_a_stop_hands_back_the_deliveries_no_worker_will_finish_then_acks_the_rest_in_one_frame():
    s, ch = settlements(range(1, 41))
    for tag in range(2, 41):
        s.decide(tag, True)
    s.decide(20, False)
    s.release()  # 1 was left open by a stopping worker: without release, 38 single acks
    assert ch.frames == [("nack", 1, False), ("ack", 19, True), ("nack", 20, False), ("ack", 40, True)]
