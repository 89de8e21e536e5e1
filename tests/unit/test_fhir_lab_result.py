"""The FHIR R4 form of a lab result: what we emit is valid and says what the payload says,
and the validation it must pass accepts HL7's own examples and refuses broken ones."""
from __future__ import annotations

import copy
import json
from datetime import timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from adapters.fhir.lab_result import to_bundle, to_json_bytes
from adapters.fhir.validation import LENIENT, STRICT, FhirInvalid, validate_bundle
from gateway.schemas import validate_payload

NS = "urn://zdravlink/types/lab-result/1.0"
DATA = Path(__file__).resolve().parents[1] / "data"
MESSAGE_ID = "6f1c2a10-abcd-11ef-8000-0242ac120002"
PREVIOUS_ID = "1b2c3d40-abcd-11ef-8000-0242ac120002"
FSLI = "urn:oid:1.2.643.5.1.13.13.11.1080"
V3_INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"


def errors_of(data: dict[str, Any], **kwargs: Any) -> list[str]:
    with pytest.raises(FhirInvalid) as caught:
        validate_bundle(data, **kwargs)
    assert caught.value.errors
    return caught.value.errors


def lab_result(*tests: str, status: str = "F", replaces: str = "", order: str = "<lr:PlacerNumber>ORD-7</lr:PlacerNumber>",
               patient: str = "<lr:SNILS>11223344595</lr:SNILS>", specimen: str = "",
               times: str = "<lr:ReportedAt>2026-11-23T10:00:00+03:00</lr:ReportedAt>",
               laboratory: str = "<lr:Mnemonic>lab-demo</lr:Mnemonic>") -> etree._Element:
    """A LabResult that passes the payload schema, so no test leans on input the gateway would refuse."""
    xml = (f'<lr:LabResult xmlns:lr="{NS}"><lr:ResultId>lab-demo:ORD-7</lr:ResultId><lr:Status>{status}</lr:Status>'
           f'{f"<lr:Replaces>{replaces}</lr:Replaces>" if replaces else ""}<lr:Order>{order}</lr:Order>'
           f'<lr:Patient>{patient}</lr:Patient><lr:Laboratory>{laboratory}</lr:Laboratory>{specimen}{times}'
           f'{"".join(tests)}</lr:LabResult>')
    root = etree.fromstring(xml.encode("utf-8"))
    validate_payload(NS, root)
    return root


def lab_test(value: str, *, code: str = "1017128", status: str = "F", flags: tuple[str, ...] = (),
             local: str = "", rng: str = "", after: str = "") -> str:
    """One Test element; ``after`` holds what the schema puts after Status (ObservedAt, Note)."""
    return (f"<lr:Test><lr:Code><lr:Code>{code}</lr:Code></lr:Code>{local}{value}{rng}"
            f"{''.join(f'<lr:Flag>{f}</lr:Flag>' for f in flags)}<lr:Status>{status}</lr:Status>{after}</lr:Test>")


QTY = "<lr:Quantity><lr:Value>5.50</lr:Value></lr:Quantity>"


def resources(bundle: dict[str, Any], rtype: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == rtype]


def only(bundle: dict[str, Any], rtype: str) -> dict[str, Any]:
    found = resources(bundle, rtype)
    assert len(found) == 1, found
    return found[0]


def url_of(bundle: dict[str, Any], rtype: str) -> str:
    return next(e["fullUrl"] for e in bundle["entry"] if e["resource"]["resourceType"] == rtype)


def convert(root: etree._Element, **kwargs: Any) -> dict[str, Any]:
    """Our Bundle, after checking it passes the validation it is sent under, in both forms."""
    bundle = to_bundle(root, message_id=kwargs.pop("message_id", MESSAGE_ID), **kwargs)
    validate_bundle(bundle, mode=STRICT)
    validate_bundle(json.loads(to_json_bytes(bundle)), mode=STRICT)
    return bundle


# ---- our output: the example payload, field by field ----------------------------------

@pytest.fixture
def example() -> dict[str, Any]:
    root = etree.parse(str(DATA / "lab" / "lab-result-example.xml")).getroot()
    validate_payload(NS, root)
    return convert(root)


def test_example_bundle_envelope(example):
    assert example["resourceType"] == "Bundle" and example["type"] == "collection"
    assert example["id"] == MESSAGE_ID
    assert example["identifier"] == {"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{MESSAGE_ID}"}
    assert example["timestamp"].endswith("+00:00")
    assert all(e["fullUrl"] == f"urn:uuid:{e['resource']['id']}" for e in example["entry"])
    assert len({e["fullUrl"] for e in example["entry"]}) == len(example["entry"]) == 4


def test_example_observation(example):
    obs = only(example, "Observation")
    assert obs["status"] == "final"
    assert obs["code"]["coding"] == [
        {"system": FSLI, "code": "1017128", "display": "Гемоглобин общий"},
        {"system": "urn://zdravlink/fhir/local-code/lab-demo", "code": "HGB"},
    ]
    # "g/L" is not said to be UCUM, so only the unit's text is given.
    assert obs["valueQuantity"] == {"value": Decimal("135"), "unit": "г/л"}
    assert obs["referenceRange"] == [{"low": {"value": Decimal("120"), "unit": "г/л"},
                                      "high": {"value": Decimal("160"), "unit": "г/л"}}]
    assert obs["interpretation"] == [{"coding": [{"system": V3_INTERPRETATION, "code": "N", "display": "Normal"}]}]
    assert obs["subject"] == {"reference": url_of(example, "Patient")}
    assert obs["issued"] == "2026-11-23T10:00:00+03:00"


def test_example_patient_and_laboratory(example):
    patient = only(example, "Patient")
    assert patient["identifier"] == [{"type": {"text": "СНИЛС"}, "system": "urn:oid:1.2.643.100.3",
                                      "value": "11223344595"}]
    assert "name" not in patient
    org = only(example, "Organization")
    assert {"type": {"text": "ФРМО"}, "system": "urn:ietf:rfc:3986",
            "value": "urn:oid:1.2.643.5.1.13.13.12.2.22.1576.0.108719"} in org["identifier"]
    assert {"system": "urn://zdravlink/fhir/participant", "value": "lab-demo"} in org["identifier"]


def test_example_report(example):
    report = only(example, "DiagnosticReport")
    assert report["status"] == "final"
    assert report["issued"] == "2026-11-23T10:00:00+03:00"
    assert report["subject"] == {"reference": url_of(example, "Patient")}
    assert report["performer"] == [{"reference": url_of(example, "Organization")}]
    assert report["result"] == [{"reference": url_of(example, "Observation")}]
    assert report["identifier"][:2] == [{"system": "urn://zdravlink/fhir/result-id", "value": "lab-demo:ORD-1"},
                                        {"system": "urn://zdravlink/fhir/message-id", "value": MESSAGE_ID}]
    assert report["basedOn"][0]["identifier"]["value"] == "ORD-1"
    assert report["basedOn"][0]["identifier"]["type"]["coding"][0]["code"] == "PLAC"
    assert report["code"]["text"] == "Laboratory report"
    assert "extension" not in report and "specimen" not in report


def test_same_message_same_resource_ids_other_message_other_ids(example):
    root = etree.parse(str(DATA / "lab" / "lab-result-example.xml")).getroot()
    again = to_bundle(root, message_id=MESSAGE_ID)
    other = to_bundle(root, message_id=PREVIOUS_ID)
    urls = [e["fullUrl"] for e in example["entry"]]
    assert [e["fullUrl"] for e in again["entry"]] == urls
    assert not set(urls) & {e["fullUrl"] for e in other["entry"]}


def test_json_is_utf8_with_cyrillic_as_is_and_decimals_as_written():
    root = lab_result(lab_test("<lr:Quantity><lr:Value>5.50</lr:Value><lr:Unit><lr:Code>60</lr:Code>"
                              "<lr:System>1.2.643.5.1.13.13.11.1358</lr:System><lr:Display>г/л</lr:Display></lr:Unit>"
                              "</lr:Quantity>", after="<lr:Note>Гемолиз ++</lr:Note>"))
    data = to_json_bytes(convert(root))
    assert "Гемолиз ++".encode("utf-8") in data and b"\\u" not in data
    assert b'"value":5.50,' in data
    assert json.loads(data)["entry"][1]["resource"]["note"] == [{"text": "Гемолиз ++"}]


# ---- our output: every kind of value, flag and status ----------------------------------

def observation_of(*tests: str, **kwargs: Any) -> dict[str, Any]:
    return only(convert(lab_result(*tests, **kwargs)), "Observation")


def test_text_result():
    obs = observation_of(lab_test("<lr:Text>не обнаружено</lr:Text>"))
    assert obs["valueString"] == "не обнаружено"
    assert not [k for k in obs if k.startswith("value") and k != "valueString"]


def test_an_empty_text_result_is_a_value_unknown_not_an_empty_string():
    obs = observation_of(lab_test("<lr:Text> </lr:Text>"))
    assert obs["dataAbsentReason"] == {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/data-absent-reason",
                                                   "code": "unknown", "display": "Unknown"}]}
    assert "valueString" not in obs


def test_coded_result():
    obs = observation_of(lab_test("<lr:Coded><lr:Code>260385009</lr:Code><lr:System>http://snomed.info/sct</lr:System>"
                                 "<lr:Display>Отрицательно</lr:Display></lr:Coded>"))
    assert obs["valueCodeableConcept"] == {"coding": [{"system": "http://snomed.info/sct", "code": "260385009",
                                                       "display": "Отрицательно"}], "text": "Отрицательно"}


def test_not_performed_result_has_a_reason_and_no_value():
    obs = observation_of(lab_test("<lr:NotPerformed>гемолиз образца</lr:NotPerformed>", status="X"))
    assert obs["dataAbsentReason"]["coding"][0]["code"] == "not-performed"
    assert obs["dataAbsentReason"]["text"] == "гемолиз образца"
    assert obs["status"] == "cancelled"
    assert not [k for k in obs if k.startswith("value")]


def test_comparator_and_a_unit_given_as_ucum():
    obs = observation_of(lab_test("<lr:Quantity><lr:Value>200</lr:Value><lr:Comparator>&gt;</lr:Comparator>"
                                 "<lr:Unit><lr:Code>mmol/L</lr:Code><lr:System>UCUM</lr:System></lr:Unit></lr:Quantity>",
                                 local="<lr:LocalCode><lr:Code>GLU</lr:Code><lr:Display>Глюкоза</lr:Display></lr:LocalCode>"))
    assert obs["valueQuantity"] == {"value": Decimal("200"), "comparator": ">", "unit": "mmol/L",
                                    "system": "http://unitsofmeasure.org", "code": "mmol/L"}
    assert obs["code"]["coding"][0] == {"system": FSLI, "code": "1017128"}
    assert obs["code"]["text"] == "Глюкоза"


def test_a_bad_comparator_is_caught_though_the_library_accepts_it():
    bundle = to_bundle(lab_result(lab_test(QTY)), message_id=MESSAGE_ID)
    bundle["entry"][1]["resource"]["valueQuantity"]["comparator"] = "~"
    assert "valueQuantity.comparator: '~'" in errors_of(bundle, mode=STRICT)[0]


@pytest.mark.parametrize(("flag", "code", "display"), [
    ("H", "H", "High"), ("L", "L", "Low"), ("<", "<", "Off scale low"), ("HH", "HH", "Critical high"),
    ("pos", "POS", "Positive"),
])
def test_flags_become_v3_interpretation_codes(flag, code, display):
    escaped = flag.replace("<", "&lt;")
    obs = observation_of(lab_test(QTY, flags=(escaped,)))
    assert obs["interpretation"] == [{"coding": [{"system": V3_INTERPRETATION, "code": code, "display": display}]}]


def test_an_unknown_flag_travels_as_text_only_and_several_flags_all_travel():
    obs = observation_of(lab_test(QTY, flags=("XYZ", "A")))
    assert obs["interpretation"] == [{"text": "XYZ"}, {"coding": [{"system": V3_INTERPRETATION, "code": "A",
                                                                   "display": "Abnormal"}]}]


def test_reference_range_with_text_only_and_no_flag():
    obs = observation_of(lab_test("<lr:Text>отрицательно</lr:Text>",
                                  rng="<lr:ReferenceRange><lr:Text>отрицательно</lr:Text></lr:ReferenceRange>"))
    assert obs["referenceRange"] == [{"text": "отрицательно"}]
    assert "interpretation" not in obs


@pytest.mark.parametrize(("code", "fhir"), [("P", "preliminary"), ("F", "final"), ("C", "corrected"),
                                            ("X", "cancelled")])
def test_statuses(code, fhir):
    bundle = convert(lab_result(lab_test(QTY, status=code), status=code))
    assert only(bundle, "DiagnosticReport")["status"] == fhir
    assert only(bundle, "Observation")["status"] == fhir


def test_a_corrected_result_is_linked_to_the_message_it_replaces():
    first = convert(lab_result(lab_test(QTY)), message_id=PREVIOUS_ID)
    corrected = convert(lab_result(lab_test(QTY, status="C"), status="C", replaces=PREVIOUS_ID))
    old, new = only(first, "DiagnosticReport"), only(corrected, "DiagnosticReport")
    assert new["status"] == "corrected"
    [link] = new["extension"]
    assert link["url"] == "http://hl7.org/fhir/StructureDefinition/diagnosticReport-replaces"
    assert link["valueReference"]["type"] == "DiagnosticReport"
    # The link names an identifier the replaced report carries, and only that one.
    assert link["valueReference"]["identifier"] in old["identifier"]
    assert link["valueReference"]["identifier"] not in new["identifier"]
    # Both versions are the same report by business identifier.
    assert old["identifier"][0] == new["identifier"][0]


def test_replaces_given_by_the_caller_wins_over_the_payload():
    bundle = convert(lab_result(lab_test(QTY), status="C", replaces="payload-id"), replaces=PREVIOUS_ID)
    link = only(bundle, "DiagnosticReport")["extension"][0]["valueReference"]["identifier"]
    assert link["value"] == PREVIOUS_ID


def test_patient_identifiers_birth_date_and_gender_without_a_name():
    patient = only(convert(lab_result(lab_test(QTY), patient=(
        '<lr:SNILS>11223344595</lr:SNILS><lr:ENP>1234567890123452</lr:ENP>'
        '<lr:LocalId assigner="МИС поликлиники">P-42</lr:LocalId>'
        '<lr:BirthDate>1979-11-25+03:00</lr:BirthDate><lr:Sex>male</lr:Sex>'))), "Patient")
    systems = [i.get("system") for i in patient["identifier"]]
    assert systems == ["urn:oid:1.2.643.100.3", "http://fhir.ru/core/systems/OMS", None]
    assert patient["identifier"][1]["value"] == "1234567890123452"
    assert patient["identifier"][2]["value"] == "P-42"
    assert patient["identifier"][2]["assigner"] == {"display": "МИС поликлиники"}
    assert patient["birthDate"] == "1979-11-25" and patient["gender"] == "male"
    assert "name" not in patient


def test_specimen_service_filler_number_and_performer():
    bundle = convert(lab_result(
        lab_test(QTY),
        order=("<lr:PlacerNumber>ORD-7</lr:PlacerNumber><lr:FillerNumber>F-99</lr:FillerNumber>"
               "<lr:Service><lr:Code>B03.016.002</lr:Code><lr:System>1.2.643.5.1.13.13.11.1070</lr:System>"
               "<lr:Display>Общий (клинический) анализ крови</lr:Display></lr:Service>"),
        specimen=("<lr:Specimen><lr:Type><lr:Code>2</lr:Code><lr:System>1.2.643.5.1.13.13.99.2.1019</lr:System>"
                  "<lr:Display>Кровь венозная</lr:Display></lr:Type>"
                  "<lr:CollectedAt>2026-11-23T07:30:00+03:00</lr:CollectedAt></lr:Specimen>"
                  "<lr:Performer>Степанова А. А.</lr:Performer>"),
        laboratory="<lr:Mnemonic>lab-demo</lr:Mnemonic><lr:Name>КДЛ «Демо»</lr:Name>"))
    report, specimen = only(bundle, "DiagnosticReport"), only(bundle, "Specimen")
    assert report["code"]["coding"] == [{"system": "urn:oid:1.2.643.5.1.13.13.11.1070", "code": "B03.016.002",
                                         "display": "Общий (клинический) анализ крови"}]
    assert report["specimen"] == [{"reference": url_of(bundle, "Specimen")}]
    assert only(bundle, "Observation")["specimen"] == {"reference": url_of(bundle, "Specimen")}
    assert {"display": "Степанова А. А."} in report["performer"]
    assert report["identifier"][2]["value"] == "F-99"
    assert specimen["type"]["coding"][0]["system"] == "urn:oid:1.2.643.5.1.13.13.99.2.1019"
    assert specimen["collection"] == {"collectedDateTime": "2026-11-23T07:30:00+03:00"}
    assert specimen["subject"] == {"reference": url_of(bundle, "Patient")}
    assert only(bundle, "Organization")["name"] == "КДЛ «Демо»"


NAIVE = "<lr:ObservedAt>2026-11-23T08:50:00</lr:ObservedAt><lr:ReportedAt>2026-11-23T10:00:00.5</lr:ReportedAt>"


def test_times_without_an_offset_are_not_guessed():
    bundle = convert(lab_result(lab_test(QTY), times=NAIVE))
    report = only(bundle, "DiagnosticReport")
    assert "issued" not in report and "issued" not in only(bundle, "Observation")
    assert report["effectiveDateTime"] == "2026-11-23"
    assert only(bundle, "Observation")["effectiveDateTime"] == "2026-11-23"


def test_times_without_an_offset_take_the_laboratory_zone_when_known():
    novosibirsk = timezone(timedelta(hours=7))
    bundle = convert(lab_result(lab_test(QTY), times=NAIVE), local_tz=novosibirsk)
    report = only(bundle, "DiagnosticReport")
    assert report["issued"] == "2026-11-23T10:00:00.5+07:00"
    assert report["effectiveDateTime"] == "2026-11-23T08:50:00+07:00"


def test_a_test_time_overrides_the_report_time():
    obs = observation_of(lab_test(QTY, after="<lr:ObservedAt>2026-11-22T09:15:00Z</lr:ObservedAt>"), times=NAIVE)
    assert obs["effectiveDateTime"] == "2026-11-22T09:15:00Z"


def test_several_tests_each_become_an_observation_in_the_report():
    bundle = convert(lab_result(lab_test(QTY), lab_test("<lr:Text>+</lr:Text>", code="1017375")))
    observations = resources(bundle, "Observation")
    assert [o["code"]["coding"][0]["code"] for o in observations] == ["1017128", "1017375"]
    assert only(bundle, "DiagnosticReport")["result"] == [
        {"reference": e["fullUrl"]} for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation"]


def test_a_broken_reference_in_our_own_output_fails_the_strict_mode():
    bundle = to_bundle(lab_result(lab_test(QTY)), message_id=MESSAGE_ID)
    validate_bundle(bundle, mode=STRICT)
    broken = copy.deepcopy(bundle)
    broken["entry"][0]["resource"]["result"][0]["reference"] = "urn:uuid:00000000-0000-0000-0000-000000000000"
    assert errors_of(broken, mode=STRICT) == [
        "entry[0].resource (DiagnosticReport): result[0]: reference 'urn:uuid:00000000-0000-0000-0000-000000000000' "
        "resolves to no Bundle entry or contained resource"]
    validate_bundle(broken, mode=LENIENT)


def test_only_a_lab_result_with_a_uuid_message_id_is_converted():
    with pytest.raises(ValueError):
        to_bundle(lab_result(lab_test(QTY)), message_id="not-a-uuid")
    with pytest.raises(ValueError):
        to_bundle(etree.fromstring(f'<lr:Other xmlns:lr="{NS}"/>'), message_id=MESSAGE_ID)
