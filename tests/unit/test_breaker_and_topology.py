from __future__ import annotations

from routing.breaker import CircuitBreaker, State
from routing.topology import RETRY_BUCKETS, Topology


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_breaker_opens_after_threshold_and_closes_after_a_good_trial() -> None:
    clock = Clock()
    changes: list[State] = []
    br = CircuitBreaker(failure_threshold=3, reset_timeout=10, clock=clock, on_change=changes.append)
    for _ in range(2):
        assert br.allow()
        br.failure()
    assert br.state is State.CLOSED
    assert br.allow()
    br.failure()
    assert br.state is State.OPEN and not br.allow()
    clock.t = 9.9
    assert not br.allow()
    clock.t = 10.0
    assert br.allow()          # the half-open trial
    assert not br.allow()      # only one trial at a time
    br.success()
    assert br.state is State.CLOSED and br.allow()
    assert changes == [State.OPEN, State.HALF_OPEN, State.CLOSED]


def test_a_failed_trial_reopens_for_a_full_timeout() -> None:
    clock = Clock()
    br = CircuitBreaker(failure_threshold=1, reset_timeout=5, clock=clock)
    br.failure()
    clock.t = 5
    assert br.allow()
    br.failure()
    assert br.state is State.OPEN
    clock.t = 9.9
    assert not br.allow()


def test_success_resets_the_consecutive_count() -> None:
    br = CircuitBreaker(failure_threshold=2, reset_timeout=5, clock=Clock())
    br.failure()
    br.success()
    br.failure()
    assert br.state is State.CLOSED


def test_retry_delays_round_up_to_a_bucket() -> None:
    assert Topology.retry_bucket(0.2) == 1
    assert Topology.retry_bucket(1.0) == 1
    assert Topology.retry_bucket(6.5) == 10
    assert Topology.retry_bucket(10_000) == RETRY_BUCKETS[-1]


def test_names_are_prefixed_and_distinct() -> None:
    t = Topology("zl")
    names = t.all_queues(["mis", "lab"])
    assert len(names) == len(set(names)) and all(n.startswith("zl.") for n in names)
    assert t.deliver_queue("mis") == "zl.deliver.mis" and t.retry_queue(30) == "zl.retry.30s"
