"""Duties that must run on one node at a time, whatever the number of nodes (Camel's Master / leader election).

Every node that may run a duty runs ``OnceOnly`` for it: a standby tries the duty's lease
every ``renew_seconds``; the holder runs the duty and renews the lease as often. When the
holder cannot renew (the journal out of reach) it stops the duty once ``ttl_seconds -
renew_seconds`` have passed since it last renewed, which is before the lease can run out
and be taken by another node; when it finds the lease taken it stops at once. On SIGTERM
it stops the duty and gives the lease up, so a standby takes over within
``renew_seconds``; after a SIGKILL, within ``ttl_seconds + renew_seconds``.

A lease is not a fence: a holder that stalls for longer than its lease (a paused VM)
can wake up and finish the pass it was in while another node has started. The deadline
watcher and the sweeper keep their own guards in the journal for that (a TIMEOUT is
claimed with a guarded update; a round is sent again only from the generation the
sweeper saw); an act version is unique in the journal, but a build racing another
would already have sent its act, so the acts schedule relies on the lease alone.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from gateway.config import LeaseSettings
from gateway.journal import unavailable
from gateway.journal.leases import Leases

log = logging.getLogger(__name__)

#: A duty runs until the event is set (the lease lost, or the process stopping).
Duty = Callable[[threading.Event], None]


class OnceOnly:
    def __init__(self, leases: Leases, name: str, holder: str, settings: LeaseSettings,
                 on_change: Callable[[bool], None] | None = None) -> None:
        self.leases = leases
        self.name = name
        self.holder = holder
        self.ttl = settings.ttl_seconds
        self.renew = settings.renew_seconds
        self.on_change = on_change
        self.held = False

    def run(self, duty: Duty, stopping: threading.Event) -> None:
        """Stand by, hold and run ``duty``, lose it, stand by again, until ``stopping`` is set."""
        while not stopping.is_set():
            if self._try():
                self._hold(duty, stopping)
            if not stopping.is_set():
                stopping.wait(self.renew)

    def _try(self) -> bool:
        try:
            return self.leases.acquire(self.name, self.holder, self.ttl)
        except Exception as exc:
            if not unavailable(exc):
                log.exception("lease %s: could not be taken", self.name)
            return False

    def _hold(self, duty: Duty, stopping: threading.Event) -> None:
        renewed = time.monotonic()
        self._set(True)
        log.info("%s holds the %s lease: running it on this node", self.holder, self.name)
        lost = threading.Event()
        thread = threading.Thread(target=self._run_duty, args=(duty, lost), name=f"duty-{self.name}", daemon=True)
        thread.start()
        why = "stopping"
        while not stopping.wait(self.renew):
            if not thread.is_alive():
                why = "the duty ended by itself"
                break
            asked = time.monotonic()
            try:
                if not self.leases.acquire(self.name, self.holder, self.ttl):
                    why = "another node holds it now"
                    break
                renewed = asked
            except Exception as exc:
                if not unavailable(exc):
                    log.exception("lease %s: could not be renewed", self.name)
                if time.monotonic() - renewed >= self.ttl - self.renew:
                    why = "it could not be renewed in time"
                    break
        lost.set()
        thread.join()
        self._set(False)
        log.warning("%s let the %s lease go: %s", self.holder, self.name, why)
        try:
            self.leases.release(self.name, self.holder)
        except Exception:
            log.warning("lease %s: could not be given up; it runs out in %.0f s", self.name, self.ttl)

    def _run_duty(self, duty: Duty, lost: threading.Event) -> None:
        try:
            duty(lost)
        except Exception:
            log.exception("duty %s failed", self.name)

    def _set(self, held: bool) -> None:
        self.held = held
        if self.on_change is not None:
            self.on_change(held)
