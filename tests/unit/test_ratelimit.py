"""Rate limits: two token buckets per participant, on a clock the test moves (gateway.ratelimit)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.ratelimit import RateLimit, RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limiter(clock: Clock, **limit: float) -> RateLimiter:
    return RateLimiter({"lab": RateLimit.model_validate(limit)}, clock=clock)


def test_a_burst_then_the_rate_and_a_refusal_takes_nothing():
    clock = Clock()
    rl = limiter(clock, messages_per_second=5, burst=5)
    assert all(rl.admit("lab", 100).admitted for _ in range(5))
    refused = rl.admit("lab", 100)
    assert (refused.admitted, refused.limit) == (False, "messages")
    assert refused.wait == pytest.approx(0.2)
    # refused again at once: nothing was taken by the refusal, the wait is the same
    assert rl.admit("lab", 100).wait == pytest.approx(0.2)
    clock.now += 0.2
    assert rl.admit("lab", 100).admitted
    assert not rl.admit("lab", 100).admitted
    clock.now += 10  # a quiet spell refills up to the burst, no further
    assert sum(rl.admit("lab", 100).admitted for _ in range(8)) == 5


def test_bytes_per_second_and_a_message_larger_than_the_burst():
    clock = Clock()
    rl = limiter(clock, bytes_per_second=1000)  # burst: one second's worth
    assert rl.admit("lab", 600).admitted
    refused = rl.admit("lab", 600)
    assert (refused.admitted, refused.limit) == (False, "bytes") and refused.wait == pytest.approx(0.2)
    clock.now += 0.4
    # 5,000 bytes, more than the whole burst: passes once the bucket is full, and leaves it in debt
    assert not rl.admit("lab", 5000).admitted
    clock.now += 1
    assert rl.admit("lab", 5000).admitted
    debt = rl.admit("lab", 1)
    assert not debt.admitted and debt.wait == pytest.approx(4.0, abs=0.01)  # the average stays the limit


def test_the_slower_of_both_limits_speaks():
    clock = Clock()
    rl = limiter(clock, messages_per_second=100, bytes_per_second=1000)
    assert rl.admit("lab", 900).admitted
    verdict = rl.admit("lab", 900)
    assert (verdict.admitted, verdict.limit) == (False, "bytes")


def test_debit_takes_whatever_and_says_how_long_to_hold_the_answer():
    """MLLP: the message is accepted, its ACK held back so the lab's pace becomes the limit."""
    clock = Clock()
    rl = limiter(clock, messages_per_second=2, burst=1)
    assert rl.debit("lab", 100).wait == 0
    waits = [rl.debit("lab", 100).wait for _ in range(3)]
    assert waits == pytest.approx([0.5, 1.0, 1.5])
    assert all(rl.debit("lab", 100).admitted for _ in range(3))


def test_participants_without_a_limit_and_each_their_own_buckets():
    clock = Clock()
    rl = RateLimiter({"lab": RateLimit(messages_per_second=1, burst=1), "other": RateLimit(messages_per_second=1)},
                     clock=clock)
    assert rl.admit("lab", 1).admitted and not rl.admit("lab", 1).admitted
    assert rl.admit("other", 1).admitted  # lab's flood does not touch other's bucket
    assert all(rl.admit("clinic", 10**9).admitted for _ in range(100))  # no limit configured


@pytest.mark.parametrize(("limit", "message"), [
    ({}, "messages_per_second, bytes_per_second or both"),
    ({"bytes_per_second": 10, "burst": 3}, "burst goes with messages_per_second"),
    ({"messages_per_second": 1, "bytes_burst": 3}, "bytes_burst goes with bytes_per_second"),
    ({"messages_per_second": 0}, "greater than 0"),
])
def test_a_limit_that_says_nothing_or_contradicts_itself_is_refused(limit, message):
    with pytest.raises(ValueError, match=message):
        RateLimit.model_validate(limit)


# ---- shared between the processes of a host --------------------------------------------------------

SPEND = """
import sys
from pathlib import Path
from gateway.ratelimit import RateLimit, RateLimiter
limits = {"lab": RateLimit(messages_per_second=0.01, burst=5), "other": RateLimit(messages_per_second=0.01, burst=5)}
rl = RateLimiter(limits, shared_dir=Path(sys.argv[1]))
print(sum(rl.admit(sys.argv[2], 10).admitted for _ in range(int(sys.argv[3]))))
"""


def spend_elsewhere(shared: Path, participant: str, n: int) -> int:
    """Admit ``n`` messages of ``participant`` in another process; how many it got through."""
    done = subprocess.run([sys.executable, "-c", SPEND, str(shared), participant, str(n)], capture_output=True,
                          text=True, timeout=60, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr
    return int(done.stdout)


def test_processes_given_one_directory_share_each_participants_buckets(tmp_path: Path) -> None:
    limits = {"lab": RateLimit(messages_per_second=0.01, burst=5), "other": RateLimit(messages_per_second=0.01, burst=5)}
    assert spend_elsewhere(tmp_path, "lab", 3) == 3
    here = RateLimiter(limits, shared_dir=tmp_path)
    assert sum(here.admit("lab", 10).admitted for _ in range(5)) == 2  # the other process took 3 of the burst
    assert spend_elsewhere(tmp_path, "lab", 5) == 0  # and this one the rest
    assert spend_elsewhere(tmp_path, "other", 6) == 5  # another participant's slot is its own
    apart = RateLimiter(limits, shared_dir=tmp_path / "another-gateway")
    assert apart.admit("lab", 10).admitted


def test_another_configuration_or_a_slot_from_before_a_reboot_starts_full(tmp_path: Path) -> None:
    clock = Clock()
    limits = {"lab": RateLimit(messages_per_second=1, burst=2)}
    first = RateLimiter(limits, clock=clock, shared_dir=tmp_path)
    assert [first.admit("lab", 1).admitted for _ in range(3)] == [True, True, False]
    changed = RateLimiter({"lab": RateLimit(messages_per_second=1, burst=3)}, clock=clock, shared_dir=tmp_path)
    assert changed.admit("lab", 1).admitted  # its own file: the other limits' levels mean nothing to it
    clock.now -= 500  # the monotonic clock began again (a reboot; /run is emptied at boot, var/run may not be)
    assert first.admit("lab", 1).admitted
