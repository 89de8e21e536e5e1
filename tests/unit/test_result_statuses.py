"""Statuses are never raised: a test keeps its own, an order is never more final than its tests."""
from __future__ import annotations

import pytest

from adapters.hl7v2.result_statuses import OBSERVATION_STATUSES, ORDER_STATUSES, least_final, order_status


def test_every_table_code_has_a_status_and_y_z_are_no_results():
    assert set(OBSERVATION_STATUSES) == set("CDFINOPRSUWXAB")
    assert set(ORDER_STATUSES) == set("OISAPRCFX")
    assert (OBSERVATION_STATUSES["U"], OBSERVATION_STATUSES["S"], ORDER_STATUSES["A"]) == ("F", "P", "S")


@pytest.mark.parametrize("statuses,least", [
    (["F", "P"], "P"), (["C", "F"], "F"), (["C", "C"], "C"), (["F", "I", "X"], "I"), (["X", "N"], "X"),
    (["D", "W"], "W"), (["N", "D"], "N"), (["S", "P"], "S"), ([], None)])
def test_least_final(statuses, least):
    assert least_final(statuses) == least


@pytest.mark.parametrize("sent,tests,expected", [
    ("F", ["F", "F"], ("F", False)),
    ("F", ["F", "P"], ("P", True)),          # the preliminary result of the issue: never reported final
    ("F", ["I", "P", "F"], ("S", True)),     # some results still to come: partial
    ("P", ["F", "F"], ("P", False)),         # never raised either
    ("C", ["F", "C"], ("C", False)),         # a correction resending unchanged tests as F stays a correction
    ("A", ["F"], ("A", False)),
    ("F", ["X", "F"], ("F", False)),         # a cancelled test does not lower its order
    ("X", ["F"], ("X", False)),
    (None, ["P", "F"], ("P", False)),
    (None, ["I", "F"], ("S", False)),
    (None, [], (None, False)),
    ("I", [], ("I", False)),
])
def test_order_status(sent, tests, expected):
    assert order_status(sent, tests) == expected
