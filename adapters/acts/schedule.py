"""The acts schedule: from a day of the month on, the previous month's acts are built and sent.

Building is idempotent (a period already sent is reported unchanged), so the schedule
needs no memory that survives a restart: after one, the day's run only confirms what
was sent. A period whose records changed after its act went out is reported, not
resent: a correction stays an operator's decision.
"""
from __future__ import annotations

import datetime as dt
import logging
import threading

from adapters.acts.runner import ActRunner
from gateway.config import ActsSettings

log = logging.getLogger("zdravlink.acts")


def previous_period(day: dt.date) -> str:
    first = day.replace(day=1)
    return (first - dt.timedelta(days=1)).strftime("%Y-%m")


def due(now: dt.datetime, settings: ActsSettings, done: set[str]) -> str | None:
    """The period whose acts are due at ``now``, or None."""
    if settings.schedule_day is None:
        return None
    if (now.day, now.hour) < (settings.schedule_day, settings.schedule_hour):
        return None
    period = previous_period(now.date())
    return None if period in done else period


def run_schedule(runner: ActRunner, settings: ActsSettings, stop: threading.Event, *,
                 clock: type[dt.datetime] = dt.datetime, interval: float = 60.0) -> None:
    """Check every ``interval`` seconds until ``stop`` is set."""
    done: set[str] = set()
    while True:
        period = due(clock.now(), settings, done)
        if period is not None:
            outcomes = runner.build(period)
            for o in outcomes:
                log.info("acts %s %s → %s: %s %s", period, o.code_mo, o.insurer, o.state, o.detail)
            if all(o.state != "failed" for o in outcomes):
                done.add(period)
        if stop.wait(interval):
            return
