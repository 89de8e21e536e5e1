"""ORU^R01 segments in their groups — and every segment that fits nowhere named, never dropped."""
from __future__ import annotations

import hl7

from adapters.hl7v2.ack import decode, parse
from adapters.hl7v2.oru_structure import place

HEAD = "MSH|^~\\&|LIS|LAB|GW|GW|20261123101500||ORU^R01|S-1|P|2.5.1\r"


def structure(text: str, ignore: frozenset[str] = frozenset()):
    return place(hl7.parse(HEAD + text), ignore)


def test_orders_observations_and_the_three_places_of_a_comment():
    s = structure("PID|1||1\rNTE|1||about the patient\rPV1|1|O\r"
                  "ORC|RE|A\rOBR|1|A\rNTE|1||about order 1\rTQ1|1\rOBX|1|NM|X||1\rNTE|1||about OBX 1\rNTE|2||more\r"
                  "OBX|2|NM|Y||2\rSPM|1\rOBX|3|NM|AGE||29\rNTE|1||about the specimen OBX\r"
                  "OBR|2|B\rOBX|1|ST|Z||z\r")
    assert s.problems == []
    assert [n.label for n in s.patient_notes] == ["NTE[1]"]
    first, second = s.orders
    assert (first.orc.label, first.obr.label, second.orc) == ("ORC[1]", "OBR[1]", None)
    assert [n.label for n in first.notes] == ["NTE[2]"]
    assert [(o.obx.label, o.group, [n.label for n in o.notes]) for o in first.observations] == [
        ("OBX[1]", "result", ["NTE[3]", "NTE[4]"]), ("OBX[2]", "result", []), ("OBX[3]", "specimen", ["NTE[5]"])]
    assert [o.obx.label for o in second.observations] == ["OBX[4]"]
    assert set(first.scope) == {"ORC", "OBR", "TQ1", "SPM"} and set(second.scope) == {"OBR"}
    assert set(s.patient_scope) == {"MSH", "PID", "PV1"}


def test_results_without_a_patient_group_are_placed():
    s = structure("OBR|1|A\rOBX|1|NM|X||1\r")
    assert s.pid is None and s.problems == [] and len(s.orders[0].observations) == 1


def test_an_obx_before_any_obr_is_not_filed_under_the_first_order():
    s = structure("PID|1||1\rOBX|1|NM|X||1\rOBR|1|A\rOBX|2|NM|Y||2\r")
    assert [(p.kind, p.where.label) for p in s.problems] == [("unplaced", "OBX[1]")]
    assert [o.obx.label for o in s.orders[0].observations] == ["OBX[2]"]


def test_a_line_that_is_no_segment_is_named_by_the_segment_before_it_without_its_text():
    raw = (HEAD + "PID|1||1^^^^MR||Smith^John||19800101|\r" + "M|||street\rOBR|1|A\rOBX|1|NM|X||1\r").encode()
    s = place(parse(decode(raw, "ascii")))
    (problem,) = s.problems
    assert (problem.kind, problem.where.label) == ("not-a-segment", "PID[1]")
    assert "street" not in problem.detail and "Smith" not in problem.detail


def test_segments_run_together_are_found_where_the_separator_was_lost():
    s = structure("PID|1||1\rOBR|1|A|B|X^CT||||||||||||||||||||P||||||R/O| OBX||TX|F^FIND|1|text| OBX||TX|F^FIND|2|more|\r")
    assert [(p.kind, p.subject, p.where.label, p.field) for p in s.problems] == [
        ("glued", "OBX", "OBR[1]", 31), ("glued", "OBX", "OBR[1]", 37)]


def test_a_second_patient_and_everything_after_it_is_named():
    s = structure("PID|1||1\rOBR|1|A\rOBX|1|NM|X||1\rPID|2||2\rOBR|2|B\rOBX|2|NM|Y||2\rNTE|1||n\r")
    assert [(p.kind, p.where.label) for p in s.problems] == [
        ("second-patient", "PID[2]"), ("unplaced", "OBR[2]"), ("unplaced", "OBX[2]"), ("unplaced", "NTE[1]")]
    assert "second patient" in s.problems[1].detail


def test_only_the_z_segments_the_mapping_names_are_passed_over():
    text = "PID|1||1\rOBR|1|A\rOBX|1|NM|X||1\rZPS|1|LAB\rZZZ|1\r"
    s = structure(text, frozenset({"ZPS"}))
    assert [seg.label for seg in s.ignored] == ["ZPS[1]"]
    assert [(p.kind, p.where.label) for p in s.problems] == [("unplaced", "ZZZ[1]")]


def test_segments_out_of_order_orc_without_obr_and_a_comment_before_anything():
    s = structure("NTE|1||header note\rPID|1||1\rORC|RE|A\rORC|RE|B\rOBR|1|B\rOBX|1|NM|X||1\rMSA|AA|1\rORC|RE|C\r")
    assert [(p.kind, p.where.label) for p in s.problems] == [
        ("unplaced", "NTE[1]"), ("unplaced", "ORC[1]"), ("unplaced", "MSA[1]"), ("unplaced", "ORC[3]")]
    assert "not a segment of ORU^R01" in s.problems[2].detail


def test_an_spm_before_the_orders_results_does_not_make_them_specimen_observations():
    s = structure("PID|1||1\rORC|RE|A\rPRT|1\rOBR|1|A\rSPM|1|||BLD\rOBX|1|NM|X||1\rOBR|2|B\rOBX|2|NM|Y||2\rSPM|1\r"
                  "OBX|3|NM|AGE||29\r")
    assert s.problems == []
    first, second = s.orders
    assert [o.group for o in first.observations] == ["result"]
    assert [o.group for o in second.observations] == ["result", "specimen"]
    assert first.scope["SPM"].label == "SPM[1]"


def test_a_comment_after_a_segment_that_has_no_place_goes_with_it():
    s = structure("PID|1||1\rOBX|1|NM|X||1\rNTE|1||on the lost OBX\rOBR|1|A\rOBX|2|NM|Y||2\rPV1|1\rNTE|1||after PV1\r")
    assert [(p.where.label, p.detail.split(",")[0]) for p in s.problems] == [
        ("OBX[1]", "OBX[1] has no place among the patient's segments"),
        ("NTE[1]", "NTE[1] follows OBX[1]"), ("PV1[1]", "PV1[1] has no place after an OBX"),
        ("NTE[2]", "NTE[2] follows PV1[1]")]
    assert s.orders[0].observations[0].notes == []
