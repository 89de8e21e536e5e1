"""The vendored OMS schemas are the references, byte for byte, and each compiles.

A schema that drifted from its source would make every "valid against the region's schema"
below a statement about our own edit, so each file is pinned by its sha256 and, when the shared
reference folder is beside this checkout, compared with it.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from lxml import etree

from tests.support.references import SHARED

ROOT = Path(__file__).resolve().parents[2]
OMS = ROOT / "schemas_xsd" / "oms"
PINNED = {
    "bashkortostan/promed-ufa-OMS-D1-1-NEW.xsd": "be8f11f1ff8d1a4b383007741e288c9953495c10cd58b816b9e11651b15c698b",
    "bashkortostan/promed-ufa-OMS-D2-NEW.xsd": "7f07ab2dd26731cfa86ddc2517b0d2cf723f9b0b451be35351ce064ca81e01bf",
    "region75/tfoms75-actual-MP-3.1.xsd": "03d640578ab3243eeb19afb71e1152a4c2f89afca0aacfcb4c3826b8c17dce7a",
    "region75/tfoms75-actual-MP-3.2.xsd": "e720d39e30b29bc4b8e8e152ab5fc6148b08c814914b266350d035ad9f422f30",
    "region75/tfoms75-actual-PERS-3.1.xsd": "7c93ba430f64e8c0f1cd56b78d91a1d5a3763001486cfaf9acd8f110a1a655b3",
    "region75/tfoms75-actual-PERS-3.2.xsd": "ac812c7466489d703b8180c1fa7bfd4660b8eaa55791b948ec80d8acdbef82dd",
}
REGISTERS = ROOT / "tests" / "data" / "oms" / "region75"
PINNED_REGISTERS = {
    "tfoms75-test-H_VALID.XML": "b33e3944164c27c97079c569c98c6825f2b20f7fc68e81f6f2a3e7c961f1b55a",
    "tfoms75-test-H_VALID_3.2.XML": "3cecf868f8068431f1bc04c0f7f2e131609d6f2102ed438ebf21f71fa133f28e",
}


def _shared(name: str) -> Path:
    folder, _, file = name.rpartition("/")
    return SHARED / "oms" / ("region75/" if folder == "region75" else "") / file


@pytest.mark.parametrize("name", sorted(PINNED))
def test_each_schema_is_the_reference_byte_for_byte_and_compiles(name: str) -> None:
    data = (OMS / name).read_bytes()
    assert hashlib.sha256(data).hexdigest() == PINNED[name]
    shared = _shared(name)
    if shared.exists():
        assert shared.read_bytes() == data
    etree.XMLSchema(etree.fromstring(data))


@pytest.mark.parametrize("name", sorted(PINNED_REGISTERS))
def test_the_real_registers_are_the_reference_byte_for_byte(name: str) -> None:
    data = (REGISTERS / name).read_bytes()
    assert hashlib.sha256(data).hexdigest() == PINNED_REGISTERS[name]
    shared = SHARED / "oms" / "region75" / name
    if shared.exists():
        assert shared.read_bytes() == data


def test_no_vendored_schema_is_taken_for_a_message_type() -> None:
    from gateway.schemas import payload_schema_files

    assert not {p for p in payload_schema_files().values() if p.parent != OMS and "payloads" not in p.parts}
