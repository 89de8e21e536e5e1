"""СНИЛС and ЕНП check digits against the worked examples in the shared reference (identifiers.json)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.identifiers import enp_valid, ogrn_valid, snils_valid
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


@pytest.mark.parametrize("digits,valid", cases("ogrn"))
def test_ogrn(digits, valid):
    assert ogrn_valid(digits) is valid
