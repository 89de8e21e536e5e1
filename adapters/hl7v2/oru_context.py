"""What the ORU mapping shares while it builds one lab result: the mapping, the message's
values, the gaps and warnings found so far, and the reading of mapped field locations
within the right order and test."""
from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from lxml import etree

from adapters.hl7v2.hl7_values import NULL, Values, field_of, is_empty, is_null, repetitions, text_of
from adapters.hl7v2.oru_structure import Seg
from adapters.mapping.lab_mapping import Hl7Path, LabMapping, Location

LAB_RESULT_NS = "urn://zdravlink/types/lab-result/1.0"
L = "{%s}" % LAB_RESULT_NS


@dataclass(frozen=True)
class Gap:
    """Something the message or the mapping lacks (severity E), or something let through that
    the result says (W): where it is (for ERR-2) and a code (for the metric and the lab)."""

    code: str
    segment: str
    sequence: int
    field: int
    component: int | None
    reason: str
    lab_code: str | None = None
    severity: str = "E"

    @property
    def where(self) -> str:
        comp = f".{self.component}" if self.component else ""
        fld = f"-{self.field}{comp}" if self.field else ""
        return f"{self.segment}[{self.sequence}]{fld}"


@dataclass(frozen=True)
class Found:
    """A mapped location's field, the segment it was found in, and the path that found it."""

    field: Any
    seg: Seg
    path: Hl7Path

    @property
    def whole_field(self) -> bool:
        """The path names a field, not one component of it: read it as the composite it is."""
        return "." not in self.path.path and self.path.where is None


class Context:
    def __init__(self, values: Values, mapping: LabMapping, control_id: str) -> None:
        self.values = values
        self.mapping = mapping
        self.control_id = control_id
        self.gaps: list[Gap] = []

    # ---- gaps and warnings -----------------------------------------------------------

    def gap(self, code: str, reason: str, seg: Seg, field_no: int = 0, component: int | None = None,
            lab_code: str | None = None, severity: str = "E") -> None:
        self.gaps.append(Gap(code, seg.name, seg.ordinal, field_no, component, reason, lab_code, severity))

    def gap_at(self, code: str, reason: str, found: Found, lab_code: str | None = None) -> None:
        _, number, _, comp, _ = found.path.parts
        self.gap(code, reason, found.seg, number, comp if "." in found.path.path else None, lab_code)

    @property
    def errors(self) -> list[Gap]:
        return [g for g in self.gaps if g.severity == "E"]

    @property
    def warnings(self) -> list[Gap]:
        return [g for g in self.gaps if g.severity == "W"]

    # ---- mapped locations, read in scope -----------------------------------------------

    def find(self, location: Location | None, *scopes: dict[str, Seg]) -> Found | None:
        """The first alternative with a value, looked up in the innermost scope that has its
        segment (a test, then its order, then the message). HL7's null ``""`` is no value."""
        if location is None:
            return None
        for path in location.anyOf:
            name, number, _, _, _ = path.parts
            seg = next((scope[name] for scope in scopes if name in scope), None)
            if seg is None:
                continue
            fld = field_of(seg.segment, number)
            if path.where is not None or "." in path.path or path.parts[2] is not None:
                if self.text_at(fld, path):
                    return Found(fld, seg, path)
            elif not is_empty(fld) and not is_null(fld):
                return Found(fld, seg, path)
        return None

    def text_at(self, fld: Any, path: Hl7Path) -> str:
        """The text a path points at inside ``fld`` (its repetition, component and sub-component)."""
        _, _, rep, comp, sub = path.parts
        if path.where is not None:
            want_comp, want = int(path.where["component"]), str(path.where["equals"])
            for r in range(1, repetitions(fld) + 1):
                if text_of(fld, r, want_comp) == want:
                    return self.values.text(fld, r, comp, sub)
            return ""
        return self.values.text(fld, rep or 1, comp, sub)

    def text(self, location: Location | None, *scopes: dict[str, Seg]) -> tuple[str, Found | None]:
        found = self.find(location, *scopes)
        if found is None:
            return "", None
        value = self.text_at(found.field, found.path)
        return ("" if value == NULL else value), found

    # ---- numbers ------------------------------------------------------------------------

    def decimal(self, text: str) -> Decimal | None:
        value = text.strip().replace(" ", "")
        if self.mapping.decimal_comma:
            value = value.replace(",", ".")
        try:
            number = Decimal(value)
        except InvalidOperation:
            return None
        return number if number.is_finite() else None


def decimal_text(number: Decimal) -> str:
    return format(number.normalize(), "f")


def sub(parent: etree._Element, tag: str, text: str | None = None, **attrs: str) -> etree._Element:
    el = etree.SubElement(parent, L + tag, {k: v for k, v in attrs.items() if v})
    if text is not None:
        el.text = text
    return el
