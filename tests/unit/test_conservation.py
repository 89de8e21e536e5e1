"""Conservation: every OBR, OBX and NTE of a lab's message is in the result or named in a gap or warning.

Checked over every reference message and over messages hypothesis builds from real segment
shapes — misplaced segments, run-together ones, nulls, bogus statuses, unknown codes. The
segments are counted here from the raw text, independently of the parser under test; the
result says where each came from (``source``), a gap or warning where it is; a comment (NTE)
on a test that a gap refuses is refused with it. Along the way: no message makes the mapping
crash, what goes out passes the lab-result schema and the strict FHIR mode, and no order is
final while one of its tests is not.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import hl7
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from adapters.fhir.lab_result import to_bundle
from adapters.fhir.validation import STRICT, validate_bundle
from adapters.hl7v2.ack import charset_of, decode, parse
from adapters.hl7v2.oru import MappingGaps, map_message
from adapters.mapping.lab_mapping import LabMapping, load_mapping

DATA = Path(__file__).resolve().parents[1] / "data"
NS = {"lr": "urn://zdravlink/types/lab-result/1.0"}
SCHEMA = etree.XMLSchema(etree.parse(str(Path(__file__).resolve().parents[2] / "schemas_xsd/payloads/lab-result-1.0.xsd")))
COUNTED = ("OBR", "OBX", "NTE")
_RUN_IN = re.compile(r"\|\s+(OBR|OBX|NTE)\|")
#: Least final first; F, A and C are all final.
_RANK = {"I": 0, "R": 1, "S": 2, "P": 3, "F": 4, "A": 4, "C": 4}

OLD = {"01": "nist-lab", "02": "nist-lab", "03": "nist-lab", "04": "nist-lab", "05": "nist-lab", "07": "realm-lab",
       "08": "cerner-lab", "09": "ghh-lab", "11": "renal-lab", "13": "abl-lab"}
NEW = {k: v["lab"] for k, v in json.loads((DATA / "lab-result-goldens" / "manifest.json").read_text()).items()
       if not k.startswith("_")}


def counted_segments(text: str, ignored: frozenset[str] = frozenset()) -> tuple[set[str], dict[str, int],
                                                                                dict[str, str]]:
    """OBR/OBX/NTE segments by ordinal (``OBX[3]``); how many of them were run into another segment,
    by the host segment; and for each NTE the OBX it follows — read from the text with nothing but a
    split on the segment separator. A Z-segment the mapping ignores is passed over, as if not there:
    an NTE after it still comments on the OBX before it."""
    counts: dict[str, int] = {}
    seen: set[str] = set()
    run_in: dict[str, int] = {}
    comment_on: dict[str, str] = {}
    last_obx = None
    field_sep = text[3]
    for line in text.split("\r"):
        name = line[:3]
        if len(line) < 4 or line[3] != field_sep:
            continue
        counts[name] = counts.get(name, 0) + 1
        label = f"{name}[{counts[name]}]"
        if name in ignored:
            continue
        if name in COUNTED:
            seen.add(label)
        if name == "OBX":
            last_obx = label
        elif name == "NTE" and last_obx:
            comment_on[label] = last_obx
        elif name != "PRT":
            last_obx = None  # an NTE after any other segment comments on that one, not on the OBX
        glued = len(_RUN_IN.findall(line))
        if glued:
            run_in[label] = glued
    return seen, run_in, comment_on


def accounted(payload: etree._Element, gaps: list) -> tuple[set[str], dict[str, int]]:
    sources = {el.get("source") for el in payload.iter() if el.get("source")}
    named = {f"{g.segment}[{g.sequence}]" for g in gaps}
    run_in: dict[str, int] = {}
    for g in gaps:
        if g.code == "SEGMENT_RUN_IN":
            host = f"{g.segment}[{g.sequence}]"
            run_in[host] = run_in.get(host, 0) + 1
    return sources | named, run_in


def check(raw: bytes, mapping: LabMapping) -> None:
    text = decode(raw, charset_of(raw))
    message = parse(text)
    try:
        result = map_message(message, mapping)
        payload, gaps, delivered = result.payload, result.warnings, True
        assert SCHEMA.validate(payload), SCHEMA.error_log
        validate_bundle(to_bundle(payload, message_id=result.message_id), mode=STRICT)
    except MappingGaps as exc:
        payload, gaps, delivered = exc.payload, exc.gaps + exc.warnings, False
    segments, run_in, comment_on = counted_segments(text, frozenset(mapping.ignore_segments))
    found, found_run_in = accounted(payload, gaps)
    refused_tests = {f"{g.segment}[{g.sequence}]" for g in gaps if g.severity == "E" and g.segment == "OBX"}
    found |= {nte for nte, obx in comment_on.items() if obx in refused_tests}
    assert segments - found == set(), f"dropped silently: {sorted(segments - found)}"
    assert found_run_in == run_in
    for order in payload.iterfind("lr:Order", NS) if delivered else ():
        status = order.findtext("lr:Status", namespaces=NS)
        tests = [t.findtext("lr:Status", namespaces=NS) for t in order.iterfind("lr:Test", NS)]
        if any(_RANK.get(s, 9) < _RANK["F"] for s in tests):
            assert status not in ("F", "A", "C"), etree.tostring(order, encoding="unicode")
        if tests and all(s == "I" for s in tests):
            assert status in ("I", "X"), etree.tostring(order, encoding="unicode")


def mapping_of(lab: str) -> LabMapping:
    found = load_mapping(DATA / "mappings" / f"{lab}.yaml", problems := [])
    assert problems == [] and found is not None
    return found


@pytest.mark.parametrize("prefix,lab", sorted({**OLD, **NEW}.items()))
def test_every_reference_message_conserves_its_segments(prefix, lab):
    folder = "hl7v2" if prefix in OLD else "hl7v2-collected"
    check(next((DATA / folder).glob(f"{prefix}_*.hl7")).read_bytes(), mapping_of(lab))


# ---- generated messages ------------------------------------------------------------------------

CODES = ["GLU^Глюкоза^L", "HGB^Hemoglobin^LN", "K", "^pH^M", "XYZ^unknown", "", '""']
VALUES = ["5,1", "13.5", "<^0.5", "", '""', "^\"\"", "высокий", "12~14", "Positive", "66543000^Campylobacter^SCT"]
STATUSES = ["F", "P", "C", "X", "N", "I", "D", "W", "", "Q", "U"]
FLAGS = ["", "H", '""', "N~A", "+++", "LL"]
UNITS = ["mmol/L", "mg/dL", "", '""', "10^3/ul", "g/L^grams per liter^UCUM"]

obx = st.builds(
    lambda code, vtype, value, unit, rng, flag, status: f"OBX|1|{vtype}|{code}||{value}|{unit}|{rng}|{flag}|||{status}",
    st.sampled_from(CODES), st.sampled_from(["NM", "ST", "CWE", "SN", ""]), st.sampled_from(VALUES),
    st.sampled_from(UNITS), st.sampled_from(["3,9-6,1", "", '""', "^^10", "negative"]), st.sampled_from(FLAGS),
    st.sampled_from(STATUSES))
obr = st.builds(lambda placer, status, service: f"OBR|1|{placer}|F-{placer}|{service}||||||||||||||||||||{status}",
                st.sampled_from(["A1", "A2", "A1", ""]), st.sampled_from(["F", "P", "C", "", "X", "Y", "A"]),
                st.sampled_from(["CBC^Общий анализ", "", "Gazometria - pH"]))
nte = st.builds(lambda t: f"NTE|1|L|{t}", st.sampled_from(["Гемолиз", "", "a\\T\\b", '""']))
other = st.sampled_from(["ORC|RE|A1", "SPM|1|||BLD", "PV1|1|O", "TQ1|1", "ZXX|1|z", "ZPS|1|LAB", "MSA|AA|1",
                         "19800101|F|street", "PRT|1", "PID|2||99^^^^MR"])
glued = st.builds(lambda host, inner: f"{host}| {inner}", obr, st.sampled_from(["OBX||TX|FIND||text", "NTE|1||x"]))
segments = st.lists(st.one_of(obx, obx, obr, nte, other, glued), min_size=0, max_size=14)
pid = st.sampled_from(["PID|1||112-233-445 95^^^^SNILS~A-7^^^^MR||Иванова^Анна^Петровна||19800101|F",
                       "PID|1||^^^^MR||||1980", ""])


def generated_mapping(unplaced: str, ignore: list[str]) -> LabMapping:
    return LabMapping.model_validate({
        "lab": "gen-lab", "identify": {"sending_facility": ["GEN"]}, "recipient": {"fixed": "clinic"},
        "decimal_comma": True, "unplaced_segments": unplaced, "ignore_segments": ignore,
        "fields": {"patient": {"name": "PID-5", "local_id": {"path": "PID-3.1", "where": {"component": 5, "equals": "MR"}},
                               "snils": {"path": "PID-3.1", "where": {"component": 5, "equals": "SNILS"}},
                               "birth_date": "PID-7", "sex": "PID-8"},
                   "order": {"placer": ["ORC-2", "OBR-2"], "filler": "OBR-3", "service": "OBR-4"},
                   "specimen_type": "SPM-4"},
        "tests": {"GLU": {"fsli": "1", "display": "Глюкоза", "unit": {"code": "mmol/L"}, "convert": {"mg/dL": 0.0555}},
                  "HGB": {"fsli": "2", "display": "Гемоглобин"},
                  "K": {"fsli": "3", "display": "Калий", "value": "quantity"},
                  "pH": {"fsli": "4", "display": "pH", "value": "text"},
                  "ph-gazometria": {"code": "pH", "service": "Gazometria - pH", "fsli": "5", "display": "pH крови"}},
        "flags": {"+++": "AA"},
    })


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pid, segments, st.sampled_from(["gap", "warning"]), st.sampled_from([[], ["ZPS"], ["ZXX", "ZPS"]]))
def test_generated_messages_conserve_their_segments_and_never_crash_the_mapping(pid_segment, body, unplaced, ignore):
    lines = ["MSH|^~\\&|LIS|GEN|GW|GW|20261123101500||ORU^R01|M-1|P|2.5.1", pid_segment, *body]
    raw = "\r".join(line for line in lines if line).encode("utf-8")
    check(raw, generated_mapping(unplaced, ignore))


def test_the_counter_here_sees_what_the_parser_might_miss():
    text = "MSH|^~\\&|A|GEN|C|D|2020||ORU^R01|1|P|2.5\rPID|1\rOBR|1||||||||||||||||||||||||P| OBX||TX|F|1|x| NTE|1||n\r"
    assert counted_segments(text) == ({"OBR[1]"}, {"OBR[1]": 2}, {})
    assert hl7.parse(text).segment("OBR") is not None
