"""FHIR validation in its two modes: HL7's own examples pass the lenient mode (references
may point outside their Bundle), broken ones are refused with a readable reason in both,
and the strict mode — the one the gateway's own Bundles must pass — finds a reference that
resolves to nothing."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.observation import Observation

from adapters.fhir.validation import LENIENT, STRICT, FhirInvalid, validate_bundle
from tests.support.references import SHARED

FHIR_DATA = Path(__file__).resolve().parents[1] / "data" / "fhir"
FHIR_REFERENCE = SHARED / "fhir"
EXAMPLES = sorted(FHIR_DATA.glob("*.json"))


def load(name: str) -> dict[str, Any]:
    return json.loads((FHIR_DATA / name).read_text(encoding="utf-8"))


def errors_of(data: dict[str, Any], mode: str) -> list[str]:
    with pytest.raises(FhirInvalid) as caught:
        validate_bundle(data, mode=mode)  # type: ignore[arg-type]
    assert caught.value.errors
    return caught.value.errors


@pytest.mark.skipif(not FHIR_REFERENCE.exists(), reason="no ../shared/reference in this checkout")
def test_shipped_copies_are_the_reference_files_byte_for_byte():
    reference = sorted(p.name for p in FHIR_REFERENCE.glob("*.json")) + ["SOURCES.md"]
    assert sorted(p.name for p in EXAMPLES) + ["SOURCES.md"] == reference
    for name in reference:
        assert (FHIR_DATA / name).read_bytes() == (FHIR_REFERENCE / name).read_bytes(), name


def test_there_are_examples_of_both_shapes():
    kinds = {load(p.name)["resourceType"] for p in EXAMPLES}
    assert kinds == {"Bundle", "Observation"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_official_example_passes_the_lenient_mode(path):
    validate_bundle(json.loads(path.read_text(encoding="utf-8")), mode=LENIENT)


def test_the_f001_report_points_outside_its_bundle_so_it_fails_the_strict_mode():
    errors = errors_of(load("diagnosticreport-example-f001-bloodexam.json"), STRICT)
    dangling = " ".join(errors)
    for ref in ("Observation/f001", "Observation/f005", "Patient/f001", "Organization/f001"):
        assert f"'{ref}'" in dangling
    # Its ServiceRequest is in the Bundle, under a RESTful fullUrl on the same base.
    assert "ServiceRequest/req" not in dangling
    assert all("resolves to no Bundle entry" in e for e in errors)


def test_strict_mode_resolves_relative_references_against_a_restful_fullurl():
    errors = errors_of(load("diagnosticreport-example-lipids.json"), STRICT)
    assert not [e for e in errors if "Observation/" in e]
    assert any("'Patient/pat2'" in e for e in errors)


def glucose(**changes: Any) -> dict[str, Any]:
    data = load("observation-example-f001-glucose.json")
    for key, value in changes.items():
        if value is None:
            del data[key]
        else:
            data[key] = value
    return data


@pytest.mark.parametrize(("mutated", "expected"), [
    (glucose(status=None), "status"),
    (glucose(valueQuantity={"value": "abc", "unit": "mmol/l"}), "valueQuantity.value"),
    (glucose(valueString="6.3 mmol/l"), "but got multiple"),
    (glucose(issued="2013-04-03T15:30:10"), "issued"),
    (glucose(colour="red"), "colour"),
    (glucose(status="bogus"), "'bogus' is not a code of its required value set"),
], ids=["missing-status", "bad-decimal", "two-values", "instant-without-zone", "unknown-element", "bogus-status"])
def test_broken_examples_are_refused_with_a_readable_reason_even_in_the_lenient_mode(mutated, expected):
    errors = errors_of(mutated, LENIENT)
    assert any(expected in e and e.startswith("Observation") for e in errors), errors


def test_the_library_alone_would_let_a_bogus_status_through():
    Observation.model_validate(glucose(status="bogus"))  # what our own check is for


def test_a_bogus_status_inside_a_bundle_entry_is_refused():
    bundle = load("diagnosticreport-example-lipids.json")
    bundle["entry"][2]["resource"]["status"] = "bogus"
    errors = errors_of(bundle, LENIENT)
    assert errors == [
        "entry[2].resource (Observation): status: 'bogus' is not a code of its required value set "
        "(amended, cancelled, corrected, entered-in-error, final, preliminary, registered, unknown)"]


@pytest.mark.parametrize(("resource", "expected"), [
    ({"resourceType": "Foo", "id": "x"}, "unknown resourceType 'Foo'"),
    ({"id": "x", "status": "final"}, "no resourceType"),
    ({"resourceType": "Quantity", "value": 1}, "unknown resourceType 'Quantity'"),
])
def test_entries_the_bundle_model_would_wave_through_or_crash_on_are_reported(resource, expected):
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [{"fullUrl": "urn:uuid:1", "resource": resource}]}
    assert errors_of(bundle, LENIENT) == [f"entry[0].resource: {expected}"]


def test_what_is_not_a_resource_at_all_is_refused_not_crashed_on():
    assert errors_of({"resourceType": "Nope"}, LENIENT) == ["resource: unknown resourceType 'Nope'"]
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [7]}
    assert [e for e in errors_of(bundle, LENIENT) if e.startswith("Bundle: entry[0]")]


def test_an_entry_without_resource_request_or_response_is_refused():
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [{"fullUrl": "urn:uuid:1"}]}
    assert "bdl-5" in errors_of(bundle, STRICT)[0]


def test_the_mode_must_be_named():
    with pytest.raises(TypeError):
        validate_bundle(load("observation-example-f001-glucose.json"))  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="mode"):
        validate_bundle(load("observation-example-f001-glucose.json"), mode="loose")  # type: ignore[arg-type]
