"""Circuit breaker per endpoint (Camel's and Resilience4j's pattern, kept small).

CLOSED: calls go through; ``failure_threshold`` consecutive failures open it.
OPEN: calls are refused (the delivery fails over) until ``reset_timeout`` passes.
HALF_OPEN: one trial call is let through; success closes, failure re-opens.
State lives in each delivery worker process: a worker learns of a dead endpoint from
its own failures, which costs a few extra attempts per process but needs no shared store.

An open breaker never decides a message's fate: the delivery worker fails over to the
next channel, or parks the message until ``retry_in()`` says a trial may go through.
A parked message may come back to another worker process whose breaker is closed; it
is tried there, and that attempt counts like any other (docs/RELIABILITY.md).
"""
from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable


class State(enum.IntEnum):
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class CircuitBreaker:
    def __init__(
        self,
        failure_threshold: int,
        reset_timeout: float,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[State], None] | None = None,
    ) -> None:
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self._clock = clock
        self._on_change = on_change
        self._lock = threading.Lock()
        self._state = State.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._trial_in_flight = False

    @property
    def state(self) -> State:
        with self._lock:
            if self._state is State.OPEN and self._clock() - self._opened_at >= self.reset_timeout:
                return State.HALF_OPEN
            return self._state

    def _set(self, state: State) -> None:
        if state is not self._state:
            self._state = state
            if self._on_change:
                self._on_change(state)

    def retry_in(self) -> float:
        """Seconds until this breaker lets a call through again (0 when it would now)."""
        with self._lock:
            if self._state is not State.OPEN:
                return 0.0
            return max(0.0, self.reset_timeout - (self._clock() - self._opened_at))

    def allow(self) -> bool:
        """May a call go to this endpoint now?"""
        with self._lock:
            if self._state is State.CLOSED:
                return True
            if self._state is State.OPEN:
                if self._clock() - self._opened_at < self.reset_timeout:
                    return False
                self._set(State.HALF_OPEN)
            if self._trial_in_flight:
                return False
            self._trial_in_flight = True
            return True

    def success(self) -> None:
        with self._lock:
            self._failures = 0
            self._trial_in_flight = False
            self._set(State.CLOSED)

    def failure(self) -> None:
        with self._lock:
            self._failures += 1
            self._trial_in_flight = False
            if self._state is State.HALF_OPEN or self._failures >= self.failure_threshold:
                self._opened_at = self._clock()
                self._set(State.OPEN)


class BreakerBoard:
    """One breaker per endpoint key, created on first use."""

    def __init__(self, failure_threshold: int, reset_timeout: float,
                 on_change: Callable[[str, State], None] | None = None) -> None:
        self._args = (failure_threshold, reset_timeout)
        self.reset_timeout = reset_timeout
        self._on_change = on_change
        self._breakers: dict[str, CircuitBreaker] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> CircuitBreaker:
        with self._lock:
            br = self._breakers.get(key)
            if br is None:
                on_change = self._on_change
                notify = (lambda s: on_change(key, s)) if on_change else None
                br = self._breakers[key] = CircuitBreaker(*self._args, on_change=notify)
            return br
