"""Mapping files and the ORU → lab result engine: what a message says survives, nothing is invented.

Small messages written for one rule each, and the reference messages in tests/data/hl7v2
with the mapping written for their lab (tests/data/mappings); the goldens of the newer
reference messages are checked field by field in test_reference_goldens.py.
"""
from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import hl7
import pytest
from lxml import etree

from adapters.hl7v2.lab_intake import parse_for_cli
from adapters.hl7v2.oru import LAB_RESULT_NS, MappingGaps, map_message
from adapters.mapping.lab_mapping import LabMapping, load_mapping, load_mappings
from gateway.config import ConfigProblem

DATA = Path(__file__).resolve().parents[1] / "data"
MESSAGES = DATA / "hl7v2"
MAPPINGS = DATA / "mappings"
SCHEMA = etree.XMLSchema(etree.parse(str(Path(__file__).resolve().parents[2] / "schemas_xsd/payloads/lab-result-1.0.xsd")))
NS = {"lr": LAB_RESULT_NS}
LAB_OF = {"01": "nist-lab", "02": "nist-lab", "03": "nist-lab", "04": "nist-lab", "05": "nist-lab", "07": "realm-lab",
          "08": "cerner-lab", "09": "ghh-lab", "11": "renal-lab", "13": "abl-lab"}


def mapping(name: str) -> LabMapping:
    problems: list[ConfigProblem] = []
    found = load_mapping(MAPPINGS / f"{name}.yaml", problems)
    assert problems == [] and found is not None
    return found


def message(prefix: str) -> hl7.Message:
    return parse_for_cli(next(MESSAGES.glob(f"{prefix}_*.hl7")).read_bytes())


def result(prefix: str) -> etree._Element:
    payload = map_message(message(prefix), mapping(LAB_OF[prefix])).payload
    assert SCHEMA.validate(payload), SCHEMA.error_log
    return payload


def by_lab_code(payload: etree._Element) -> dict[str, etree._Element]:
    """Tests by the lab's code (or its text, for a lab that sends none)."""
    out = {}
    for t in payload.iterfind("lr:Order/lr:Test", NS):
        key = t.findtext("lr:LocalCode/lr:Code", namespaces=NS) or t.findtext("lr:LocalCode/lr:Display", namespaces=NS)
        out[key] = t
    return out


def gaps_of(text: str, m: LabMapping) -> list[tuple[str, str]]:
    with pytest.raises(MappingGaps) as info:
        map_message(hl7.parse(text), m)
    return [(g.code, g.where) for g in info.value.gaps]


def test_every_mapping_file_loads_and_names_participants():
    problems: list[ConfigProblem] = []
    labs = load_mappings(DATA, {"nist-lab", "realm-lab", "cerner-lab", "ghh-lab", "renal-lab", "abl-lab", "clinic",
                                *_new_labs()}, problems)
    assert problems == []
    assert set(LAB_OF.values()) <= set(labs)


def _new_labs() -> set[str]:
    return {p.stem for p in MAPPINGS.glob("*.yaml")}


@pytest.mark.parametrize("prefix", [p for p in LAB_OF if p not in ("09", "11")])
def test_reference_message_becomes_a_valid_lab_result(prefix):
    payload = result(prefix)
    assert payload.findtext("lr:Laboratory/lr:Mnemonic", namespaces=NS) == LAB_OF[prefix]
    assert payload.findall("lr:Order/lr:Test", NS)


def test_nist_lead_numeric_high():
    payload = result("01")
    assert payload.findtext("lr:ResultId", namespaces=NS) == "nist-lab:NIST-100929110701660"
    assert payload.findtext("lr:Status", namespaces=NS) == "F"
    order = payload.find("lr:Order", NS)
    assert order.findtext("lr:OrderId", namespaces=NS) == "nist-lab:9700123"
    lead = by_lab_code(payload)["10368-9"]
    assert lead.get("source") == "OBX[1]"
    assert lead.findtext("lr:Code/lr:Code", namespaces=NS) == "1016001"
    assert lead.findtext("lr:Code/lr:System", namespaces=NS) == "1.2.643.5.1.13.13.11.1080"
    assert lead.findtext("lr:Quantity/lr:Value", namespaces=NS) == "50"
    assert lead.findtext("lr:Quantity/lr:Unit/lr:Code", namespaces=NS) == "ug/dL"
    assert lead.findtext("lr:Flag", namespaces=NS) == "H"
    assert lead.findtext("lr:ReferenceRange/lr:Text", namespaces=NS).startswith("<9 mcg/dL")
    assert lead.find("lr:ReferenceRange/lr:Low", NS) is None
    assert order.findtext("lr:ObservedAt", namespaces=NS) == "2008-08-15T10:30:00-07:00"
    assert payload.findtext("lr:Patient/lr:BirthDate", namespaces=NS) == "2007-05-26"
    assert payload.find("lr:Patient/lr:LocalId", NS).get("assigner") == "MPI"


def test_a_corrected_order_keeps_its_order_id():
    first, corrected = result("01"), result("02")
    assert corrected.findtext("lr:Order/lr:Status", namespaces=NS) == "C"
    assert corrected.findtext("lr:Order/lr:OrderId", namespaces=NS) == first.findtext("lr:Order/lr:OrderId",
                                                                                        namespaces=NS)
    assert by_lab_code(corrected)["10368-9"].findtext("lr:Status", namespaces=NS) == "C"


def test_coded_values_whole_and_a_preliminary_test_lowers_its_final_order():
    realm = result("07")
    bacteria = by_lab_code(realm)["625-4"]
    assert bacteria.findtext("lr:Coded/lr:Code", namespaces=NS) == "66543000"
    assert bacteria.findtext("lr:Coded/lr:System", namespaces=NS) == "SCT"
    assert bacteria.findtext("lr:Status", namespaces=NS) == "P"
    status = realm.find("lr:Order/lr:Status", NS)
    assert (status.text, status.get("hl7"), status.get("derived")) == ("P", "F", "results")
    assert realm.findtext("lr:Status", namespaces=NS) == "P"
    assert realm.findtext("lr:Warning/lr:Code", namespaces=NS) == "STATUS_LOWERED"
    cerner = by_lab_code(result("08"))["548-8"]
    assert cerner.find("lr:Coded/lr:Code", NS) is None  # the lab sent text without a code: none is invented
    assert cerner.findtext("lr:Coded/lr:Display", namespaces=NS) == "Bordetella pertussis"
    assert cerner.findtext("lr:Coded/lr:System", namespaces=NS) == "SNM"
    assert cerner.findtext("lr:Flag", namespaces=NS) == "A"


def test_empty_values_on_final_results_are_gaps_not_not_performed():
    with pytest.raises(MappingGaps) as info:
        map_message(message("11"), mapping("renal-lab"))
    assert [(g.code, g.where, g.lab_code) for g in info.value.gaps] == [
        ("VALUE_MISSING", "OBX[1]-5", "WBC"), ("VALUE_MISSING", "OBX[4]-5", "TRLB")]


def test_analyser_output_converted_and_not_measured():
    abl = by_lab_code(result("13"))
    assert abl["tHb"].findtext("lr:Quantity/lr:Value", namespaces=NS) == "173"
    assert abl["tHb"].findtext("lr:Quantity/lr:Unit/lr:Code", namespaces=NS) == "g/L"
    assert abl["sO2"].findtext("lr:NotPerformed", namespaces=NS) == "....."
    assert (abl["O2Hb"].findtext("lr:Quantity/lr:Value", namespaces=NS), abl["O2Hb"].findtext("lr:Flag", namespaces=NS)) \
        == ("-58.4", "<")
    assert abl["pH"].findtext("lr:Quantity/lr:Value", namespaces=NS) == "7.6"
    assert abl["pH"].find("lr:LocalCode/lr:Code", NS) is None and abl["pH"].findtext("lr:LocalCode/lr:System",
                                                                                     namespaces=NS) == "M"
    assert len(abl) == 21


def test_structured_numeric_converted_with_its_range_whose_text_keeps_the_labs_unit():
    msg = message("09")
    msg.segment("PID")[7][0] = "19620320"
    glucose = by_lab_code(map_message(msg, mapping("ghh-lab")).payload)["1554-5"]
    assert Decimal(glucose.findtext("lr:Quantity/lr:Value", namespaces=NS)) == Decimal("10.101")
    assert glucose.findtext("lr:ReferenceRange/lr:Low", namespaces=NS) == "3.885"
    text = glucose.find("lr:ReferenceRange/lr:Text", NS)
    assert (text.text, text.get("unit")) == ("70_105", "mg/dl")


def test_invalid_birth_date_is_a_gap_naming_pid_7_without_the_value():
    with pytest.raises(MappingGaps) as info:
        map_message(message("09"), mapping("ghh-lab"))
    (gap,) = info.value.gaps
    assert (gap.code, gap.segment, gap.field) == ("VALUE_INVALID", "PID", 7)
    assert "196203520" not in gap.reason


def test_message_id_is_derived_from_lab_and_control_id():
    a = map_message(message("01"), mapping("nist-lab"))
    b = map_message(message("01"), mapping("nist-lab"))
    assert a.message_id == b.message_id and a.control_id == "NIST-100929110701660"
    assert map_message(message("02"), mapping("nist-lab")).message_id != a.message_id


def test_an_empty_control_id_is_a_gap_at_msh_10():
    text = GAPPY.replace("|ORU^R01|G-1|", "|ORU^R01||")
    assert ("CONTROL_ID_MISSING", "MSH[1]-10") in gaps_of(text, gappy_mapping())


GAPPY = ("MSH|^~\\&|APP|GAPLAB|GW|GW|20261123101500||ORU^R01|G-1|P|2.5.1\r"
         "PID|||^^^^MR||Иванов^Иван||19800101|M\r"
         "OBR|1|P1|F1|CBC^Общий анализ||||||||||||||||||||F\r"
         "OBX|1|NM|HGB^Гемоглобин||13,5|g/dL|||||F\r"
         "OBX|2|NM|XYZ^Unknown test||1.0|mmol/L|||||F\r"
         "OBX|3|NM|GLU^Глюкоза||5.1|mg/dL|||||F\r"
         "OBX|4|NM|K^Калий||высокий|mmol/L|||||F\r")


def gappy_mapping(**extra: object) -> LabMapping:
    data = {
        "lab": "gap-lab", "identify": {"sending_facility": ["GAPLAB"]}, "recipient": {"fixed": "clinic"},
        "decimal_comma": True,
        "fields": {"patient": {"name": "PID-5",
                               "snils": {"path": "PID-3.1", "where": {"component": 5, "equals": "SNILS"}},
                               "local_id": "PID-3.1"},
                   "order": {"placer": "OBR-2", "filler": "OBR-3", "service": "OBR-4"},
                   "observed_at": "OBR-7", "reported_at": "OBR-22"},
        "tests": {"HGB": {"fsli": "1017128", "display": "Гемоглобин общий", "unit": {"code": "g/L"},
                          "convert": {"g/dL": 10}},
                  "GLU": {"fsli": "1016107", "display": "Глюкоза", "unit": {"code": "mmol/L"}},
                  "K": {"fsli": "1016105", "display": "Калий", "unit": {"code": "mmol/L"}}},
        **extra,
    }
    return LabMapping.model_validate(data)


def test_every_gap_is_reported_at_once_with_its_place():
    with pytest.raises(MappingGaps) as info:
        map_message(hl7.parse(GAPPY), gappy_mapping())
    found = {(g.code, g.where, g.lab_code) for g in info.value.gaps}
    assert found == {
        ("PATIENT_ID_MISSING", "PID[1]-3.1", None),
        ("UNMAPPED_TEST_CODE", "OBX[2]-3.1", "XYZ"),
        ("UNMAPPED_UNIT", "OBX[3]-6", "GLU"),
        ("VALUE_TYPE_MISMATCH", "OBX[4]-5", "K"),
    }
    assert all("Иванов" not in g.reason for g in info.value.gaps)
    mismatch = next(g for g in info.value.gaps if g.code == "VALUE_TYPE_MISMATCH")
    assert "not_performed" not in mismatch.reason and "value: text" in mismatch.reason


def fixed(text: str) -> str:
    return text.replace("PID|||^^^^MR", "PID|||112-233-445 95^^^^SNILS").replace("OBX|2|NM|XYZ", "OBX|2|NM|GLU") \
        .replace("|mg/dL|", "|mmol/L|").replace("высокий", "4,4")


def test_decimal_comma_conversion_and_the_patients_name_whole():
    payload = map_message(hl7.parse(fixed(GAPPY)), gappy_mapping()).payload
    got = by_lab_code(payload)
    assert got["HGB"].findtext("lr:Quantity/lr:Value", namespaces=NS) == "135"
    assert got["K"].findtext("lr:Quantity/lr:Value", namespaces=NS) == "4.4"
    assert payload.findtext("lr:Patient/lr:SNILS", namespaces=NS) == "11223344595"
    name = payload.find("lr:Patient/lr:Name", NS)
    assert [(etree.QName(c).localname, c.text) for c in name] == [("Family", "Иванов"), ("Given", "Иван")]


def test_invalid_snils_is_its_own_gap():
    text = GAPPY.replace("PID|||^^^^MR", "PID|||112-233-445 96^^^^SNILS").replace("OBX|2|NM|XYZ^Unknown test||1.0|mmol/L|||||F\r", "") \
        .replace("OBX|3|NM|GLU^Глюкоза||5.1|mg/dL|||||F\r", "").replace("OBX|4|NM|K^Калий||высокий|mmol/L|||||F\r", "")
    assert gaps_of(text, gappy_mapping()) == [("PATIENT_ID_INVALID", "PID[1]-3.1")]


def test_formula_conversion_and_comparators():
    text = ("MSH|^~\\&|APP|GAPLAB|GW|GW|20261123101500||ORU^R01|G-2|P|2.5.1\r"
            "PID|||123^^^^MR\rOBR|1|P1|F1\r"
            "OBX|1|NM|T^Temp||98.6|[degF]|||||F\r"
            "OBX|2|SN|CRP^CRP||<^0.5|mg/L|||||F\r"
            "OBX|3|NM|CRP2^CRP||>=11|mg/L|||||F\r")
    m = gappy_mapping(tests={
        "T": {"fsli": "1", "display": "Температура", "unit": {"code": "Cel"}, "convert": {"[degF]": "(x - 32) * 5 / 9"}},
        "CRP": {"fsli": "2", "display": "СРБ", "unit": {"code": "mg/L"}},
        "CRP2": {"fsli": "3", "display": "СРБ", "unit": {"code": "mg/L"}}})
    got = by_lab_code(map_message(hl7.parse(text), m).payload)
    assert got["T"].findtext("lr:Quantity/lr:Value", namespaces=NS) == "37"
    assert (got["CRP"].findtext("lr:Quantity/lr:Comparator", namespaces=NS),
            got["CRP"].findtext("lr:Quantity/lr:Value", namespaces=NS)) == ("<", "0.5")
    assert got["CRP2"].findtext("lr:Quantity/lr:Comparator", namespaces=NS) == ">="


# ---- several orders, statuses, nulls, comments --------------------------------------------------

TWO_ORDERS = ("MSH|^~\\&|APP|GAPLAB|GW|GW|20261123101500||ORU^R01|T-2|P|2.5.1\r"
              "PID|||112-233-445 95^^^^SNILS||Петрова^Анна^Сергеевна||19800101|F\r"
              "NTE|1|L|Беременность 12 недель\r"
              "ORC|RE|ORD-1\r"
              "OBR|1|ORD-1|LAB-1|CBC^Общий анализ крови|||20261123080000+0300|||||||||||||||20261123100000+0300|||F\r"
              "NTE|1|L|Гемолиз\r"
              "OBX|1|NM|HGB^Гемоглобин||13,5|g/dL|12-16|N|||F\r"
              "NTE|1|L|Повторить через неделю\r"
              "ORC|RE|ORD-2\r"
              "OBR|2|ORD-2|LAB-2|RENAL^Почечная панель|||20261123081500+0300|||||||||||||||20261123103000+0300|||P\r"
              "OBX|1|NM|GLU^Глюкоза||5,1|mmol/L|3,9-6,1|\"\"|||P\r"
              "OBX|2|NM|K^Калий||\"\"|\"\"|\"\"||||I\r")


def test_each_obr_group_is_an_order_of_its_own_with_its_numbers_times_status_tests_and_notes():
    payload = map_message(hl7.parse(TWO_ORDERS), gappy_mapping()).payload
    assert SCHEMA.validate(payload), SCHEMA.error_log
    first, second = payload.findall("lr:Order", NS)
    assert [o.get("source") for o in (first, second)] == ["OBR[1]", "OBR[2]"]
    assert [o.findtext("lr:OrderId", namespaces=NS) for o in (first, second)] == ["gap-lab:LAB-1", "gap-lab:LAB-2"]
    assert [o.findtext("lr:PlacerNumber", namespaces=NS) for o in (first, second)] == ["ORD-1", "ORD-2"]
    assert [o.findtext("lr:Service/lr:Display", namespaces=NS) for o in (first, second)] == [
        "Общий анализ крови", "Почечная панель"]
    assert [o.findtext("lr:ObservedAt", namespaces=NS) for o in (first, second)] == [
        "2026-11-23T08:00:00+03:00", "2026-11-23T08:15:00+03:00"]
    assert [[t.get("source") for t in o.iterfind("lr:Test", NS)] for o in (first, second)] == [
        ["OBX[1]"], ["OBX[2]", "OBX[3]"]]
    assert [o.findtext("lr:Status", namespaces=NS) for o in (first, second)] == ["F", "S"]
    assert payload.findtext("lr:Status", namespaces=NS) == "S"  # the least final of its orders
    assert [(n.get("source"), n.text) for n in first.iterfind("lr:Note", NS)] == [("NTE[2]", "Гемолиз")]
    assert first.findtext("lr:Test/lr:Note", namespaces=NS) == "Повторить через неделю"
    assert payload.findtext("lr:Patient/lr:Note", namespaces=NS) == "Беременность 12 недель"


def test_hl7_nulls_are_nulls_never_a_flag_unit_or_text():
    payload = map_message(hl7.parse(TWO_ORDERS), gappy_mapping()).payload
    glucose, potassium = payload.findall("lr:Order[2]/lr:Test", NS)
    assert glucose.find("lr:Flag", NS) is None and glucose.get("nulls") == "flag"
    assert potassium.find("lr:NoValue", NS).get("reason") == "null"
    assert potassium.get("nulls") == "unit range"
    assert '""' not in etree.tostring(payload, encoding="unicode")


def test_an_order_is_never_more_final_than_its_tests_and_a_test_keeps_its_own_status():
    text = TWO_ORDERS.replace("|||P\rOBX|1|NM|GLU", "|||F\rOBX|1|NM|GLU")
    mapped = map_message(hl7.parse(text), gappy_mapping())
    second = mapped.payload.findall("lr:Order", NS)[1]
    status = second.find("lr:Status", NS)
    assert (status.text, status.get("hl7"), status.get("derived")) == ("S", "F", "results")
    assert [t.findtext("lr:Status", namespaces=NS) for t in second.iterfind("lr:Test", NS)] == ["P", "I"]
    assert [(w.code, w.where) for w in mapped.warnings] == [("STATUS_LOWERED", "OBR[2]-25")]
    assert "OBX[3] is I" in mapped.warnings[0].reason


@pytest.mark.parametrize("status,expected", [
    ("X", ("NotPerformed", "results cannot be obtained (OBX-11 X)")),
    ("N", ("NotPerformed", "not asked (OBX-11 N)")),
    ("I", ("NoValue", "pending")), ("P", ("NoValue", "pending")), ("D", ("NoValue", "withdrawn")),
])
def test_an_empty_value_says_why_only_as_the_lab_said_it(status, expected):
    text = fixed(GAPPY).replace("OBX|4|NM|K^Калий||4,4|mmol/L|||||F", f"OBX|4|NM|K^Калий|||mmol/L|||||{status}")
    potassium = by_lab_code(map_message(hl7.parse(text), gappy_mapping()).payload)["K"]
    el = potassium.find(f"lr:{expected[0]}", NS)
    assert (el.text if expected[0] == "NotPerformed" else el.get("reason")) == expected[1]


def test_an_empty_value_on_a_final_result_is_a_gap_and_no_mapping_can_hide_it():
    text = fixed(GAPPY).replace("OBX|4|NM|K^Калий||4,4|", "OBX|4|NM|K^Калий|||")
    assert gaps_of(text, gappy_mapping()) == [("VALUE_MISSING", "OBX[4]-5")]
    with pytest.raises(ValueError, match="not performed"):
        gappy_mapping(not_performed=[""])
    with pytest.raises(ValueError, match="not performed"):
        gappy_mapping(not_performed=['""'])


def test_flags_map_only_to_table_0078_and_the_hint_never_suggests_another_meaning():
    text = fixed(GAPPY).replace("OBX|1|NM|HGB^Гемоглобин||13,5|g/dL|||||F", "OBX|1|NM|HGB^Гемоглобин||13,5|g/dL||+++|||F")
    with pytest.raises(MappingGaps) as info:
        map_message(hl7.parse(text), gappy_mapping())
    (gap,) = info.value.gaps
    assert (gap.code, gap.where) == ("VALUE_INVALID", "OBX[1]-8")
    assert "not_performed" not in gap.reason and "never a code of another meaning" in gap.reason
    assert by_lab_code(map_message(hl7.parse(text), gappy_mapping(flags={"+++": "AA"})).payload)["HGB"].findtext(
        "lr:Flag", namespaces=NS) == "AA"
    with pytest.raises(ValueError, match="table 0078"):
        gappy_mapping(flags={"+++": "NOT PERFORMED"})
    with pytest.raises(ValueError, match="no flag"):
        gappy_mapping(flags={'""': "N"})


def test_a_missing_status_is_the_orders_or_the_mappings_never_assumed():
    text = fixed(GAPPY).replace("||||||||||||||||||||F\r", "\r").replace("|||||F\r", "\r")
    assert {c for c, _ in gaps_of(text, gappy_mapping())} == {"STATUS_MISSING"}
    analyser = map_message(hl7.parse(text), gappy_mapping(status_when_missing="F")).payload
    status = analyser.find("lr:Order/lr:Test/lr:Status", NS)
    assert (status.text, status.get("derived")) == ("F", "mapping")


def test_composites_whole_unit_system_range_bounds_and_text_requester_and_performer():
    text = ("MSH|^~\\&|APP|GAPLAB|GW|GW|20261123101500||ORU^R01|C-1|P|2.5.1\r"
            "PID|||123^^^^MR\r"
            "OBR|1|P1^MIS^1.2.3^ISO|F1|CBC^Общий анализ^L||||||||||||77^Сидоров^Пётр^Ильич^^д-р|||||||||F|||||||"
            "&Лебедева&Ольга&Ивановна\r"
            "OBX|1|NM|GLU^Глюкоза^L^1016107^Глюкоза^FSLI||5,1|mmol/L^millimole per liter^UCUM|3,9^6,1||||F|||||"
            "465^Иванов^Иван^Иванович\r")
    m = gappy_mapping(fields={"patient": {"local_id": "PID-3.1"},
                              "order": {"placer": "OBR-2", "requester": "OBR-16", "service": "OBR-4"},
                              "performer": "OBR-32", "test_performer": "OBX-16"},
                      tests={"GLU": {"fsli": "1016107", "display": "Глюкоза", "value": "quantity"}})
    payload = map_message(hl7.parse(text), m).payload
    assert SCHEMA.validate(payload), SCHEMA.error_log
    order = payload.find("lr:Order", NS)
    assert order.find("lr:PlacerNumber", NS).get("assigner") == "MIS"
    assert [c.text for c in order.find("lr:Requester/lr:Name", NS)] == ["Сидоров", "Пётр", "Ильич", "д-р"]
    assert order.findtext("lr:Requester/lr:Id", namespaces=NS) == "77"
    assert [c.text for c in order.find("lr:Performer/lr:Name", NS)] == ["Лебедева", "Ольга", "Ивановна"]
    test = order.find("lr:Test", NS)
    assert [test.findtext(f"lr:Quantity/lr:Unit/lr:{t}", namespaces=NS) for t in ("Code", "System", "Display")] == [
        "mmol/L", "UCUM", "millimole per liter"]
    assert [test.findtext(f"lr:ReferenceRange/lr:{t}", namespaces=NS) for t in ("Low", "High", "Text")] == [
        "3.9", "6.1", "3,9^6,1"]
    assert [test.findtext(f"lr:LocalCode/lr:Alternate/lr:{t}", namespaces=NS) for t in ("Code", "System")] == [
        "1016107", "FSLI"]
    assert [c.text for c in test.find("lr:Performer/lr:Name", NS)] == ["Иванов", "Иван", "Иванович"]


def test_tests_that_share_a_code_are_told_apart_by_system_text_or_service():
    text = ("MSH|^~\\&|APP|GAPLAB|GW|GW|20261123101500||ORU^R01|S-1|P|2.5.1\r"
            "PID|||123^^^^MR\r"
            "OBR|1|P1||Морфология - PDW||||||||||||||||||||F\r"
            "OBX|1|NM|LAB_1||2,1|fl|||||F\r"
            "OBR|2|P2||Gazometria - pH||||||||||||||||||||F\r"
            "OBX|1|NM|LAB_1||7,4||||||F\r"
            "OBX|2|ST|00000-0^ALERT DATE^LN||2009||||||F\r"
            "OBX|3|ST|00000-0^ROOM NUMBER^LN||E820||||||F\r")
    tests = {"pdw": {"code": "LAB_1", "service": "Морфология - PDW", "fsli": "1", "display": "PDW"},
             "ph": {"code": "LAB_1", "service": "Gazometria - pH", "fsli": "2", "display": "pH", "value": "quantity"},
             "alert": {"code": "00000-0", "system": "LN", "text": "ALERT DATE", "fsli": "3", "display": "x",
                       "value": "text"},
             "room": {"code": "00000-0", "text": "ROOM NUMBER", "fsli": "4", "display": "y", "value": "text"}}
    payload = map_message(hl7.parse(text), gappy_mapping(tests=tests)).payload
    assert [t.findtext("lr:Code/lr:Code", namespaces=NS) for t in payload.iterfind("lr:Order/lr:Test", NS)] == [
        "1", "2", "3", "4"]
    shared = {"a": {"code": "LAB_1", "fsli": "1", "display": "x"}, "b": {"code": "LAB_1", "fsli": "2", "display": "y"}}
    with pytest.raises(ValueError, match="recognised by the same code"):
        gappy_mapping(tests=shared)
    ambiguous = {"a": {"code": "LAB_1", "system": "L", "fsli": "1", "display": "x"},
                 "b": {"code": "LAB_1", "service": "Gazometria - pH", "fsli": "2", "display": "y"}}
    ambiguous_text = text.replace("OBX|1|NM|LAB_1||7,4|", "OBX|1|NM|LAB_1^^L||7,4|")
    assert ("AMBIGUOUS_TEST_CODE", "OBX[2]-3.1") in gaps_of(ambiguous_text, gappy_mapping(tests={
        **ambiguous, "alert": tests["alert"], "room": tests["room"]}))


def test_a_coded_null_leaks_nowhere():
    text = fixed(GAPPY).replace("OBX|4|NM|K^Калий||4,4|mmol/L|||||F", 'OBX|4|CE|K^Калий||^""||||||F')
    potassium = by_lab_code(map_message(hl7.parse(text), gappy_mapping()).payload)["K"]
    assert potassium.find("lr:NoValue", NS).get("reason") == "null"


@pytest.mark.parametrize("change,key,rule", [
    ({"fields": {"patient": {"local_id": "PID3"}}}, "fields.patient.local_id.anyOf[0].path", "not an HL7 path"),
    ({"tests": {"T": {"fsli": "1", "display": "x", "convert": {"a": "__import__('os')"}}}}, "tests.T.convert.a",
     "a formula uses only x"),
    ({"recipient": {}}, "recipient", "give fixed"),
    ({"tests": {"T": {"fsli": "abc", "display": "x"}}}, "tests.T.fsli", "must match"),
    ({"identify": {"sending_facility": ['""']}}, "identify.sending_facility[0]", "an HD needs"),
    ({"identify": {"sending_facility": [""]}}, "identify.sending_facility[0]", "an HD needs"),
    ({"ignore_segments": ["OBX"]}, "ignore_segments", "only Z-segments"),
    ({"flags": {"+": "positive"}}, "flags", "table 0078"),
    ({"status_when_missing": "Q"}, "status_when_missing", "must match"),
])
def test_mapping_mistakes_name_file_key_and_rule(tmp_path, change, key, rule):
    import yaml

    data = {"lab": "bad-lab", "identify": {"sending_facility": ["X"]}, "recipient": {"fixed": "clinic"},
            "tests": {"T": {"fsli": "1", "display": "x"}}}
    data.update(change)
    (tmp_path / "bad-lab.yaml").write_text(yaml.safe_dump(data, allow_unicode=True))
    problems: list[ConfigProblem] = []
    assert load_mapping(tmp_path / "bad-lab.yaml", problems) is None
    assert any(p.key.startswith(key) and rule in p.rule for p in problems), problems


def test_unknown_participants_file_name_mismatch_and_two_labs_identified_alike(tmp_path):
    (tmp_path / "mappings").mkdir()
    (tmp_path / "mappings" / "lab-a.yaml").write_text(
        "lab: lab-b\nidentify: {sending_facility: [X]}\nrecipient: {fixed: clinic}\ntests: {T: {fsli: '1', display: x}}\n")
    (tmp_path / "mappings" / "lab-c.yaml").write_text(
        "lab: lab-c\nidentify: {sending_facility: [X]}\nrecipient: {fixed: nobody}\ntests: {T: {fsli: '1', display: x}}\n")
    (tmp_path / "mappings" / "lab-d.yaml").write_text(
        "lab: lab-d\nidentify: {sending_facility: [X]}\nrecipient: {fixed: clinic}\ntests: {T: {fsli: '1', display: x}}\n")
    problems: list[ConfigProblem] = []
    load_mappings(tmp_path, {"lab-a", "lab-d", "clinic"}, problems)
    rules = {(Path(p.file).name, p.key): p.rule for p in problems}
    assert rules[("lab-a.yaml", "lab")] == "must be the file's name 'lab-a' (got 'lab-b')"
    assert rules[("lab-c.yaml", "lab")] == "unknown participant 'lab-c'"
    assert rules[("lab-c.yaml", "recipient.fixed")] == "unknown participant 'nobody'"
    assert "exactly as 'lab-c' does" in rules[("lab-d.yaml", "identify")]


def test_times_without_offset_get_the_labs_zone():
    m = mapping("ghh-lab").model_copy(update={"timezone": "Europe/Moscow"})
    msg = message("09")
    msg.segment("PID")[7][0] = "19620320"
    payload = map_message(msg, m).payload
    assert payload.findtext("lr:Order/lr:ObservedAt", namespaces=NS) == "2002-02-15T07:30:00+03:00"
    with pytest.raises(ValueError, match="IANA"):
        LabMapping.model_validate({**m.model_dump(), "timezone": "Mars/Olympus"})


def test_labs_are_told_apart_by_the_whole_hd_of_msh_4_and_msh_3():
    from adapters.mapping.lab_mapping import Identify

    clia = Identify.model_validate({"sending_facility": ["^1234^CLIA"]})
    joes = Identify.model_validate({"sending_facility": [{"namespace_id": "Joe's Lab", "universal_id": "1234",
                                                           "universal_id_type": "CLIA"}]})
    by_name = Identify.model_validate({"sending_facility": ["Joe's Lab"]})
    sent, app = ("Joe's Lab", "1234", "CLIA"), ("Lab1", "1234", "CLIA")
    assert (clia.score(sent, app), joes.score(sent, app), by_name.score(sent, app)) == (2, 3, 1)
    assert clia.score(("", "1234", "CLIA"), app) == 2 and by_name.score(("", "1234", "CLIA"), app) == 0
    assert clia.score(("", "9999", "CLIA"), app) == 0
    no_facility = Identify.model_validate({"sending_application": ["RADIS1"]})
    assert no_facility.score(("", "", ""), ("RADIS1", "", "")) == 2
    assert no_facility.score(("OTHER", "", ""), ("RADIS1", "", "")) == 0  # a lab that fills MSH-4 is someone else
    with pytest.raises(ValueError, match="sending_facility"):
        Identify.model_validate({})


def test_a_unit_on_a_text_value_is_a_warning_the_result_carries_and_two_orders_one_number_too():
    text = ("MSH|^~\\&|APP|GAPLAB|GW|GW|20261123101500||ORU^R01|U-1|P|2.5.1\r"
            "PID|||123^^^^MR\r"
            "OBR|1|P1|F1||||||||||||||||||||||F\rOBX|1|ST|HBE^HBeAg||Positive|Metric Ton|Negative||||F\r"
            "OBR|2|P1|F1||||||||||||||||||||||F\rOBX|2|ST|HBE^HBeAg||Negative||||||F\r")
    mapped = map_message(hl7.parse(text), gappy_mapping(tests={"HBE": {"fsli": "1", "display": "HBeAg",
                                                                       "value": "text"}}))
    assert [(w.code, w.where, w.severity) for w in mapped.warnings] == [
        ("UNIT_IGNORED", "OBX[1]-6", "W"), ("ORDER_ID_REPEATED", "OBR[2]-3", "W")]
    assert [o.findtext("lr:OrderId", namespaces=NS) for o in mapped.payload.iterfind("lr:Order", NS)] == [
        "gap-lab:F1", "gap-lab:F1#2"]
    assert [w.findtext("lr:Code", namespaces=NS) for w in mapped.payload.iterfind("lr:Warning", NS)] == [
        "UNIT_IGNORED", "ORDER_ID_REPEATED"]
