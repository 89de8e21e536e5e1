"""Waiting for something another process does, with a deadline and a message saying what was awaited."""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import sqlalchemy as sa
from sqlalchemy.engine import Engine

#: Where a message ends up when nothing more will happen to it without an operator.
SETTLED = frozenset({"DELIVERED", "DEAD"})


def wait_for(predicate: Callable[[], object], timeout: float = 20.0, what: str = "condition",
             interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
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
