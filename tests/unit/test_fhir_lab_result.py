"""The FHIR R4 form of a lab result: what we emit passes the strict validation mode and says
what the payload says — one DiagnosticReport per order, statuses, values and their absence,
names and notes whole."""
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
DAR = "http://terminology.hl7.org/CodeSystem/data-absent-reason"


def errors_of(data: dict[str, Any], **kwargs: Any) -> list[str]:
    with pytest.raises(FhirInvalid) as caught:
        validate_bundle(data, **kwargs)
    assert caught.value.errors
    return caught.value.errors


def lab_result(*tests: str, status: str = "F", replaces: str = "", order: str = "<lr:PlacerNumber>ORD-7</lr:PlacerNumber>",
               patient: str = "<lr:SNILS>11223344595</lr:SNILS>", detail: str = "",
               times: str = "<lr:ReportedAt>2026-11-23T10:00:00+03:00</lr:ReportedAt>",
               laboratory: str = "<lr:Mnemonic>lab-demo</lr:Mnemonic>", notes: str = "",
               orders: tuple[str, ...] = ()) -> etree._Element:
    """A LabResult that passes the payload schema, so no test leans on input the gateway would refuse.

    One order holds ``tests`` (``detail``: its Specimen, Requester, Performer), unless
    ``orders`` gives the Order elements whole.
    """
    one = (f'<lr:Order><lr:OrderId>lab-demo:ORD-7</lr:OrderId><lr:Status>{status}</lr:Status>'
           f'{f"<lr:Replaces>{replaces}</lr:Replaces>" if replaces else ""}{order}{detail}{times}'
           f'{"".join(tests)}{notes}</lr:Order>')
    xml = (f'<lr:LabResult xmlns:lr="{NS}"><lr:ResultId>lab-demo:MSG-7</lr:ResultId><lr:Status>{status}</lr:Status>'
           f'<lr:Patient>{patient}</lr:Patient><lr:Laboratory>{laboratory}</lr:Laboratory>'
           f'{"".join(orders) or one}</lr:LabResult>')
    root = etree.fromstring(xml.encode("utf-8"))
    validate_payload(NS, root)
    return root


def lab_test(value: str, *, code: str = "1017128", status: str = "F", flags: tuple[str, ...] = (),
             local: str = "", rng: str = "", after: str = "") -> str:
    """One Test element; ``after`` holds what the schema puts after Status (ObservedAt, Performer, Note)."""
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


def url_of_resource(bundle: dict[str, Any], resource: dict[str, Any]) -> str:
    return next(e["fullUrl"] for e in bundle["entry"] if e["resource"] is resource or e["resource"] == resource)


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
    kinds = [e["resource"]["resourceType"] for e in example["entry"]]
    assert kinds == ["DiagnosticReport", "ServiceRequest", "Observation", "DiagnosticReport", "Observation",
                     "Patient", "Organization"]
    assert len({e["fullUrl"] for e in example["entry"]}) == len(example["entry"])


def test_example_has_one_report_per_order_each_with_its_own_tests_and_status(example):
    first, second = resources(example, "DiagnosticReport")
    obs_first, obs_second = resources(example, "Observation")
    assert (first["status"], second["status"]) == ("final", "registered")
    assert first["result"] == [{"reference": url_of_resource(example, obs_first)}]
    assert second["result"] == [{"reference": url_of_resource(example, obs_second)}]
    assert first["identifier"][0] == {"system": "urn://zdravlink/fhir/order-id", "value": "lab-demo:LAB-1"}
    assert second["identifier"][0] == {"system": "urn://zdravlink/fhir/order-id", "value": "lab-demo:LAB-2"}
    assert first["issued"] == "2026-11-23T10:00:00+03:00" and second["issued"] == "2026-11-23T10:05:00+03:00"
    assert second["conclusion"] == "Повторный забор крови" and "conclusion" not in first
    assert obs_second["status"] == "registered"
    assert obs_second["dataAbsentReason"] == {"coding": [{"system": DAR, "code": "temp-unknown",
                                                          "display": "Temporarily Unknown"}],
                                              "text": "the result is still to come"}


def test_example_observation(example):
    obs = resources(example, "Observation")[0]
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
    assert patient["name"] == [{"family": "Иванова", "given": ["Анна", "Петровна"]}]
    org = only(example, "Organization")
    assert {"type": {"text": "ФРМО"}, "system": "urn:ietf:rfc:3986",
            "value": "urn:oid:1.2.643.5.1.13.13.12.2.22.1576.0.108719"} in org["identifier"]
    assert {"system": "urn://zdravlink/fhir/participant", "value": "lab-demo"} in org["identifier"]


def test_example_report(example):
    report = resources(example, "DiagnosticReport")[0]
    assert report["subject"] == {"reference": url_of(example, "Patient")}
    assert report["performer"] == [{"reference": url_of(example, "Organization")}]
    assert report["identifier"][:3] == [{"system": "urn://zdravlink/fhir/order-id", "value": "lab-demo:LAB-1"},
                                        {"system": "urn://zdravlink/fhir/result-id", "value": "lab-demo:MSG-1"},
                                        {"system": "urn://zdravlink/fhir/message-id", "value": MESSAGE_ID}]
    request = only(example, "ServiceRequest")
    assert report["basedOn"] == [{"reference": url_of(example, "ServiceRequest")}]
    assert request["identifier"][0]["value"] == "ORD-1"
    assert request["identifier"][0]["type"]["coding"][0]["code"] == "PLAC"
    assert (request["status"], request["intent"]) == ("unknown", "order")
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
    assert "Гемолиз ++".encode() in data and b"\\u" not in data
    assert b'"value":5.50,' in data
    assert only(json.loads(data), "Observation")["note"] == [{"text": "Гемолиз ++"}]


# ---- our output: every kind of value, flag and status ----------------------------------

def observation_of(*tests: str, **kwargs: Any) -> dict[str, Any]:
    return only(convert(lab_result(*tests, **kwargs)), "Observation")


def test_text_result():
    obs = observation_of(lab_test("<lr:Text>не обнаружено</lr:Text>"))
    assert obs["valueString"] == "не обнаружено"
    assert not [k for k in obs if k.startswith("value") and k != "valueString"]


def test_an_empty_text_result_is_a_value_unknown_not_an_empty_string():
    obs = observation_of(lab_test("<lr:Text> </lr:Text>"))
    assert obs["dataAbsentReason"] == {"coding": [{"system": DAR, "code": "unknown", "display": "Unknown"}]}
    assert "valueString" not in obs


def test_hl7_null_is_no_value_stated_by_the_lab_and_asserts_no_code():
    obs = observation_of(lab_test('<lr:NoValue reason="null"/>'))
    assert obs["dataAbsentReason"] == {"text": 'the laboratory stated there is no value (HL7 "")'}
    assert obs["status"] == "final" and "interpretation" not in obs


def test_withdrawn_and_not_asked():
    withdrawn = observation_of(lab_test('<lr:NoValue reason="withdrawn"/>', status="D"))
    assert withdrawn["status"] == "entered-in-error" and withdrawn["dataAbsentReason"] == {
        "text": "withdrawn by the laboratory"}
    not_asked = observation_of(lab_test("<lr:NotPerformed>not asked (OBX-11 N)</lr:NotPerformed>", status="N"))
    assert not_asked["status"] == "cancelled"
    assert not_asked["dataAbsentReason"]["coding"][0]["code"] == "not-asked"


def test_a_coded_value_whole_alternate_coding_and_original_text():
    obs = observation_of(lab_test(
        "<lr:Coded><lr:Code>260385009</lr:Code><lr:System>SCT</lr:System><lr:Display>Negative (qualifier value)"
        "</lr:Display><lr:Alternate><lr:Code>NEG</lr:Code><lr:System>L</lr:System><lr:Display>NEGATIVE</lr:Display>"
        "</lr:Alternate><lr:OriginalText>Negative</lr:OriginalText></lr:Coded>"))
    assert obs["valueCodeableConcept"] == {
        "coding": [{"system": "http://snomed.info/sct", "code": "260385009", "display": "Negative (qualifier value)"},
                   {"code": "NEG", "display": "NEGATIVE"}],
        "text": "Negative"}


def test_a_coded_value_with_text_and_no_code_gets_no_invented_code():
    obs = observation_of(lab_test("<lr:Coded><lr:System>SNM</lr:System><lr:Display>Bordetella pertussis</lr:Display>"
                                  "</lr:Coded>"))
    assert obs["valueCodeableConcept"] == {"text": "Bordetella pertussis"}


def test_several_coded_answers_are_components_none_dropped():
    answers = ("<lr:Coded><lr:Code>1</lr:Code><lr:Display>A</lr:Display></lr:Coded>"
               "<lr:Coded><lr:Code>2</lr:Code><lr:Display>B</lr:Display></lr:Coded>")
    obs = observation_of(lab_test(answers))
    assert [c["valueCodeableConcept"]["text"] for c in obs["component"]] == ["A", "B"]
    assert all(c["code"] == obs["code"] for c in obs["component"])
    assert not [k for k in obs if k.startswith("value")]


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
    only(bundle, "Observation")["valueQuantity"]["comparator"] = "~"
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


@pytest.mark.parametrize(("code", "report", "observation"), [
    ("I", "registered", "registered"), ("R", "preliminary", "preliminary"), ("S", "partial", "preliminary"),
    ("P", "preliminary", "preliminary"), ("F", "final", "final"), ("A", "amended", "amended"),
    ("C", "corrected", "corrected"), ("X", "cancelled", "cancelled"), ("N", "cancelled", "cancelled"),
    ("D", "entered-in-error", "entered-in-error"), ("W", "entered-in-error", "entered-in-error")])
def test_every_lab_result_status_has_its_fhir_status(code, report, observation):
    bundle = convert(lab_result(lab_test(QTY, status=code), status=code))
    assert only(bundle, "DiagnosticReport")["status"] == report
    assert only(bundle, "Observation")["status"] == observation


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
    # Both versions are the same order by business identifier.
    assert old["identifier"][0] == new["identifier"][0]


def test_each_order_names_the_message_carrying_its_own_previous_version():
    def order(n: int, status: str, replaces: str = "") -> str:
        return (f"<lr:Order><lr:OrderId>lab-demo:O{n}</lr:OrderId><lr:Status>{status}</lr:Status>"
                f'{f"<lr:Replaces>{replaces}</lr:Replaces>" if replaces else ""}{lab_test(QTY, status=status)}'
                "</lr:Order>")
    bundle = convert(lab_result(orders=(order(1, "F"), order(2, "C", PREVIOUS_ID))))
    first, second = resources(bundle, "DiagnosticReport")
    assert "extension" not in first
    assert second["extension"][0]["valueReference"]["identifier"] == {"system": "urn://zdravlink/fhir/message-id",
                                                                     "value": PREVIOUS_ID}


def test_replaces_given_by_the_caller_wins_over_the_payload():
    bundle = convert(lab_result(lab_test(QTY), status="C", replaces="payload-id"), replaces=PREVIOUS_ID)
    link = only(bundle, "DiagnosticReport")["extension"][0]["valueReference"]["identifier"]
    assert link["value"] == PREVIOUS_ID


def test_patient_identifiers_birth_date_and_gender_and_no_name_unless_sent():
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


PERSON = ("<lr:Id>465</lr:Id><lr:Name><lr:Family>Степанова</lr:Family><lr:Given>Анна</lr:Given>"
          "<lr:Middle>Андреевна</lr:Middle><lr:Prefix>д-р</lr:Prefix></lr:Name>")


def test_specimen_service_filler_number_requester_and_interpreter_whole():
    bundle = convert(lab_result(
        lab_test(QTY, after=f"<lr:Performer>{PERSON}</lr:Performer>"),
        order=("<lr:PlacerNumber assigner=\"МИС\">ORD-7</lr:PlacerNumber><lr:FillerNumber>F-99</lr:FillerNumber>"
               "<lr:Service><lr:Code>B03.016.002</lr:Code><lr:System>1.2.643.5.1.13.13.11.1070</lr:System>"
               "<lr:Display>Общий (клинический) анализ крови</lr:Display></lr:Service>"),
        detail=("<lr:Specimen><lr:Type><lr:Code>2</lr:Code><lr:System>1.2.643.5.1.13.13.99.2.1019</lr:System>"
                "<lr:Display>Кровь венозная</lr:Display></lr:Type>"
                "<lr:CollectedAt>2026-11-23T07:30:00+03:00</lr:CollectedAt></lr:Specimen>"
                "<lr:Requester><lr:Name><lr:Family>Петров</lr:Family><lr:Given>Пётр</lr:Given></lr:Name></lr:Requester>"
                f"<lr:Performer>{PERSON}</lr:Performer>"),
        laboratory="<lr:Mnemonic>lab-demo</lr:Mnemonic><lr:Name>КДЛ «Демо»</lr:Name>"))
    report, specimen = only(bundle, "DiagnosticReport"), only(bundle, "Specimen")
    assert report["code"]["coding"] == [{"system": "urn:oid:1.2.643.5.1.13.13.11.1070", "code": "B03.016.002",
                                         "display": "Общий (клинический) анализ крови"}]
    assert report["specimen"] == [{"reference": url_of(bundle, "Specimen")}]
    assert only(bundle, "Observation")["specimen"] == {"reference": url_of(bundle, "Specimen")}
    interpreter, requester = resources(bundle, "Practitioner")[0], resources(bundle, "Practitioner")[1]
    assert interpreter == {"resourceType": "Practitioner", "id": interpreter["id"], "identifier": [{"value": "465"}],
                           "name": [{"family": "Степанова", "given": ["Анна", "Андреевна"], "prefix": ["д-р"]}]}
    assert report["resultsInterpreter"] == [{"reference": url_of_resource(bundle, interpreter)}]
    # the test's performer is the same person: one Practitioner, referenced twice
    assert only(bundle, "Observation")["performer"][1] == {"reference": url_of_resource(bundle, interpreter)}
    assert requester["name"] == [{"family": "Петров", "given": ["Пётр"]}]
    request = only(bundle, "ServiceRequest")
    assert request["requester"] == {"reference": url_of_resource(bundle, requester)}
    assert request["identifier"][0]["assigner"] == {"display": "МИС"}
    assert request["code"] == report["code"]
    assert report["identifier"][3]["value"] == "F-99"
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


def test_order_notes_and_the_patients_are_the_reports_conclusion():
    bundle = convert(lab_result(lab_test(QTY), notes="<lr:Note>Гемолиз</lr:Note><lr:Note>Повторить</lr:Note>",
                                patient="<lr:SNILS>11223344595</lr:SNILS><lr:Note>Беременность 12 нед.</lr:Note>"))
    assert only(bundle, "DiagnosticReport")["conclusion"] == "Гемолиз\nПовторить\nО пациенте: Беременность 12 нед."


def test_a_range_in_the_labs_own_unit_says_which():
    obs = observation_of(lab_test(QTY, rng='<lr:ReferenceRange><lr:Low>3.885</lr:Low><lr:High>5.8275</lr:High>'
                                           '<lr:Text unit="mg/dl">70_105</lr:Text></lr:ReferenceRange>'))
    assert obs["referenceRange"][0]["text"] == "70_105 (mg/dl)"
    assert obs["referenceRange"][0]["low"] == {"value": Decimal("3.885")}


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


def test_the_lab_results_warnings_are_an_operation_outcome_in_the_bundle():
    root = lab_result(lab_test(QTY))
    warning = etree.SubElement(root, f"{{{NS}}}Warning")
    for tag, text in (("Code", "STATUS_LOWERED"), ("Where", "OBR[1]-25"), ("Text", "lowered to P")):
        etree.SubElement(warning, f"{{{NS}}}{tag}").text = text
    validate_payload(NS, root)
    outcome = only(convert(root), "OperationOutcome")
    assert outcome["issue"] == [{"severity": "warning", "code": "business-rule",
                                 "details": {"coding": [{"system": "urn://zdravlink/fhir/warning",
                                                         "code": "STATUS_LOWERED"}], "text": "lowered to P"},
                                 "location": ["OBR[1]-25"]}]
    assert "OperationOutcome" not in [e["resource"]["resourceType"] for e in convert(lab_result(lab_test(QTY)))["entry"]]
