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

The processes of one gateway on a host (its API processes behind one port, its MLLP
listener) share their buckets when they are given one state file (``ZL_RUN_DIR``, which
``zdravlink run`` and the systemd units set): the levels live in that file, each
participant's in a slot of its own, read and written under a lock on that slot
(``fcntl.lockf``), on the host's one monotonic clock. So the limit holds per host however
many processes accept. Without a file each process keeps its own. Nodes on other hosts
keep theirs (docs/transport-security.md).
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import mmap
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from zdravlink.errors import ConfigurationError


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


_Buckets = tuple[_Bucket | None, _Bucket | None]


class SharedLevels:
    """The buckets' levels in a file the processes of one gateway on a host map together.

    A slot per participant: the message bucket's level and time, the byte bucket's. A slot
    whose time is 0 (a new file) or later than now (a file from before a reboot: the
    monotonic clock started again) is read as a full bucket.
    """

    SLOT = struct.Struct("<4d")
    #: One per file in a process: POSIX record locks do not exclude the threads of one process, so
    #: its limiters of one file share this object and its thread lock.
    _opened: dict[Path, SharedLevels] = {}
    _opening = threading.Lock()

    @classmethod
    def open(cls, directory: Path, limits: dict[str, RateLimit]) -> SharedLevels:
        order = sorted(limits)
        # Named after the limits, so processes running another configuration never read these slots.
        digest = hashlib.sha256(json.dumps([[p, limits[p].model_dump()] for p in order]).encode()).hexdigest()[:16]
        path = (directory / f"ratelimit-{digest}.bin").resolve()
        with cls._opening:
            if path not in cls._opened:
                try:
                    cls._opened[path] = cls(path, order)
                except OSError as exc:
                    raise ConfigurationError(f"ZL_RUN_DIR {directory}: the rate limit buckets cannot be kept there "
                                             f"({exc.strerror or exc})") from exc
            return cls._opened[path]

    def __init__(self, path: Path, order: list[str]) -> None:
        self.path = path
        self.slots = {p: i for i, p in enumerate(order)}
        self._lock = threading.Lock()
        size = self.SLOT.size * max(1, len(order))
        path.parent.mkdir(parents=True, exist_ok=True)
        # Kept open for the process's life: closing any descriptor of the file would drop every lock
        # this process holds on it (POSIX record locks).
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.lockf(self._fd, fcntl.LOCK_EX)
        try:
            if os.fstat(self._fd).st_size < size:
                os.ftruncate(self._fd, size)  # zeros: full buckets
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN)
        self._map = mmap.mmap(self._fd, size)

    @contextmanager
    def held(self, participant: str, buckets: _Buckets, now: float) -> Iterator[None]:
        """Load ``buckets`` from the participant's slot, locked against the other processes; store them after."""
        offset = self.SLOT.size * self.slots[participant]
        with self._lock:
            fcntl.lockf(self._fd, fcntl.LOCK_EX, self.SLOT.size, offset)
            try:
                levels = self.SLOT.unpack_from(self._map, offset)
                for bucket, (level, at) in zip(buckets, (levels[0:2], levels[2:4]), strict=True):
                    if bucket is not None:
                        bucket.level, bucket.at = (bucket.capacity, now) if not 0 < at <= now else (level, at)
                yield
                stored = [v for b in buckets for v in ((b.level, b.at) if b is not None else (0.0, 0.0))]
                self.SLOT.pack_into(self._map, offset, *stored)
            finally:
                fcntl.lockf(self._fd, fcntl.LOCK_UN, self.SLOT.size, offset)


class RateLimiter:
    """The buckets of every participant that has a limit; thread-safe, and shared between processes
    when given a ``shared_dir``."""

    def __init__(self, limits: dict[str, RateLimit], clock: Callable[[], float] = time.monotonic,
                 shared_dir: Path | None = None) -> None:
        self.limits = {p: lim for p, lim in limits.items() if lim is not None}
        self.clock = clock
        self._buckets: dict[str, _Buckets] = {}
        self._lock = threading.Lock()
        self.shared = SharedLevels.open(shared_dir, self.limits) if shared_dir is not None and self.limits else None

    @contextmanager
    def _held(self, participant: str) -> Iterator[_Buckets]:
        """The participant's buckets, refilled to now, for as long as the caller takes from them."""
        with self._lock:
            now = self.clock()
            buckets = self._buckets.get(participant)
            if buckets is None:
                lim = self.limits[participant]
                messages = (_Bucket(lim.messages_per_second, float(lim.burst or max(1.0, lim.messages_per_second)),
                                    now) if lim.messages_per_second else None)
                octets = (_Bucket(float(lim.bytes_per_second), float(lim.bytes_burst or lim.bytes_per_second), now)
                          if lim.bytes_per_second else None)
                buckets = self._buckets[participant] = (messages, octets)
            if self.shared is None:
                self._refill(buckets, now)
                yield buckets
                return
            with self.shared.held(participant, buckets, now):
                self._refill(buckets, now)
                yield buckets

    @staticmethod
    def _refill(buckets: _Buckets, now: float) -> None:
        for b in buckets:
            if b is not None:
                b.refill(now)

    def _waits(self, buckets: _Buckets, size: int) -> tuple[float, str]:
        messages, octets = buckets
        wait_m = messages.wait_for(1) if messages else 0.0
        wait_b = octets.wait_for(size) if octets else 0.0
        return (wait_m, "messages") if wait_m >= wait_b else (wait_b, "bytes")

    def admit(self, participant: str, size: int) -> Verdict:
        """Take one message of ``size`` bytes now, or say how long to wait and take nothing."""
        if participant not in self.limits:
            return Verdict(True, 0.0)
        with self._held(participant) as buckets:
            wait, which = self._waits(buckets, size)
            if wait > 0:
                return Verdict(False, wait, which)
            self._take(buckets, size)
            return Verdict(True, 0.0)

    def debit(self, participant: str, size: int) -> Verdict:
        """Take one message of ``size`` bytes whatever the buckets hold; the wait says how long to hold its answer."""
        if participant not in self.limits:
            return Verdict(True, 0.0)
        with self._held(participant) as buckets:
            self._take(buckets, size)
            messages, octets = buckets
            wait_m = max(0.0, -messages.level / messages.rate) if messages else 0.0
            wait_b = max(0.0, -octets.level / octets.rate) if octets else 0.0
            wait, which = (wait_m, "messages") if wait_m >= wait_b else (wait_b, "bytes")
            return Verdict(True, wait, which if wait > 0 else "")

    @staticmethod
    def _take(buckets: _Buckets, size: int) -> None:
        messages, octets = buckets
        if messages:
            messages.level -= 1
        if octets:
            octets.level -= size
