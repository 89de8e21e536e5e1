"""Mapping files and the ORU → lab result engine, on the real messages in tests/data/hl7v2.

Each reference message has a mapping file written for its lab (tests/data/mappings);
its result must pass the lab-result XSD and say what the message said.
"""
from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import hl7
import pytest
from lxml import etree

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
    path = next(MESSAGES.glob(f"{prefix}_*.hl7"))
    return hl7.parse(path.read_bytes().decode("utf-8").replace("\n", "\r").strip("\r"))


def result(prefix: str) -> etree._Element:
    payload = map_message(message(prefix), mapping(LAB_OF[prefix])).payload
    assert SCHEMA.validate(payload), SCHEMA.error_log
    return payload


def by_code(payload: etree._Element) -> dict[str, etree._Element]:
    return {t.findtext("lr:LocalCode/lr:Code", namespaces=NS): t for t in payload.iterfind("lr:Test", NS)}


def test_every_mapping_file_loads_and_names_participants():
    problems: list[ConfigProblem] = []
    labs = load_mappings(DATA, {"nist-lab", "realm-lab", "cerner-lab", "ghh-lab", "renal-lab", "abl-lab", "clinic"},
                         problems)
    assert problems == [] and set(labs) == set(LAB_OF.values())


@pytest.mark.parametrize("prefix", [p for p in LAB_OF if p != "09"])
def test_reference_message_becomes_a_valid_lab_result(prefix):
    payload = result(prefix)
    assert payload.findtext("lr:Laboratory/lr:Mnemonic", namespaces=NS) == LAB_OF[prefix]
    assert payload.findall("lr:Test", NS)


def test_nist_lead_numeric_high():
    payload = result("01")
    assert payload.findtext("lr:ResultId", namespaces=NS) == "nist-lab:9700123"
    assert payload.findtext("lr:Status", namespaces=NS) == "F"
    lead = by_code(payload)["10368-9"]
    assert lead.findtext("lr:Code/lr:Code", namespaces=NS) == "1016001"
    assert lead.findtext("lr:Code/lr:System", namespaces=NS) == "1.2.643.5.1.13.13.11.1080"
    assert lead.findtext("lr:Quantity/lr:Value", namespaces=NS) == "50"
    assert lead.findtext("lr:Quantity/lr:Unit/lr:Code", namespaces=NS) == "ug/dL"
    assert lead.findtext("lr:Flag", namespaces=NS) == "H"
    assert lead.findtext("lr:ReferenceRange/lr:Text", namespaces=NS).startswith("<9 mcg/dL")
    assert payload.findtext("lr:ObservedAt", namespaces=NS) == "2008-08-15T10:30:00-07:00"
    assert payload.findtext("lr:Patient/lr:BirthDate", namespaces=NS) == "2007-05-26"


def test_corrected_result_keeps_its_result_id():
    first, corrected = result("01"), result("02")
    assert corrected.findtext("lr:Status", namespaces=NS) == "C"
    assert corrected.findtext("lr:ResultId", namespaces=NS) == first.findtext("lr:ResultId", namespaces=NS)
    assert by_code(corrected)["10368-9"].findtext("lr:Status", namespaces=NS) == "C"


def test_coded_values_preliminary_and_text_only_codes():
    realm = by_code(result("07"))["625-4"]
    assert realm.findtext("lr:Coded/lr:Code", namespaces=NS) == "66543000"
    assert realm.findtext("lr:Coded/lr:System", namespaces=NS) == "SCT"
    assert realm.findtext("lr:Status", namespaces=NS) == "P"
    cerner = by_code(result("08"))["548-8"]
    assert cerner.findtext("lr:Coded/lr:Display", namespaces=NS) == "Bordetella pertussis"
    assert cerner.findtext("lr:Flag", namespaces=NS) == "A"


def test_missing_values_cancelled_tests_and_escapes():
    renal = by_code(result("11"))
    assert renal["WBC"].findtext("lr:NotPerformed", namespaces=NS) == "no value given"
    assert renal["TACR"].findtext("lr:NotPerformed", namespaces=NS) == "## TEST CANCELLED ##"
    assert renal["TRLB"].findtext("lr:LocalCode/lr:Display", namespaces=NS) == "Referral lab: Royal London & Barts"
    assert renal["TACR"].findtext("lr:ReferenceRange/lr:Low", namespaces=NS) == "1"


def test_analyser_output_converted_and_not_measured():
    abl = by_code(result("13"))
    assert abl["tHb"].findtext("lr:Quantity/lr:Value", namespaces=NS) == "173"
    assert abl["tHb"].findtext("lr:Quantity/lr:Unit/lr:Code", namespaces=NS) == "g/L"
    assert abl["sO2"].findtext("lr:NotPerformed", namespaces=NS) == "....."
    assert (abl["O2Hb"].findtext("lr:Quantity/lr:Value", namespaces=NS), abl["O2Hb"].findtext("lr:Flag", namespaces=NS)) \
        == ("-58.4", "<")
    assert abl["pH"].findtext("lr:Quantity/lr:Value", namespaces=NS) == "7.6"
    assert len(abl) == 21


def test_structured_numeric_converted_with_its_range():
    msg = message("09")
    msg.segment("PID")[7][0] = "19620320"
    glucose = by_code(map_message(msg, mapping("ghh-lab")).payload)["1554-5"]
    assert Decimal(glucose.findtext("lr:Quantity/lr:Value", namespaces=NS)) == Decimal("10.101")
    assert glucose.findtext("lr:ReferenceRange/lr:Low", namespaces=NS) == "3.885"


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
        "fields": {"patient": {"snils": {"path": "PID-3.1", "where": {"component": 5, "equals": "SNILS"}},
                               "local_id": "PID-3.1"}},
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


def test_decimal_comma_and_conversion_once_the_gaps_are_filled():
    text = GAPPY.replace("PID|||^^^^MR", "PID|||112-233-445 95^^^^SNILS").replace("OBX|2|NM|XYZ", "OBX|2|NM|GLU") \
        .replace("|mg/dL|", "|mmol/L|").replace("высокий", "4,4")
    hgb = by_code(map_message(hl7.parse(text), gappy_mapping()).payload)
    assert hgb["HGB"].findtext("lr:Quantity/lr:Value", namespaces=NS) == "135"
    assert hgb["K"].findtext("lr:Quantity/lr:Value", namespaces=NS) == "4.4"
    payload = map_message(hl7.parse(text), gappy_mapping()).payload
    assert payload.findtext("lr:Patient/lr:SNILS", namespaces=NS) == "11223344595"


def test_invalid_snils_is_its_own_gap():
    text = GAPPY.replace("PID|||^^^^MR", "PID|||112-233-445 96^^^^SNILS").replace("OBX|2|NM|XYZ^Unknown test||1.0|mmol/L|||||F\r", "") \
        .replace("OBX|3|NM|GLU^Глюкоза||5.1|mg/dL|||||F\r", "").replace("OBX|4|NM|K^Калий||высокий|mmol/L|||||F\r", "")
    with pytest.raises(MappingGaps) as info:
        map_message(hl7.parse(text), gappy_mapping())
    assert [(g.code, g.where) for g in info.value.gaps] == [("PATIENT_ID_INVALID", "PID[1]-3.1")]


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
    got = by_code(map_message(hl7.parse(text), m).payload)
    assert got["T"].findtext("lr:Quantity/lr:Value", namespaces=NS) == "37"
    assert (got["CRP"].findtext("lr:Quantity/lr:Comparator", namespaces=NS),
            got["CRP"].findtext("lr:Quantity/lr:Value", namespaces=NS)) == ("<", "0.5")
    assert got["CRP2"].findtext("lr:Quantity/lr:Comparator", namespaces=NS) == ">="


@pytest.mark.parametrize("change,key,rule", [
    ({"fields": {"patient": {"local_id": "PID3"}}}, "fields.patient.local_id.anyOf[0].path", "not an HL7 path"),
    ({"tests": {"T": {"fsli": "1", "display": "x", "convert": {"a": "__import__('os')"}}}}, "tests.T.convert.a",
     "a formula uses only x"),
    ({"recipient": {}}, "recipient", "give fixed"),
    ({"tests": {"T": {"fsli": "abc", "display": "x"}}}, "tests.T.fsli", "must match"),
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


def test_unknown_participants_and_file_name_mismatch(tmp_path):
    (tmp_path / "mappings").mkdir()
    (tmp_path / "mappings" / "lab-a.yaml").write_text(
        "lab: lab-b\nidentify: {sending_facility: [X]}\nrecipient: {fixed: clinic}\ntests: {T: {fsli: '1', display: x}}\n")
    (tmp_path / "mappings" / "lab-c.yaml").write_text(
        "lab: lab-c\nidentify: {sending_facility: [X]}\nrecipient: {fixed: nobody}\ntests: {T: {fsli: '1', display: x}}\n")
    problems: list[ConfigProblem] = []
    load_mappings(tmp_path, {"lab-a", "clinic"}, problems)
    rules = {(Path(p.file).name, p.key): p.rule for p in problems}
    assert rules[("lab-a.yaml", "lab")] == "must be the file's name 'lab-a' (got 'lab-b')"
    assert rules[("lab-c.yaml", "lab")] == "unknown participant 'lab-c'"
    assert rules[("lab-c.yaml", "recipient.fixed")] == "unknown participant 'nobody'"


def test_times_without_offset_get_the_labs_zone():
    m = mapping("ghh-lab").model_copy(update={"timezone": "Europe/Moscow"})
    msg = message("09")
    msg.segment("PID")[7][0] = "19620320"
    payload = map_message(msg, m).payload
    assert payload.findtext("lr:ObservedAt", namespaces=NS) == "2002-02-15T07:30:00+03:00"
    with pytest.raises(ValueError, match="IANA"):
        LabMapping.model_validate({**m.model_dump(), "timezone": "Mars/Olympus"})
