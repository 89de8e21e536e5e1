"""The outbox relay's idle backoff: an idle gateway polls its journal rarely, work brings it back at once.

A fake journal counts the polls (a unit test: the relay's loop is what is under test, and it never
reaches the broker because the fake publishes nothing). The bounds contrast with what the loop
would do without the backoff, so a loaded machine, which only makes polls rarer, cannot fail them.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest
from pydantic import ValidationError

from gateway.config import RelaySettings
from routing.relay import OutboxRelay
from routing.topology import Topology


class CountingJournal:
    """Answers each poll with the next count from ``found`` (then 0), and notes when it was asked."""

    def __init__(self) -> None:
        self.polls: list[float] = []
        self.found: list[int] = []
        self.polled = threading.Condition()

    def relay(self, limit: int, publish: Callable[..., list[str]], actor: str) -> int:
        with self.polled:
            self.polls.append(time.monotonic())
            self.polled.notify_all()
            return self.found.pop(0) if self.found else 0

    def wait_polls(self, count: int, timeout: float) -> bool:
        with self.polled:
            return self.polled.wait_for(lambda: len(self.polls) >= count, timeout)


@pytest.fixture
def relay_with() -> Iterator[Callable[[RelaySettings], tuple[OutboxRelay, CountingJournal]]]:
    started: list[OutboxRelay] = []

    def make(settings: RelaySettings) -> tuple[OutboxRelay, CountingJournal]:
        journal = CountingJournal()
        relay = OutboxRelay(journal, ("amqp://guest:guest@127.0.0.1:1/%2F",), Topology("zlt-unit"),  # type: ignore[arg-type]
                            settings)
        relay.start()
        started.append(relay)
        return relay, journal

    yield make
    for relay in started:
        relay.stop()


def test_an_idle_relay_polls_ever_less_often_up_to_its_cap(relay_with):
    # Without the backoff, one second at 10 ms is about 100 polls; with it, 10, 20, 40, 80, then every
    # 160 ms: about 9 (a slow machine makes them fewer, never more).
    _relay, journal = relay_with(RelaySettings(poll_interval_seconds=0.01, idle_poll_max_seconds=0.16))
    time.sleep(1.0)
    assert 2 <= len(journal.polls) <= 15, len(journal.polls)
    gaps = [b - a for a, b in zip(journal.polls, journal.polls[1:], strict=False)]
    assert max(gaps) >= 0.15  # it reached its cap


def test_an_accept_in_the_process_wakes_a_relay_that_has_backed_off(relay_with):
    relay, journal = relay_with(RelaySettings(poll_interval_seconds=0.01, idle_poll_max_seconds=60))
    assert journal.wait_polls(7, 10)  # backed off to 0.64 s, and on towards the minute
    seen = len(journal.polls)
    relay.wake()
    assert journal.wait_polls(seen + 1, 10)  # well before the minute the backoff would wait


def test_work_found_brings_the_poll_interval_back(relay_with):
    relay, journal = relay_with(RelaySettings(poll_interval_seconds=0.01, idle_poll_max_seconds=60))
    assert journal.wait_polls(7, 10)
    journal.found = [3]  # messages accepted elsewhere (the MLLP worker), found by the next poll
    seen = len(journal.polls)
    relay.wake()
    # The poll that finds work, then the next one at the 10 ms interval, not after the minute.
    assert journal.wait_polls(seen + 2, 10)


def test_a_cap_below_the_interval_is_refused():
    with pytest.raises(ValidationError, match="idle_poll_max_seconds must be at least poll_interval_seconds"):
        RelaySettings(poll_interval_seconds=1.0, idle_poll_max_seconds=0.5)
