"""Result statuses: HL7's codes onto the lab result's, and "least final" for orders and messages.

The one rule: a status is never raised. A preliminary result reported as final is a
clinician acting on a number the lab has not signed off, so

* each test keeps the status its OBX-11 says;
* an order is never more final than its tests: OBR-25 = F over tests P and F comes out P,
  over tests I, P and F (some results in, others still registered) S, partial — with a
  warning that says so;
* the message's status is the least final of its orders.

Corrected (C) and amended (A) are final statuses too: a correction that resends unchanged
tests as F stays a correction. Statuses without a result (X, N, D, W) do not pull the
others down; an order or message made only of them takes the first of X, N, W, D present.

Tables: OBX-11 is HL7 table 0085, OBR-25 table 0123 (v2.5.1; A and B of 0085 are v2.7's).
"""
from __future__ import annotations

from collections.abc import Iterable

#: HL7 table 0085 (OBX-11) → lab result status.
OBSERVATION_STATUSES = {
    "C": "C", "D": "D", "F": "F", "I": "I", "N": "N", "O": "I", "P": "P", "R": "R", "S": "P", "U": "F",
    "W": "W", "X": "X", "A": "A", "B": "A",
}
#: HL7 table 0123 (OBR-25) → lab result status. Y (no order on record) and Z (no record of
#: the patient) answer a query; they are not results, and a message carrying them is refused.
ORDER_STATUSES = {"O": "I", "I": "I", "S": "I", "A": "S", "P": "P", "R": "R", "C": "C", "F": "F", "X": "X"}

_RANK = {"I": 0, "R": 1, "S": 2, "P": 3, "F": 4, "A": 5, "C": 6}
_FINAL = {"F", "A", "C"}
_WITHOUT_RESULT = ("X", "N", "W", "D")


def has_result(status: str) -> bool:
    return status in _RANK


def is_final(status: str) -> bool:
    return status in _FINAL


def least_final(statuses: Iterable[str]) -> str | None:
    """The least final of ``statuses`` (F before C: a message with one corrected and one final
    order is final); without any result status, the first of X, N, W, D present."""
    given = list(statuses)
    with_result = [s for s in given if has_result(s)]
    if with_result:
        return min(with_result, key=_RANK.__getitem__)
    return next((s for s in _WITHOUT_RESULT if s in given), None)


def results_status(tests: Iterable[str]) -> str | None:
    """What an order's tests say about it: I while none has a result, S (partial) while some
    have one and others are still registered, else the least final of them."""
    with_result = [s for s in tests if has_result(s)]
    if not with_result:
        return None
    if "I" in with_result and any(s != "I" for s in with_result):
        return "S"
    return least_final(with_result)


def order_status(sent: str | None, tests: list[str]) -> tuple[str | None, bool]:
    """The order's status from OBR-25 (``sent``, already mapped) and its tests' statuses, and
    whether it had to be lowered below what OBR-25 says.

    Lowered only when OBR-25 is more final in kind: a final order (F, A, C) over a test that is
    not final, or a preliminary one over a test still registered. Between final statuses the
    order keeps its own (C over F tests is a correction).
    """
    from_tests = results_status(tests)
    if sent is None or not has_result(sent):
        return (sent if sent is not None else from_tests), False
    if from_tests is None:
        return sent, False
    if is_final(sent) and is_final(from_tests):
        return sent, False
    if _RANK[from_tests] < _RANK[sent]:
        return from_tests, True
    return sent, False
