"""When the previous month's acts are due."""
from __future__ import annotations

import datetime as dt

from adapters.acts.schedule import due, previous_period
from gateway.config import ActsSettings


def test_previous_period_crosses_the_year():
    assert previous_period(dt.date(2027, 1, 5)) == "2026-12"
    assert previous_period(dt.date(2026, 3, 31)) == "2026-02"


def test_due_from_the_day_and_hour_once_per_period():
    s = ActsSettings(schedule_day=5, schedule_hour=3)
    assert due(dt.datetime(2026, 11, 5, 2, 59), s, set()) is None
    assert due(dt.datetime(2026, 11, 5, 3, 0), s, set()) == "2026-10"
    assert due(dt.datetime(2026, 11, 20, 1, 0), s, set()) == "2026-10"   # later days still, if missed
    assert due(dt.datetime(2026, 11, 20, 1, 0), s, {"2026-10"}) is None
    assert due(dt.datetime(2026, 11, 4, 23, 0), s, set()) is None


def test_no_schedule_means_never():
    assert due(dt.datetime(2026, 11, 28, 23, 0), ActsSettings(), set()) is None
