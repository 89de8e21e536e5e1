"""Rate limits per participant: messages per second with a burst, and bytes per second.

Two token buckets per participant. A message costs one from the message bucket and its
size from the byte bucket. REST and SOAP ask ``admit``: over either limit, nothing is
taken and the caller hears how long to wait (429 with Retry-After; a SMEV
QuoteLimitExceeded fault), so a refused message costs the gateway no parsing and the
partner nothing but a resend. MLLP asks ``debit``: the message is taken anyway and the
listener holds the ACK back for the time returned, since an HL7 sender that gets no ACK
resends and one that is disconnected reconnects at once; slowing its ACKs is what
actually slows it.

A message larger than the byte burst is let through when the byte bucket is full, and
leaves it in debt: large messages stay possible, and the average stays the limit.

The buckets live in the process that accepts: with several API processes behind one
port, each keeps its own, so a participant may reach the limit once per process
(docs/transport-security.md says how to set it then).
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, model_validator


class RateLimit(BaseModel):
    """``rate_limit`` of a participant (participants.yaml); unset: no limit."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    messages_per_second: float | None = Field(None, gt=0)
    #: Messages that may come at once after a quiet spell; default: one second's worth (at least 1).
    burst: int | None = Field(None, ge=1)
    bytes_per_second: int | None = Field(None, ge=1)
    #: Bytes that may come at once; default: one second's worth.
    bytes_burst: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _something(self) -> RateLimit:
        if self.messages_per_second is None and self.bytes_per_second is None:
            raise ValueError("give messages_per_second, bytes_per_second or both")
        if self.burst is not None and self.messages_per_second is None:
            raise ValueError("burst goes with messages_per_second")
        if self.bytes_burst is not None and self.bytes_per_second is None:
            raise ValueError("bytes_burst goes with bytes_per_second")
        return self


class _Bucket:
    def __init__(self, rate: float, capacity: float, now: float) -> None:
        self.rate = rate
        self.capacity = capacity
        self.level = capacity
        self.at = now

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.at) * self.rate)
        self.at = now

    def wait_for(self, cost: float) -> float:
        """Seconds until ``cost`` may be taken (a cost above the capacity needs a full bucket)."""
        need = min(cost, self.capacity) - self.level
        return max(0.0, need / self.rate)


@dataclass(frozen=True)
class Verdict:
    admitted: bool
    #: Seconds to wait before sending again (admit) or before answering (debit).
    wait: float
    #: Which limit spoke: "messages" or "bytes" (empty when admitted freely).
    limit: str = ""


class RateLimiter:
    """The buckets of every participant that has a limit; thread-safe."""

    def __init__(self, limits: dict[str, RateLimit], clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = {p: lim for p, lim in limits.items() if lim is not None}
        self.clock = clock
        self._buckets: dict[str, tuple[_Bucket | None, _Bucket | None]] = {}
        self._lock = threading.Lock()

    def _of(self, participant: str, now: float) -> tuple[_Bucket | None, _Bucket | None]:
        buckets = self._buckets.get(participant)
        if buckets is None:
            lim = self.limits[participant]
            messages = (_Bucket(lim.messages_per_second, float(lim.burst or max(1.0, lim.messages_per_second)), now)
                        if lim.messages_per_second else None)
            octets = (_Bucket(float(lim.bytes_per_second), float(lim.bytes_burst or lim.bytes_per_second), now)
                      if lim.bytes_per_second else None)
            buckets = self._buckets[participant] = (messages, octets)
        for b in buckets:
            if b is not None:
                b.refill(now)
        return buckets

    def _waits(self, buckets: tuple[_Bucket | None, _Bucket | None], size: int) -> tuple[float, str]:
        messages, octets = buckets
        wait_m = messages.wait_for(1) if messages else 0.0
        wait_b = octets.wait_for(size) if octets else 0.0
        return (wait_m, "messages") if wait_m >= wait_b else (wait_b, "bytes")

    def admit(self, participant: str, size: int) -> Verdict:
        """Take one message of ``size`` bytes now, or say how long to wait and take nothing."""
        if participant not in self.limits:
            return Verdict(True, 0.0)
        with self._lock:
            buckets = self._of(participant, self.clock())
            wait, which = self._waits(buckets, size)
            if wait > 0:
                return Verdict(False, wait, which)
            self._take(buckets, size)
            return Verdict(True, 0.0)

    def debit(self, participant: str, size: int) -> Verdict:
        """Take one message of ``size`` bytes whatever the buckets hold; the wait says how long to hold its answer."""
        if participant not in self.limits:
            return Verdict(True, 0.0)
        with self._lock:
            buckets = self._of(participant, self.clock())
            self._take(buckets, size)
            messages, octets = buckets
            wait_m = max(0.0, -messages.level / messages.rate) if messages else 0.0
            wait_b = max(0.0, -octets.level / octets.rate) if octets else 0.0
            wait, which = (wait_m, "messages") if wait_m >= wait_b else (wait_b, "bytes")
            return Verdict(True, wait, which if wait > 0 else "")

    @staticmethod
    def _take(buckets: tuple[_Bucket | None, _Bucket | None], size: int) -> None:
        messages, octets = buckets
        if messages:
            messages.level -= 1
        if octets:
            octets.level -= size
