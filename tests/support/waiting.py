"""Waiting for something another process does, with a deadline and a message saying what was awaited."""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator

import sqlalchemy as sa
from sqlalchemy.engine import Engine

#: Where a message ends up when nothing more will happen to it without an operator.
SETTLED = frozenset({"DELIVERED", "DEAD"})


def pauses(first: float = 0.05, longest: float = 0.5) -> Iterator[float]:
    """The pauses between looks: short at first (most waits end within a second), then longer.

    Each look wakes a sleeping test process and usually asks a gateway process something (a status
    with its trail, a query); on this 2-core machine each wake-up of a sleeping process costs
    milliseconds of a core (docs/PERFORMANCE.md, an idle gateway). Ten looks a second through a
    wait of seconds cost the other tests a tenth of a core; growing to two a second, a fifth of that.
    """
    pause = first
    while True:
        yield pause
        pause = min(pause * 1.5, max(longest, first))


def wait_for(predicate: Callable[[], object], timeout: float = 20.0, what: str = "condition",
             interval: float = 0.05) -> None:
    """``interval``: the first pause (``pauses``)."""
    deadline = time.monotonic() + timeout
    for pause in pauses(interval):
        if predicate():
            return
        if time.monotonic() >= deadline:
            break
        time.sleep(pause)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def wait_settled(engine: Engine, accepted: Iterable[str], timeout: float) -> dict[str, str]:
    """Every message's status once each of ``accepted`` is DELIVERED or DEAD, or when ``timeout`` runs out.

    No error on the timeout: the fault tests account for what did not settle, message by message.
    """
    wanted = list(accepted)
    deadline = time.monotonic() + timeout
    while True:
        with engine.connect() as conn:
            rows = dict(conn.execute(sa.text("SELECT message_id, status FROM messages")).all())
        if all(rows.get(m) in SETTLED for m in wanted) or time.monotonic() > deadline:
            return rows
        time.sleep(0.5)
