"""Check digits of СНИЛС, ЕНП, ОГРН, ОГРНИП and ИНН against published examples.

The worked examples are the shared reference's (identifiers.json); the others are
published numbers: python-stdnum's doctests (stdnum/ru/ogrn.py, stdnum/ru/inn.py),
sshaplygin/docs-code's ОГРНИП example (ogrnip/ogrnip.go), and the ОГРН and ИНН of
ПАО Сбербанк as printed on its public disclosure pages.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.identifiers import (
    enp_valid,
    inn_valid,
    ogrn_valid,
    ogrnip_valid,
    registration_number_valid,
    snils_valid,
)
from tests.support.references import SHARED

COPY = Path(__file__).resolve().parents[1] / "data/identifiers/identifiers.json"
DATA = json.loads(COPY.read_text(encoding="utf-8"))


def test_copy_matches_the_shared_reference_when_present():
    original = SHARED / "identifiers.json"
    if original.exists():
        assert original.read_bytes() == COPY.read_bytes()


def cases(kind: str) -> list[tuple[str, bool]]:
    return [(c["digits"], c["valid"]) for group in ("valid", "invalid") for c in DATA[kind][group]]


@pytest.mark.parametrize("digits,valid", cases("snils"))
def test_snils(digits, valid):
    assert snils_valid(digits) is valid


@pytest.mark.parametrize("digits,valid", cases("enp"))
def test_enp(digits, valid):
    assert enp_valid(digits) is valid


@pytest.mark.parametrize("digits,valid", cases("ogrn") + [
    ("1022200525819", True),    # stdnum doctest
    ("1022500001325", True),    # stdnum doctest
    ("1027700132195", True),    # ПАО Сбербанк
    ("0022500001325", False),   # stdnum doctest: the check digit fits, but no ОГРН starts with 0
    ("2027700132194", False),   # check digit fits; a 2 marks another ЕГРЮЛ record, not an ОГРН
    ("5027700132191", True),    # 5 is the other leading digit of an ОГРН
    ("102770013219", False),    # 12 digits
    ("385768585948949", False),  # an ОГРНИП is not an ОГРН
])
def test_ogrn(digits, valid):
    assert ogrn_valid(digits) is valid


@pytest.mark.parametrize("digits,valid", cases("ogrnip") + [
    ("304500116000157", True),   # docs-code example
    ("300000000000060", True),   # remainder 10 → check digit 0 (python-stdnum 2.2 refuses it)
    ("300000000000061", False),
    ("404500116000157", False),  # 4 marks another ЕГРИП record, not an ОГРНИП
    ("1027700132195", False),    # an ОГРН is not an ОГРНИП
])
def test_ogrnip(digits, valid):
    assert ogrnip_valid(digits) is valid


def test_an_organisation_may_be_registered_by_ogrn_or_ogrnip():
    assert registration_number_valid("1027700132195") and registration_number_valid("304500116000157")
    assert not registration_number_valid("30450011600015") and not registration_number_valid("")


@pytest.mark.parametrize("digits,valid", cases("inn") + [
    ("7707083893", True),      # ПАО Сбербанк
    ("631405980490", True),    # research/formats.md §5.2 worked example (12 digits)
    ("7707083894", False),
    ("631405980491", False),   # second check digit wrong
    ("631405980400", False),   # first check digit wrong
    ("0000000000", False),     # the check digits fit; no tax office has region 00
    ("770708389", False),
    ("77070838931", False),    # 11 digits
])
def test_inn(digits, valid):
    assert inn_valid(digits) is valid
