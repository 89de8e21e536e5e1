"""An HL7 v2 ORU^R01 message → the lab result, by the lab's mapping file.

Parsing is lenient (python-hl7: real feeds break the standard in small ways, and
hl7apy's strict mode rejects most of them); the checks that matter are ours and
name what they refuse. Every gap is collected, not just the first, so the lab sees
in one NAK everything its mapping or its message lacks: an unmapped test code or
unit, a value that does not fit its type, a missing or invalid patient identifier.

One message is one report: the first OBR gives the order, the OBX segments of every
OBR group give the tests.
"""
from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo

import hl7
from lxml import etree

from adapters.hl7v2.message_ids import message_id_for
from adapters.mapping.lab_mapping import FSLI_OID, Conversion, Hl7Path, LabMapping, Location, TestMapping
from gateway.identifiers import enp_valid, snils_valid

LAB_RESULT_NS = "urn://zdravlink/types/lab-result/1.0"
L = "{%s}" % LAB_RESULT_NS
_DTM = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\.\d+)?([+-]\d{4})?$")
_RANGE = re.compile(r"^\(?\s*(-?\d+(?:[.,]\d+)?)\s*(?:-|_|–|to)\s*(-?\d+(?:[.,]\d+)?)\s*\)?$")
#: OBX-11 / OBR-25 (HL7 table 0085) → the lab result's P, F, C, X.
_STATUSES = {"P": "P", "F": "F", "C": "C", "X": "X", "D": "X", "W": "X", "R": "P", "S": "P", "I": "P", "A": "P"}


@dataclass(frozen=True)
class Gap:
    """Something the message or the mapping lacks, where it is (for ERR-2) and a code (for the metric)."""

    code: str
    segment: str
    sequence: int
    field: int
    component: int | None
    reason: str
    lab_code: str | None = None

    @property
    def where(self) -> str:
        comp = f".{self.component}" if self.component else ""
        return f"{self.segment}[{self.sequence}]-{self.field}{comp}"


class MappingGaps(Exception):
    def __init__(self, gaps: list[Gap]) -> None:
        super().__init__("; ".join(f"{g.where}: {g.reason}" for g in gaps))
        self.gaps = gaps


@dataclass
class Mapped:
    payload: etree._Element
    recipient: str
    message_id: str
    control_id: str


def text_of(fld: Any, rep: int = 1, comp: int = 1, sub: int = 1) -> str:
    """One value out of python-hl7's nesting, which varies with what the field holds."""
    if fld is None:
        return ""
    if isinstance(fld, str):
        return fld if (rep, comp, sub) == (1, 1, 1) else ""
    items = list(fld)
    if not items:
        return ""
    if all(isinstance(i, str) for i in items):  # a plain field: one repetition, one component
        return items[0] if (rep, comp, sub) == (1, 1, 1) else ""
    if rep > len(items):
        return ""
    repetition = items[rep - 1]
    if isinstance(repetition, str):
        return repetition if (comp, sub) == (1, 1) else ""
    if comp > len(repetition):
        return ""
    component = repetition[comp - 1]
    if isinstance(component, str):
        return component if sub == 1 else ""
    return component[sub - 1] if sub <= len(component) and isinstance(component[sub - 1], str) else ""


def repetitions(fld: Any) -> int:
    if fld is None or isinstance(fld, str):
        return 1
    items = list(fld)
    return 1 if not items or all(isinstance(i, str) for i in items) else len(items)


def field_of(segment: Any, number: int) -> Any:
    return segment[number] if segment is not None and len(segment) > number else None


class Report:
    """The parsed message with its segments indexed by name, and HL7 unescaping."""

    def __init__(self, message: hl7.Message) -> None:
        self.message = message
        self.segments: dict[str, list[Any]] = {}
        for seg in message:
            self.segments.setdefault(str(seg[0]), []).append(seg)

    def unescape(self, value: str) -> str:
        return self.message.unescape(value) if "\\" in value else value

    def at(self, path: Hl7Path) -> str:
        name, number, rep, comp, sub = path.parts
        segs = self.segments.get(name) or []
        if not segs:
            return ""
        fld = field_of(segs[0], number)
        if path.where is not None:
            want_comp, want = int(path.where["component"]), str(path.where["equals"])
            for r in range(1, repetitions(fld) + 1):
                if text_of(fld, r, want_comp) == want:
                    return self.unescape(text_of(fld, r, comp, sub)).strip()
            return ""
        return self.unescape(text_of(fld, rep or 1, comp, sub)).strip()

    def first(self, location: Location | None) -> tuple[str, Hl7Path | None]:
        """The first alternative with a value (HL7's null ``""`` is no value), and where it was."""
        if location is None:
            return "", None
        for path in location.anyOf:
            value = self.at(path)
            if value and value != '""':
                return value, path
        return "", location.anyOf[0]

    def control_id(self) -> str:
        return text_of(field_of(self.segments["MSH"][0], 10)).strip()


def hl7_datetime(value: str, zone_name: str | None = None) -> str | None:
    """HL7 DTM (YYYY[MM[DD[HH[MM[SS[.S]]]]]][+/-ZZZZ]) → xs:dateTime; None if it is not one.

    A time without an offset gets the lab's zone (``zone_name``) when the mapping names one.
    """
    m = _DTM.match(value.strip())
    if not m:
        return None
    year, month, day, hour, minute, second, _, zone = m.groups()
    try:
        moment = datetime(int(year), int(month or 1), int(day or 1), int(hour or 0), int(minute or 0),
                          int(second or 0))
    except ValueError:
        return None
    if not zone and zone_name:
        zone = moment.replace(tzinfo=ZoneInfo(zone_name)).strftime("%z")
    tz = f"{zone[:3]}:{zone[3:]}" if zone else ""
    return f"{year}-{month or '01'}-{day or '01'}T{hour or '00'}:{minute or '00'}:{second or '00'}{tz}"


def hl7_date(value: str) -> str | None:
    if len(value) < 8 or not value[:8].isdigit():
        return None
    dt = hl7_datetime(value[:8])
    return dt[:10] if dt else None


def _decimal_text(number: Decimal) -> str:
    return format(number.normalize(), "f")


class _Builder:
    def __init__(self, report: Report, mapping: LabMapping) -> None:
        self.r = report
        self.m = mapping
        self.gaps: list[Gap] = []

    def gap(self, code: str, reason: str, *, path: Hl7Path | None = None, segment: str = "MSH", sequence: int = 1,
            field_no: int = 0, component: int | None = None, lab_code: str | None = None) -> None:
        if path is not None:
            segment, field_no, _, comp, _ = path.parts
            component = comp if "." in path.path else None
        self.gaps.append(Gap(code, segment, sequence, field_no, component, reason, lab_code))

    def decimal(self, text: str) -> Decimal | None:
        value = text.strip().replace(" ", "")
        if self.m.decimal_comma:
            value = value.replace(",", ".")
        try:
            number = Decimal(value)
        except InvalidOperation:
            return None
        return number if number.is_finite() else None

    # ---- the report -------------------------------------------------------------

    def build(self) -> etree._Element:
        root = etree.Element(L + "LabResult", nsmap={"lr": LAB_RESULT_NS})
        obr = (self.r.segments.get("OBR") or [None])[0]
        f = self.m.fields
        placer, _ = self.r.first(f.order.placer)
        filler, _ = self.r.first(f.order.filler)
        etree.SubElement(root, L + "ResultId").text = f"{self.m.lab}:{filler or placer or self.r.control_id()}"
        status_el = etree.SubElement(root, L + "Status")
        order = etree.SubElement(root, L + "Order")
        if placer:
            etree.SubElement(order, L + "PlacerNumber").text = placer[:200]
        if filler:
            etree.SubElement(order, L + "FillerNumber").text = filler[:200]
        service, service_at = self.r.first(f.order.service)
        if service and service_at is not None:
            name, number, _, _, _ = service_at.parts
            self._coded(order, "Service", field_of((self.r.segments.get(name) or [None])[0], number))
        self._patient(root)
        lab = etree.SubElement(root, L + "Laboratory")
        etree.SubElement(lab, L + "Mnemonic").text = self.m.lab
        if self.m.frmo_oid:
            etree.SubElement(lab, L + "FrmoOid").text = self.m.frmo_oid
        specimen_type, _ = self.r.first(f.specimen_type)
        collected = self._when(f.collected_at)
        if specimen_type or collected:
            spec = etree.SubElement(root, L + "Specimen")
            if specimen_type:
                etree.SubElement(etree.SubElement(spec, L + "Type"), L + "Code").text = specimen_type[:200]
            if collected:
                etree.SubElement(spec, L + "CollectedAt").text = collected
        performer, _ = self.r.first(f.performer)
        if performer:
            etree.SubElement(root, L + "Performer").text = performer
        for tag, loc in (("ObservedAt", f.observed_at), ("ReportedAt", f.reported_at)):
            when = self._when(loc)
            if when:
                etree.SubElement(root, L + tag).text = when
        statuses = [self._test(root, seq, obx) for seq, obx in enumerate(self.r.segments.get("OBX") or [], 1)]
        if not statuses:
            self.gap("NO_RESULTS", "the message has no OBX segment", segment="OBR")
        overall = _STATUSES.get(text_of(field_of(obr, 25)).strip())
        status_el.text = overall or ("C" if "C" in statuses else "P" if "P" in statuses else "F")
        return root

    def _when(self, location: Location | None) -> str | None:
        value, path = self.r.first(location)
        if not value:
            return None
        when = hl7_datetime(value, self.m.timezone)
        if when is None:
            self.gap("VALUE_INVALID", f"{value!r} is not an HL7 date/time (YYYYMMDDHHMM[SS][+ZZZZ])", path=path)
        return when

    def _patient(self, root: etree._Element) -> None:
        p = self.m.fields.patient
        el = etree.SubElement(root, L + "Patient")
        snils, snils_at = self.r.first(p.snils)
        enp, enp_at = self.r.first(p.enp)
        local, local_at = self.r.first(p.local_id)
        snils = snils.replace("-", "").replace(" ", "")
        if snils and not snils_valid(snils):
            self.gap("PATIENT_ID_INVALID", "СНИЛС fails its check digits (or is not 11 digits)", path=snils_at)
            snils = ""
        if enp and not enp_valid(enp):
            self.gap("PATIENT_ID_INVALID", "ЕНП fails its check digit (or is not 16 digits)", path=enp_at)
            enp = ""
        if not (snils or enp or local) and not any(g.code == "PATIENT_ID_INVALID" for g in self.gaps):
            self.gap("PATIENT_ID_MISSING", "no patient identifier: the mapping's СНИЛС, ЕНП and local id "
                     "locations are all empty", path=snils_at or enp_at or local_at or Hl7Path(path="PID-3"))
        if snils:
            etree.SubElement(el, L + "SNILS").text = snils
        if enp:
            etree.SubElement(el, L + "ENP").text = enp
        if local:
            lid = etree.SubElement(el, L + "LocalId")
            lid.text = local[:200]
            assigner, _ = self.r.first(p.local_id_assigner)
            if assigner:
                lid.set("assigner", assigner)
        birth, birth_at = self.r.first(p.birth_date)
        if birth:
            date = hl7_date(birth)
            if date is None:
                # the value itself is patient data: say what is wrong with it, not what it is
                self.gap("VALUE_INVALID", f"the birth date ({len(birth)} characters) is not a valid YYYYMMDD date",
                         path=birth_at)
            else:
                etree.SubElement(el, L + "BirthDate").text = date
        sex, _ = self.r.first(p.sex)
        if sex:
            etree.SubElement(el, L + "Sex").text = {"M": "male", "F": "female"}.get(sex.upper()[:1], "unknown")

    def _coded(self, parent: etree._Element, tag: str, fld: Any) -> None:
        el = etree.SubElement(parent, L + tag)
        code, text, system = (self.r.unescape(text_of(fld, 1, c)).strip() for c in (1, 2, 3))
        etree.SubElement(el, L + "Code").text = (code or text or "?")[:200]
        if system:
            etree.SubElement(el, L + "System").text = system
        if text:
            etree.SubElement(el, L + "Display").text = text

    # ---- one OBX ------------------------------------------------------------------

    def _test(self, root: etree._Element, seq: int, obx: Any) -> str:
        def at(number: int, comp: int = 1, rep: int = 1) -> str:
            return self.r.unescape(text_of(field_of(obx, number), rep, comp)).strip()

        code, text = at(3, 1), at(3, 2)
        found = self.m.test_for(code, text)
        if found is None:
            shown = code or text
            self.gap("UNMAPPED_TEST_CODE", f"lab test code «{shown}» has no entry in the mapping's tests",
                     segment="OBX", sequence=seq, field_no=3, component=1, lab_code=shown)
            return "F"
        key, mapping = found
        test = etree.SubElement(root, L + "Test")
        coded = etree.SubElement(test, L + "Code")
        etree.SubElement(coded, L + "Code").text = mapping.fsli
        etree.SubElement(coded, L + "System").text = FSLI_OID
        etree.SubElement(coded, L + "Display").text = mapping.display
        local = etree.SubElement(test, L + "LocalCode")
        etree.SubElement(local, L + "Code").text = key
        if at(3, 3):
            etree.SubElement(local, L + "System").text = at(3, 3)
        if text:
            etree.SubElement(local, L + "Display").text = text
        conversion = self._value(test, seq, obx, key, mapping, at)
        self._range(test, at(7), conversion)
        for rep in range(1, repetitions(field_of(obx, 8)) + 1):
            flag = at(8, 1, rep)
            if flag:
                flag = self.m.flags.get(flag, flag)
                if re.fullmatch(r"[A-Za-z<>]{1,5}", flag):
                    etree.SubElement(test, L + "Flag").text = flag
                else:
                    self.gap("VALUE_INVALID", f"abnormal flag «{flag}» is not an HL7 table 0078 value: map it in "
                             "flags", segment="OBX", sequence=seq, field_no=8, lab_code=key)
        raw_status = at(11)
        status = _STATUSES.get(raw_status or "F")
        if status is None:
            self.gap("VALUE_INVALID", f"result status «{raw_status}» is not one of P, F, C, X, D, W, R, S, I, A",
                     segment="OBX", sequence=seq, field_no=11, lab_code=key)
            status = "F"
        etree.SubElement(test, L + "Status").text = status
        observed = hl7_datetime(at(14), self.m.timezone) if at(14) else None
        if observed:
            etree.SubElement(test, L + "ObservedAt").text = observed
        return status

    def _value(self, test: etree._Element, seq: int, obx: Any, key: str, mapping: TestMapping, at: Any
               ) -> Conversion | None:
        """Write the value; returns the unit conversion applied, which the reference range needs too."""
        vtype, unit = at(2).upper(), at(6)
        # the whole first repetition: an SN (^182) or a CE with an empty code (^Bordetella^SNM) is a value too
        raw = "^".join(at(5, c) for c in range(1, 10)).rstrip("^") if vtype in ("SN", "FN", "CE", "CWE") else at(5)
        if not raw or raw == '""' or raw in self.m.not_performed:
            etree.SubElement(test, L + "NotPerformed").text = raw if raw and raw != '""' else "no value given"
            return None
        kind = mapping.value
        if kind == "auto":
            kind = ("quantity" if vtype in ("NM", "SN", "FN") or (mapping.unit is not None and self._numeric(raw))
                    else "coded" if vtype in ("CE", "CWE") else "text")
        if kind == "coded":
            self._coded(test, "Coded", field_of(obx, 5))
            return None
        if kind == "text":
            etree.SubElement(test, L + "Text").text = raw[:4000]
            return None
        comparator, number_text = "", raw
        if vtype in ("SN", "FN") and (at(5, 2) or at(5, 1) in ("<", ">", "<=", ">=", "=")):
            comparator, number_text = at(5, 1), at(5, 2)
            if at(5, 4):  # a ratio or range (1^:^128): no single quantity
                etree.SubElement(test, L + "Text").text = "".join(at(5, c) for c in (1, 2, 3, 4))
                return None
        elif raw[:2] in ("<=", ">=") or raw[:1] in ("<", ">"):
            cut = 2 if raw[:2] in ("<=", ">=") else 1
            comparator, number_text = raw[:cut], raw[cut:]
        if comparator == "=":
            comparator = ""
        number = self.decimal(number_text)
        if number is None:
            self.gap("VALUE_TYPE_MISMATCH", f"the value of «{key}» is not a number ({vtype or 'no type'}); if it "
                     "means no result, list it in not_performed", segment="OBX", sequence=seq, field_no=5,
                     lab_code=key)
            return None
        conversion = None
        target = mapping.unit
        if target is not None and unit != target.code and unit not in mapping.same_unit:
            conversion = mapping.convert.get(unit)
            if conversion is None:
                self.gap("UNMAPPED_UNIT", f"unit «{unit or '(none)'}» of «{key}» has no conversion to "
                         f"«{target.code}»", segment="OBX", sequence=seq, field_no=6, lab_code=key)
                return None
            number = conversion.apply(number)
        q = etree.SubElement(test, L + "Quantity")
        etree.SubElement(q, L + "Value").text = _decimal_text(number)
        if comparator:
            if comparator in ("<", "<=", ">", ">="):
                etree.SubElement(q, L + "Comparator").text = comparator
            else:
                self.gap("VALUE_INVALID", f"comparator «{comparator}» is not <, <=, > or >=", segment="OBX",
                         sequence=seq, field_no=5, component=1, lab_code=key)
        if target is not None or unit:
            u = etree.SubElement(q, L + "Unit")
            etree.SubElement(u, L + "Code").text = target.code if target else unit
            display = target.display if target else at(6, 2)
            if display:
                etree.SubElement(u, L + "Display").text = display
        return conversion

    def _numeric(self, raw: str) -> bool:
        return self.decimal(raw.lstrip("<>=")) is not None

    def _range(self, test: etree._Element, raw: str, conversion: Conversion | None) -> None:
        if not raw:
            return
        rr = etree.SubElement(test, L + "ReferenceRange")
        m = _RANGE.match(raw)
        if m:
            low, high = (self.decimal(v) for v in m.groups())
            if low is not None and high is not None:
                if conversion is not None:
                    low, high = conversion.apply(low), conversion.apply(high)
                etree.SubElement(rr, L + "Low").text = _decimal_text(low)
                etree.SubElement(rr, L + "High").text = _decimal_text(high)
        if len(rr) == 0:
            etree.SubElement(rr, L + "Text").text = raw[:4000]


def recipient_of(report: Report, mapping: LabMapping, gaps: list[Gap]) -> str:
    r = mapping.recipient
    if r.fixed:
        return r.fixed
    value, path = report.first(r.from_field)
    target = r.map.get(value)
    if target is None:
        seg, number, _, comp, _ = (path or Hl7Path(path="MSH-5")).parts
        gaps.append(Gap("RECIPIENT_UNKNOWN", seg, 1, number, comp, f"{value or '(empty)'!r} is not in the "
                        "mapping's recipient.map: which MIS should receive this result?"))
        return ""
    return target


def map_message(message: hl7.Message, mapping: LabMapping) -> Mapped:
    """The lab result for ``message``, or MappingGaps listing everything that stands in the way.

    The MessageID is derived from the lab and MSH-10, so a message the lab resends
    (its ACK was lost) is recognised by the journal as the same message.
    """
    report = Report(message)
    builder = _Builder(report, mapping)
    payload = builder.build()
    recipient = recipient_of(report, mapping, builder.gaps)
    if builder.gaps:
        raise MappingGaps(builder.gaps)
    control = report.control_id()
    return Mapped(payload, recipient, message_id_for(mapping.lab, control) if control else str(uuid.uuid1()), control)

