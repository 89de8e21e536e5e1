"""Workers wait for the journal instead of failing messages while it is out of reach.

A message handler that cannot reach the journal used to raise, its message went back
to the queue at once, and the quorum queue's delivery limit (20) was used up in
milliseconds: RabbitMQ dead-lettered an accepted message that the journal still
showed in flight, and nobody ever delivered it. Now the thread that meets an
unreachable journal holds its message (unacked, so RabbitMQ counts no redelivery) and
waits until the journal answers; with every thread waiting, the prefetch limit stops
the flow of new messages. The wait is logged once per outage and shown in
``zl_journal_waiting_threads{role}``.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from gateway.journal import Journal, unavailable
from monitoring import metrics
from zdravlink.errors import Interrupt

log = logging.getLogger(__name__)
T = TypeVar("T")


class WorkerStopping(Interrupt):
    """The worker is shutting down while a message is held: leave it unacked for redelivery."""


class JournalGate:
    def __init__(self, journal: Journal, stopping: threading.Event, role: str, max_backoff: float = 5.0) -> None:
        self.journal = journal
        self.stopping = stopping
        self.role = role
        self.max_backoff = max_backoff
        self._lock = threading.Lock()
        self._waiting = 0
        self._down_since: float | None = None

    def wait(self, cause: BaseException) -> None:
        """Block until the journal answers a ping; raise WorkerStopping if the worker stops first."""
        with self._lock:
            self._waiting += 1
            if self._down_since is None:
                self._down_since = time.monotonic()
                log.warning("%s: the journal is out of reach (%s: %s); holding messages until it answers",
                            self.role, type(cause).__name__, str(cause).splitlines()[0][:200])
        metrics.JOURNAL_WAITING.labels(self.role).inc()
        try:
            backoff = 0.2
            while True:
                if self.stopping.wait(backoff):
                    raise WorkerStopping()
                try:
                    self.journal.ping()
                    break
                except Exception as exc:
                    if not unavailable(exc):
                        raise
                backoff = min(backoff * 2, self.max_backoff)
        finally:
            metrics.JOURNAL_WAITING.labels(self.role).dec()
            with self._lock:
                self._waiting -= 1
                if self._waiting == 0 and self._down_since is not None:
                    log.warning("%s: the journal answers again after %.1f s", self.role,
                                time.monotonic() - self._down_since)
                    self._down_since = None

    def until_written(self, write: Callable[[], T]) -> T:
        """Run a journal write, waiting out outages; for writes that follow an action already taken."""
        while True:
            try:
                return write()
            except Exception as exc:
                if not unavailable(exc):
                    raise
                self.wait(exc)
