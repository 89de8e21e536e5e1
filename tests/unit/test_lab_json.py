"""A lab's JSON (and its XML twin) keeps what it says: several orders, statuses, notes, nulls.

The JSON is turned into an ORU^R01 and mapped by the same engine as HL7, so these tests
check the turning (every order, note and null reaches the lab result) and the way back
for gaps (each named by its place in the lab's own document).
"""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
from lxml import etree
from pydantic import ValidationError

from adapters.hl7v2.oru import LAB_RESULT_NS, MappingGaps, map_message
from adapters.mapping.lab_json import LabResultsDocument, document_from_xml, for_json, json_place, to_oru
from adapters.mapping.lab_mapping import LabMapping

ROOT = Path(__file__).resolve().parents[2]
RESULT_SCHEMA = etree.XMLSchema(etree.parse(str(ROOT / "schemas_xsd/payloads/lab-result-1.0.xsd")))
REPORT_SCHEMA = etree.XMLSchema(etree.parse(str(ROOT / "schemas_xsd/payloads/lab-report-1.0.xsd")))
NS = {"lr": LAB_RESULT_NS}

MAPPING = LabMapping.model_validate({
    "lab": "json-lab", "identify": {"sending_facility": ["JSONLAB"]}, "recipient": {"fixed": "clinic"},
    "decimal_comma": True,
    "tests": {"HGB": {"fsli": "1017128", "display": "Гемоглобин общий", "unit": {"code": "g/L"}, "convert": {"g/dL": 10}},
              "GLU": {"fsli": "1016107", "display": "Глюкоза", "unit": {"code": "mmol/L"}},
              "K": {"fsli": "1016105", "display": "Калий", "unit": {"code": "mmol/L"}},
              "COMMENT": {"fsli": "1016020", "display": "Заключение", "value": "text"}},
})

TWO_ORDERS = {
    "messageId": "J-1",
    "patient": {"snils": "112-233-445 95", "name": {"family": "Иванова", "given": "Анна", "middle": "Петровна"},
                "birthDate": "1980-01-01", "sex": "F"},
    "orders": [
        {"placer": "P1", "filler": "F1", "service": {"code": "CBC", "text": "Общий анализ крови"}, "status": "F",
         "reportedAt": "2026-11-23T10:00:00+03:00", "notes": ["Гемолиз образца"],
         "results": [{"code": "HGB", "value": "13,5", "unit": "g/dL", "range": "12-16", "flags": ["N"],
                      "notes": ["Повторное исследование"]}]},
        {"placer": "P2", "filler": "F2", "service": {"code": "BIO", "text": "Биохимия"}, "status": "P",
         "observedAt": "2026-11-23T09:00:00+03:00",
         "results": [{"code": "GLU", "value": None, "unit": None},
                     {"code": "K", "value": "4,1", "unit": "mmol/L", "status": "P"}]},
    ],
}


def mapped(doc: dict) -> etree._Element:
    message, _ = to_oru(LabResultsDocument.model_validate(doc), MAPPING)
    payload = map_message(message, for_json(MAPPING)).payload
    assert RESULT_SCHEMA.validate(payload), RESULT_SCHEMA.error_log
    return payload


def gaps(doc: dict) -> set[tuple[str, str]]:
    message, places = to_oru(LabResultsDocument.model_validate(doc), MAPPING)
    with pytest.raises(MappingGaps) as info:
        map_message(message, for_json(MAPPING))
    return {(g.code, json_place(places, g.segment, g.sequence, g.field)) for g in info.value.gaps}


def test_each_json_order_is_an_order_with_its_numbers_service_status_and_notes():
    payload = mapped(TWO_ORDERS)
    first, second = payload.findall("lr:Order", NS)
    assert [o.findtext("lr:PlacerNumber", namespaces=NS) for o in (first, second)] == ["P1", "P2"]
    assert [o.findtext("lr:FillerNumber", namespaces=NS) for o in (first, second)] == ["F1", "F2"]
    assert second.findtext("lr:Service/lr:Display", namespaces=NS) == "Биохимия"
    assert [o.findtext("lr:Status", namespaces=NS) for o in (first, second)] == ["F", "P"]
    assert payload.findtext("lr:Status", namespaces=NS) == "P"  # the least final of its orders
    assert first.findtext("lr:ReportedAt", namespaces=NS) == "2026-11-23T10:00:00+03:00"
    assert second.findtext("lr:ObservedAt", namespaces=NS) == "2026-11-23T09:00:00+03:00"
    assert first.findtext("lr:Note", namespaces=NS) == "Гемолиз образца"
    assert first.findtext("lr:Test/lr:Note", namespaces=NS) == "Повторное исследование"
    assert [t.findtext("lr:LocalCode/lr:Code", namespaces=NS) for t in second.findall("lr:Test", NS)] == ["GLU", "K"]
    assert payload.findtext("lr:Patient/lr:Name/lr:Middle", namespaces=NS) == "Петровна"


def test_a_result_without_a_status_takes_its_orders_and_a_preliminary_order_stays_preliminary():
    glu, k = mapped(TWO_ORDERS).findall("lr:Order[2]/lr:Test", NS)
    assert glu.find("lr:Status", NS).text == "P" and glu.find("lr:Status", NS).get("derived") == "order"
    assert k.find("lr:Status", NS).text == "P" and k.find("lr:Status", NS).get("hl7") == "P"


def test_json_null_is_the_labs_no_value_and_a_value_left_out_on_a_final_result_is_a_gap():
    glu = mapped(TWO_ORDERS).find("lr:Order[2]/lr:Test", NS)
    assert glu.find("lr:NoValue", NS).get("reason") == "null"
    assert glu.get("nulls") == "unit" and glu.find("lr:Quantity", NS) is None
    left_out = copy.deepcopy(TWO_ORDERS)
    del left_out["orders"][0]["results"][0]["value"]
    assert ("VALUE_MISSING", "orders[0].results[0].value") in gaps(left_out)


def test_the_single_order_form_keeps_its_first_contract():
    doc = {"messageId": "J-2", "patient": {"localId": "A-77"},
           "order": {"placer": "ORD-1", "service": {"code": "CBC"}}, "reportedAt": "2026-11-23T10:00:00+03:00",
           "results": [{"code": "HGB", "value": "135", "unit": "g/L"}]}
    payload = mapped(doc)
    (order,) = payload.findall("lr:Order", NS)
    assert order.findtext("lr:PlacerNumber", namespaces=NS) == "ORD-1"
    assert order.findtext("lr:ReportedAt", namespaces=NS) == "2026-11-23T10:00:00+03:00"
    # no status anywhere: F, as the JSON contract always said, and marked as not the lab's word
    assert payload.findtext("lr:Status", namespaces=NS) == "F"
    assert order.find("lr:Test/lr:Status", NS).text == "F"


def test_gaps_are_named_by_their_place_in_the_labs_json():
    doc = copy.deepcopy(TWO_ORDERS)
    doc["orders"][1]["results"][1]["unit"] = "mg/dL"
    doc["orders"][1]["results"].append({"code": "XYZ", "value": "1"})
    assert gaps(doc) == {("UNMAPPED_UNIT", "orders[1].results[1].unit"),
                         ("UNMAPPED_TEST_CODE", "orders[1].results[2].code")}


def test_places_of_the_single_order_form():
    doc = LabResultsDocument.model_validate({"messageId": "J-3", "patient": {}, "order": {"placer": "O"},
                                            "results": [{"code": "HGB", "notes": ["n"]}]})
    _, places = to_oru(doc, MAPPING)
    assert json_place(places, "OBR", 1, 2) == "order.placer"
    assert json_place(places, "OBR", 1, 25) == "status"
    assert json_place(places, "OBR", 1, 22) == "reportedAt"
    assert json_place(places, "OBX", 1, 6) == "results[0].unit"
    assert json_place(places, "NTE", 1, 3) == "results[0].notes[0]"
    assert json_place(places, "PID", 1, 8) == "patient.sex"
    assert json_place(places, "OBX", 9, 5) == "body"


def test_hl7_delimiters_in_json_text_are_escaped_not_read_as_structure():
    doc = {"messageId": "J|4^x", "patient": {"localId": "A~1"},
           "results": [{"code": "COMMENT", "type": "TX", "value": "a|b^c~d&e\\f"}]}
    payload = mapped(doc)
    assert payload.findtext("lr:Order/lr:Test/lr:Text", namespaces=NS) == "a|b^c~d&e\\f"
    assert payload.findtext("lr:ResultId", namespaces=NS) == "json-lab:J|4^x"
    assert payload.findtext("lr:Patient/lr:LocalId", namespaces=NS) == "A~1"


@pytest.mark.parametrize("doc, field", [
    ({"messageId": "J", "patient": {}}, "results"),
    ({"messageId": "J", "patient": {}, "orders": [{"results": [{"code": "HGB"}]}],
      "results": [{"code": "HGB"}]}, "results"),
    ({"messageId": "J", "patient": {}, "orders": [{"results": [{"code": "HGB"}]}], "status": "F"}, ""),
    ({"messageId": "J", "patient": {}, "order": {"results": [{"code": "HGB"}]}, "results": [{"code": "K"}]}, ""),
    ({"messageId": "J", "patient": {}, "results": [{"code": "HGB", "comment": "x"}]}, "results.0.comment"),
])
def test_ambiguous_or_unknown_shapes_are_refused(doc, field):
    with pytest.raises(ValidationError) as info:
        LabResultsDocument.model_validate(doc)
    assert ".".join(str(p) for p in info.value.errors()[0]["loc"]) == field


LAB_REPORT = """<lab:LabReport xmlns:lab="urn://zdravlink/types/lab-report/1.0"
    xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <lab:messageId>J-1</lab:messageId>
  <lab:patient><lab:name><lab:family>Иванова</lab:family><lab:given>Анна</lab:given><lab:middle>Петровна</lab:middle>
    </lab:name><lab:snils>112-233-445 95</lab:snils><lab:birthDate>1980-01-01</lab:birthDate><lab:sex>F</lab:sex>
  </lab:patient>
  <lab:orders>
    <lab:order><lab:placer>P1</lab:placer><lab:filler>F1</lab:filler>
      <lab:service><lab:code>CBC</lab:code><lab:text>Общий анализ крови</lab:text></lab:service>
      <lab:status>F</lab:status><lab:reportedAt>2026-11-23T10:00:00+03:00</lab:reportedAt>
      <lab:notes><lab:note>Гемолиз образца</lab:note></lab:notes>
      <lab:results><lab:result><lab:code>HGB</lab:code><lab:value>13,5</lab:value><lab:unit>g/dL</lab:unit>
        <lab:range>12-16</lab:range><lab:flag>N</lab:flag>
        <lab:notes><lab:note>Повторное исследование</lab:note></lab:notes></lab:result></lab:results>
    </lab:order>
    <lab:order><lab:placer>P2</lab:placer><lab:filler>F2</lab:filler>
      <lab:service><lab:code>BIO</lab:code><lab:text>Биохимия</lab:text></lab:service>
      <lab:status>P</lab:status><lab:observedAt>2026-11-23T09:00:00+03:00</lab:observedAt>
      <lab:results>
        <lab:result><lab:code>GLU</lab:code><lab:value xsi:nil="true"/><lab:unit xsi:nil="true"/></lab:result>
        <lab:result><lab:code>K</lab:code><lab:value>4,1</lab:value><lab:unit>mmol/L</lab:unit>
          <lab:status>P</lab:status></lab:result>
      </lab:results>
    </lab:order>
  </lab:orders>
</lab:LabReport>"""


def test_the_xml_twin_with_orders_notes_and_nil_is_the_same_document():
    root = etree.fromstring(LAB_REPORT.encode())
    assert REPORT_SCHEMA.validate(root), REPORT_SCHEMA.error_log
    doc = document_from_xml(root)
    assert doc == LabResultsDocument.model_validate(TWO_ORDERS)
    assert doc.orders[1].results[0].is_null("value") and not doc.orders[1].results[1].is_null("unit")
    assert etree.tostring(mapped(TWO_ORDERS)) == etree.tostring(
        map_message(to_oru(doc, MAPPING)[0], for_json(MAPPING)).payload)
