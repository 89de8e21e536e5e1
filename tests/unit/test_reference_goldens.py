"""The collected real-world messages against their hand-checked expected results, field by field.

tests/data/hl7v2-collected holds the messages, tests/data/lab-result-goldens what each must
become — the lab result and its FHIR Bundle, or the gaps it is refused with — and REVIEW.md
there how each expectation was checked against its message.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from lxml import etree

from adapters.fhir.lab_result import to_bundle, to_json_bytes
from adapters.fhir.validation import STRICT, validate_bundle
from adapters.hl7v2.lab_intake import parse_for_cli
from adapters.hl7v2.oru import MappingGaps, map_message
from adapters.mapping.lab_mapping import load_mapping
from gateway.schemas import validate_payload
from tests.support.field_diff import json_differences, xml_differences

DATA = Path(__file__).resolve().parents[1] / "data"
COLLECTED = DATA / "hl7v2-collected"
GOLDEN = DATA / "lab-result-goldens"
MANIFEST = {k: v for k, v in json.loads((GOLDEN / "manifest.json").read_text(encoding="utf-8")).items()
            if not k.startswith("_")}
LAB_RESULT_NS = "urn://zdravlink/types/lab-result/1.0"


def message_path(prefix: str) -> Path:
    return next(COLLECTED.glob(f"{prefix}_*.hl7"))


def mapped(prefix: str):
    mapping = load_mapping(DATA / "mappings" / f"{MANIFEST[prefix]['lab']}.yaml", problems := [])
    assert problems == [] and mapping is not None
    return map_message(parse_for_cli(message_path(prefix).read_bytes()), mapping)


def test_there_are_at_least_fifteen_collected_messages_each_with_its_sources_and_expectations():
    messages = sorted(p.name[:2] for p in COLLECTED.glob("*.hl7"))
    assert len(messages) >= 15 and messages == sorted(MANIFEST)
    sources = (COLLECTED / "SOURCES.md").read_text(encoding="utf-8")
    review = (GOLDEN / "REVIEW.md").read_text(encoding="utf-8")
    for prefix in messages:
        assert message_path(prefix).name in sources
        assert f"**{prefix}**" in review
        assert (GOLDEN / f"{prefix}.lab-result.xml").exists() != (GOLDEN / f"{prefix}.gaps.json").exists()


ACCEPTED = sorted(p for p in MANIFEST if (GOLDEN / f"{p}.lab-result.xml").exists())
REFUSED = sorted(p for p in MANIFEST if (GOLDEN / f"{p}.gaps.json").exists())


@pytest.mark.parametrize("prefix", ACCEPTED)
def test_the_lab_result_is_the_expected_one_field_by_field(prefix):
    result = mapped(prefix)
    validate_payload(LAB_RESULT_NS, result.payload)
    expected = etree.parse(str(GOLDEN / f"{prefix}.lab-result.xml")).getroot()
    assert xml_differences(expected, result.payload) == []


@pytest.mark.parametrize("prefix", ACCEPTED)
def test_the_fhir_bundle_is_the_expected_one_field_by_field(prefix):
    result = mapped(prefix)
    bundle = json.loads(to_json_bytes(to_bundle(result.payload, message_id=result.message_id)))
    validate_bundle(bundle, mode=STRICT)
    del bundle["timestamp"]
    expected = json.loads((GOLDEN / f"{prefix}.fhir.json").read_text(encoding="utf-8"))
    assert json_differences(expected, bundle) == []


@pytest.mark.parametrize("prefix", REFUSED)
def test_a_message_that_must_not_go_through_is_refused_with_the_expected_gaps(prefix):
    expected = json.loads((GOLDEN / f"{prefix}.gaps.json").read_text(encoding="utf-8"))
    with pytest.raises(MappingGaps) as info:
        mapped(prefix)
    assert [f"{g.code} @ {g.where}" for g in info.value.gaps] == expected["gaps"]
    assert [f"{g.code} @ {g.where}" for g in info.value.warnings] == expected["warnings"]
