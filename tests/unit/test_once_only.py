"""Leases of once-only duties on SQLite and PostgreSQL: one holder at a time, taken over when it stops renewing.

The duties themselves (deadline watcher, acts schedule, sweeper) run under ``OnceOnly``
in their processes; the multi-node fault test (tests/faults/test_scale_out.py) kills a
whole node that holds them.
"""
from __future__ import annotations

import itertools
import threading
import time

import pytest
from sqlalchemy import update

from gateway.config import LeaseSettings
from gateway.journal import Journal
from gateway.journal.leases import Leases
from gateway.journal.tables import leases as lease_table
from gateway.once_only import OnceOnly


def run_out(journal: Journal, name: str) -> None:
    """The holder stopped renewing long ago (as if it had died)."""
    with journal.engine.begin() as conn:
        conn.execute(update(lease_table).where(lease_table.c.name == name)
                     .values(expires_at=Leases(journal)._now(conn).replace(year=2000)))


def test_one_holder_until_it_runs_out_or_gives_it_up(journal: Journal) -> None:
    leases = Leases(journal)
    assert leases.acquire("deadlines", "node-a:1", 30)
    assert not leases.acquire("deadlines", "node-b:2", 30)
    assert leases.acquire("deadlines", "node-a:1", 30)  # renewed
    assert leases.acquire("acts", "node-b:2", 30)  # another duty, another lease
    first = leases.all()[1]
    run_out(journal, "deadlines")
    assert leases.acquire("deadlines", "node-b:2", 30)  # taken over
    assert not leases.acquire("deadlines", "node-a:1", 30)  # the old holder finds it gone
    taken = {lease.name: lease for lease in leases.all()}["deadlines"]
    assert taken.holder == "node-b:2" and taken.acquired_at >= first.acquired_at
    leases.release("deadlines", "node-a:1")  # not the holder: nothing happens
    assert not leases.acquire("deadlines", "node-a:1", 30)
    leases.release("deadlines", "node-b:2")
    assert leases.acquire("deadlines", "node-a:1", 30)


@pytest.mark.postgres
def test_racing_nodes_take_a_free_lease_once(db_url: str) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("SQLite: one host, one writer at a time")
    Journal(db_url).migrate()
    for round_ in range(5):
        won: list[str] = []
        start = threading.Barrier(8)

        def contend(i: int, name: str = f"duty-{round_}") -> None:
            journal = Journal(db_url)
            start.wait()
            if Leases(journal).acquire(name, f"node-{i}", 30):
                won.append(f"node-{i}")
            journal.engine.dispose()

        threads = [threading.Thread(target=contend, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(won) == 1, won


class Timeline:
    """When each node ran the duty: (node, start, end)."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, float, float]] = []
        self.lock = threading.Lock()

    def duty(self, node: str):
        def run(lost: threading.Event) -> None:
            begun = time.monotonic()
            lost.wait()
            with self.lock:
                self.spans.append((node, begun, time.monotonic()))
        return run

    def assert_never_two_at_once(self) -> None:
        spans = sorted(self.spans, key=lambda s: s[1])
        for (a, _, a_end), (b, b_start, _) in itertools.pairwise(spans):
            assert a_end <= b_start, f"{a} still ran when {b} began"


class Unreachable(Leases):
    """A node cut off from the journal: every lease call fails as a lost connection would."""

    def __init__(self, journal: Journal) -> None:
        super().__init__(journal)
        self.cut = False

    def acquire(self, name: str, holder: str, ttl_seconds: float) -> bool:
        if self.cut:
            from sqlalchemy.exc import OperationalError

            raise OperationalError("SELECT", {}, ConnectionRefusedError("cut"))
        return super().acquire(name, holder, ttl_seconds)

    def release(self, name: str, holder: str) -> None:
        if not self.cut:
            super().release(name, holder)


def test_a_node_cut_off_stops_its_duty_before_another_takes_it_over(journal: Journal) -> None:
    settings = LeaseSettings(ttl_seconds=1.5, renew_seconds=0.25)
    timeline = Timeline()
    a_leases = Unreachable(journal)
    a = OnceOnly(a_leases, "sweeper", "node-a:1", settings)
    b = OnceOnly(Leases(journal), "sweeper", "node-b:1", settings)
    stop_a, stop_b = threading.Event(), threading.Event()
    ta = threading.Thread(target=a.run, args=(timeline.duty("a"), stop_a))
    ta.start()
    _wait(lambda: a.held)
    tb = threading.Thread(target=b.run, args=(timeline.duty("b"), stop_b))
    tb.start()
    time.sleep(1.0)
    assert a.held and not b.held  # b stands by while a renews
    cut_at = time.monotonic()
    a_leases.cut = True
    _wait(lambda: b.held, timeout=10)
    took_over = time.monotonic() - cut_at
    assert not a.held
    assert took_over <= settings.ttl_seconds + 2 * settings.renew_seconds + 0.5, took_over
    stop_a.set()
    stop_b.set()
    ta.join()
    tb.join()
    assert [n for n, _, _ in sorted(timeline.spans, key=lambda s: s[1])] == ["a", "b"]
    timeline.assert_never_two_at_once()


def test_a_clean_stop_hands_the_duty_over_at_once(journal: Journal) -> None:
    settings = LeaseSettings(ttl_seconds=30, renew_seconds=0.2)
    timeline = Timeline()
    a = OnceOnly(Leases(journal), "acts", "node-a:1", settings)
    b = OnceOnly(Leases(journal), "acts", "node-b:1", settings)
    stop_a, stop_b = threading.Event(), threading.Event()
    ta = threading.Thread(target=a.run, args=(timeline.duty("a"), stop_a))
    ta.start()
    _wait(lambda: a.held)
    tb = threading.Thread(target=b.run, args=(timeline.duty("b"), stop_b))
    tb.start()
    time.sleep(0.5)
    stopped_at = time.monotonic()
    stop_a.set()
    ta.join()
    _wait(lambda: b.held, timeout=5)
    assert time.monotonic() - stopped_at < 2, "a lease given up is taken over without waiting for it to run out"
    stop_b.set()
    tb.join()
    timeline.assert_never_two_at_once()


def test_renewing_must_fit_well_inside_the_lease() -> None:
    with pytest.raises(ValueError, match="at most half"):
        LeaseSettings(ttl_seconds=10, renew_seconds=6)


def _wait(check, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)
