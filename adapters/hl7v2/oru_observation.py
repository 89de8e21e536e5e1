"""One OBX → one Test of the lab result: its code, value, unit, range, flags, status and notes.

The value says exactly what the lab said, and a missing one says why it is missing:

* HL7's null ``""`` (also ``^""`` in a coded field) is the lab stating there is no value:
  ``NoValue reason="null"``, never a flag, a unit or a text of two quote marks;
* an empty value is "not performed" only when the lab says so (OBX-11 X or N, or a value its
  mapping lists in ``not_performed``); still to come (I, R, P, S) it is pending; withdrawn
  (D, W) it is withdrawn; on a result marked final it is a gap — a final result with no
  value is a question for the lab, not something to guess;
* every repetition and component is kept: several coded answers, the lines of a text,
  the alternate coding, the unit's system, the range's text beside its bounds.

Gap hints never suggest mapping a value that carries clinical meaning to another one: a
flag the gateway does not know is to be named for what it is, and a text in a numeric
test is to be declared text, not "not performed".
"""
from __future__ import annotations

import re
from typing import Any

from lxml import etree

from adapters.hl7v2.hl7_values import Coded, Person, field_of, hl7_datetime, is_empty, is_null, repetitions
from adapters.hl7v2.oru_context import Context, decimal_text, sub
from adapters.hl7v2.oru_structure import Observation, Seg
from adapters.hl7v2.result_statuses import OBSERVATION_STATUSES, is_final
from adapters.mapping.lab_mapping import ABNORMAL_FLAGS, FSLI_OID, Conversion, TestMapping

_RANGE = re.compile(r"^\(?\s*(-?\d*[.,]?\d+)\s*(?:-|_|–|to|\^)\s*(-?\d*[.,]?\d+)\s*\)?$")
_NUMERIC_TYPES = ("NM", "SN", "FN")


def coded_element(parent: etree._Element, tag: str, coded: Coded) -> etree._Element:
    el = sub(parent, tag)
    for child, value in (("Code", coded.code), ("System", coded.system), ("Display", coded.display)):
        if value:
            sub(el, child, value[:200] if child == "Code" else value[:4000])
    if coded.alt_code or coded.alt_display:
        alt = sub(el, "Alternate")
        for child, value in (("Code", coded.alt_code), ("System", coded.alt_system), ("Display", coded.alt_display)):
            if value:
                sub(alt, child, value[:200] if child == "Code" else value[:4000])
    if coded.original_text:
        sub(el, "OriginalText", coded.original_text[:4000])
    return el


def person_element(parent: etree._Element, tag: str, person: Person) -> None:
    el = sub(parent, tag)
    if person.id:
        sub(el, "Id", person.id[:200])
    name_element(el, "Name", person.name)


def name_element(parent: etree._Element, tag: str, name: Any) -> None:
    if not name:
        return
    el = sub(parent, tag)
    for child, value in (("Family", name.family), ("Given", name.given), ("Middle", name.middle),
                         ("Prefix", name.prefix), ("Suffix", name.suffix), ("Degree", name.degree)):
        if value:
            sub(el, child, value[:200])


def notes(parent: etree._Element, ctx: Context, segs: list[Seg]) -> None:
    """NTE-3 (its repetitions are lines) as written; NTE-2 says who wrote it."""
    for seg in segs:
        text_field = field_of(seg.segment, 3)
        lines = [ctx.values.text(text_field, r) for r in range(1, repetitions(text_field) + 1)]
        by = ctx.values.text(field_of(seg.segment, 2))
        sub(parent, "Note", "\n".join(lines).strip()[:4000], source=seg.label, by=by)


class ObservationBuilder:
    def __init__(self, ctx: Context, order_scope: dict[str, Seg], service: Coded, order_status: str | None,
                 order_seg: Seg) -> None:
        self.ctx = ctx
        self.v = ctx.values
        self.m = ctx.mapping
        self.order_scope = order_scope
        self.service = service
        self.order_status = order_status
        self.order_seg = order_seg

    def build(self, parent: etree._Element, obs: Observation) -> str | None:
        """Append the Test; returns its status (None when the OBX could not become a test)."""
        seg = obs.obx
        obx = seg.segment
        code = self.v.coded(field_of(obx, 3))
        status, hl7_status, derived = self._status(seg)
        found = self.m.test_for((code.code, code.display, code.system),
                                (code.alt_code, code.alt_display, code.alt_system),
                                (self.service.code, self.service.display))
        shown = code.code or code.display or code.alt_code
        if not found:
            self.ctx.gap("UNMAPPED_TEST_CODE", f"lab test code «{shown}» ({code.display or 'no text'}, system "
                         f"{code.system or 'none'}) has no entry in the mapping's tests", seg, 3, 1, shown)
            return status
        if len(found) > 1:
            self.ctx.gap("AMBIGUOUS_TEST_CODE", f"lab test code «{shown}» fits the mapping's tests "
                         f"{', '.join(k for k, _ in found)} equally: give each a system, text or service of its own",
                         seg, 3, 1, shown)
            return status
        key, mapping = found[0]
        test = sub(parent, "Test", source=seg.label, group="specimen" if obs.group == "specimen" else "")
        ident = sub(test, "Code")
        sub(ident, "Code", mapping.fsli)
        sub(ident, "System", FSLI_OID)
        sub(ident, "Display", mapping.display)
        if code:
            coded_element(test, "LocalCode", code)
        nulls: list[str] = []
        conversion = self._value(test, seg, key, mapping, status, nulls)
        self._range(test, seg, conversion, nulls)
        self._flags(test, seg, key, nulls)
        if status is None:
            self.ctx.gap("STATUS_MISSING", "OBX-11 and the order's OBR-25 are both empty: the result's status is "
                         "not known (an analyser that never sends one: status_when_missing in the mapping)",
                         seg, 11, lab_code=key)
            status = "F"  # only for a document that will not be sent: the gap refuses the message
        sub(test, "Status", status, hl7=hl7_status, derived=derived)
        observed = self.v.text(field_of(obx, 14))
        if observed:
            when = hl7_datetime(observed, self.m.timezone)
            if when is None:
                self.ctx.gap("VALUE_INVALID", f"OBX-14 {observed!r} is not an HL7 date/time", seg, 14, lab_code=key)
            else:
                sub(test, "ObservedAt", when)
        performer = self.ctx.find(self.m.fields.test_performer, {"OBX": seg}, self.order_scope)
        if performer is not None:
            who = self.v.person(performer.field)
            if who:
                person_element(test, "Performer", who)
        notes(test, self.ctx, obs.notes)
        if nulls:
            test.set("nulls", " ".join(nulls))
        return status

    # ---- status -----------------------------------------------------------------------

    def _status(self, seg: Seg) -> tuple[str | None, str | None, str | None]:
        """(status, the OBX-11 code sent, how it was derived when not sent)."""
        raw = self.v.text(field_of(seg.segment, 11))
        if raw:
            status = OBSERVATION_STATUSES.get(raw.upper())
            if status is None:
                self.ctx.gap("VALUE_INVALID", f"result status «{raw}» is not an HL7 table 0085 code "
                             f"({', '.join(OBSERVATION_STATUSES)})", seg, 11)
            return status, raw, None
        if self.order_status is not None:
            return self.order_status, None, "order"
        if self.m.status_when_missing:
            return OBSERVATION_STATUSES[self.m.status_when_missing], None, "mapping"
        return None, None, None

    # ---- the value ----------------------------------------------------------------------

    def _value(self, test: etree._Element, seg: Seg, key: str, mapping: TestMapping, status: str | None,
               nulls: list[str]) -> Conversion | None:
        """Write the value; returns the unit conversion applied, which the reference range needs too."""
        obx = seg.segment
        value_field = field_of(obx, 5)
        vtype = self.v.text(field_of(obx, 2)).upper()
        if is_null(field_of(obx, 6)):
            nulls.append("unit")
        if is_null(value_field):
            sub(test, "NoValue", reason="null")
            return None
        if is_empty(value_field):
            self._absent(test, seg, key, status)
            return None
        raw = self.v.whole(value_field)
        if raw in self.m.not_performed:
            sub(test, "NotPerformed", raw[:4000])
            return None
        reps = repetitions(value_field)
        kind = mapping.value
        if kind == "auto":
            kind = ("quantity" if vtype in _NUMERIC_TYPES or (mapping.unit is not None and self._numeric(raw))
                    else "coded" if vtype in ("CE", "CWE") else "text")
        if kind in ("coded", "text"):
            unit = self.v.whole(field_of(obx, 6))
            if unit:
                self.ctx.gap("UNIT_IGNORED", f"OBX-6 gives unit «{unit}» for the {kind} value of «{key}»: a unit "
                             "belongs to a number, so the result does not carry it", seg, 6, lab_code=key,
                             severity="W")
        if kind == "coded":
            for r in range(1, reps + 1):
                coded = self.v.coded(value_field, r)
                if coded:
                    coded_element(test, "Coded", coded)
            return None
        if kind == "text":
            lines = [self.v.whole(value_field, r) for r in range(1, reps + 1)]
            sub(test, "Text", "\n".join(lines)[:4000])
            return None
        if reps > 1:
            self.ctx.gap("VALUE_TYPE_MISMATCH", f"OBX-5 of «{key}» repeats ({reps} values) where one number is "
                         "expected", seg, 5, lab_code=key)
            return None
        return self._quantity(test, seg, key, mapping, vtype, raw)

    def _absent(self, test: etree._Element, seg: Seg, key: str, status: str | None) -> None:
        if status in ("X", "N"):
            sub(test, "NotPerformed", "results cannot be obtained (OBX-11 X)" if status == "X"
                else "not asked (OBX-11 N)")
        elif status in ("D", "W"):
            sub(test, "NoValue", reason="withdrawn")
        elif status is not None and not is_final(status):
            sub(test, "NoValue", reason="pending")
        else:
            self.ctx.gap("VALUE_MISSING", f"OBX-5 of «{key}» is empty on a result marked final: send the value, or "
                         "OBX-11 X if it could not be obtained, or \"\" if there is explicitly none", seg, 5,
                         lab_code=key)

    def _quantity(self, test: etree._Element, seg: Seg, key: str, mapping: TestMapping, vtype: str, raw: str
                  ) -> Conversion | None:
        obx = seg.segment
        value_field = field_of(obx, 5)
        comparator, number_text = "", raw
        first, second = self.v.text(value_field, 1, 1), self.v.text(value_field, 1, 2)
        if vtype in ("SN", "FN") and (second or first in ("<", ">", "<=", ">=", "=")):
            comparator, number_text = first, second
            if self.v.text(value_field, 1, 4):  # a ratio or range (1^:^128): no single quantity
                sub(test, "Text", "".join(self.v.text(value_field, 1, c) for c in (1, 2, 3, 4)))
                return None
        elif raw[:2] in ("<=", ">=") or raw[:1] in ("<", ">"):
            cut = 2 if raw[:2] in ("<=", ">=") else 1
            comparator, number_text = raw[:cut], raw[cut:]
        if comparator == "=":
            comparator = ""
        number = self.ctx.decimal(number_text)
        if number is None:
            self.ctx.gap("VALUE_TYPE_MISMATCH", f"the value of «{key}» is not a number ({vtype or 'no type'}): if the "
                         "lab reports this test as text or codes, declare value: text or value: coded for it in the "
                         "mapping", seg, 5, lab_code=key)
            return None
        unit_field = field_of(obx, 6)
        unit = self.v.coded(unit_field)
        unit_sent = {unit.code, self.v.whole(unit_field)} - {""}
        conversion = None
        target = mapping.unit
        if target is not None and target.code not in unit_sent and not unit_sent & set(mapping.same_unit):
            conversion = next((mapping.convert[u] for u in (self.v.whole(unit_field), unit.code)
                               if u in mapping.convert), None)
            if conversion is None:
                shown = self.v.whole(unit_field) or "(none)"
                self.ctx.gap("UNMAPPED_UNIT", f"unit «{shown}» of «{key}» has no conversion to «{target.code}»",
                             seg, 6, lab_code=key)
                return None
            number = conversion.apply(number)
        q = sub(test, "Quantity")
        sub(q, "Value", decimal_text(number))
        if comparator:
            if comparator in ("<", "<=", ">", ">="):
                sub(q, "Comparator", comparator)
            else:
                self.ctx.gap("VALUE_INVALID", f"comparator «{comparator}» is not <, <=, > or >=", seg, 5, 1, key)
        if target is not None:
            coded_element(q, "Unit", Coded(code=target.code, display=target.display or "", system=target.system or ""))
        elif unit:
            coded_element(q, "Unit", unit)
        return conversion

    def _numeric(self, raw: str) -> bool:
        return self.ctx.decimal(raw.lstrip("<>=")) is not None

    # ---- range and flags -------------------------------------------------------------------

    def _range(self, test: etree._Element, seg: Seg, conversion: Conversion | None, nulls: list[str]) -> None:
        fld = field_of(seg.segment, 7)
        if is_null(fld):
            nulls.append("range")
            return
        raw = self.v.whole(fld)
        if not raw:
            return
        rr = sub(test, "ReferenceRange")
        m = _RANGE.match(raw)
        if m:
            low, high = (self.ctx.decimal(v) for v in m.groups())
            if low is not None and high is not None:
                if conversion is not None:
                    low, high = conversion.apply(low), conversion.apply(high)
                sub(rr, "Low", decimal_text(low))
                sub(rr, "High", decimal_text(high))
        lab_unit = self.v.whole(field_of(seg.segment, 6)) if conversion is not None else ""
        sub(rr, "Text", raw[:4000], unit=lab_unit)

    def _flags(self, test: etree._Element, seg: Seg, key: str, nulls: list[str]) -> None:
        fld = field_of(seg.segment, 8)
        if is_null(fld):
            nulls.append("flag")
            return
        for rep in range(1, repetitions(fld) + 1):
            sent = self.v.text(fld, rep)
            if not sent:
                continue
            flag = self.m.flags.get(sent, sent)
            if flag in ABNORMAL_FLAGS:
                sub(test, "Flag", flag)
            else:
                self.ctx.gap("VALUE_INVALID", f"abnormal flag «{sent}» is not an HL7 table 0078 code; if it is the "
                             "lab's own spelling of one (e.g. «+» for A), name that code in the mapping's flags — "
                             "never a code of another meaning", seg, 8, lab_code=key)
