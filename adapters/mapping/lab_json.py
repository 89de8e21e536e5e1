"""A laboratory's results as JSON (REST), mapped by the same mapping file as its HL7 messages.

The JSON has one fixed shape (below), so a lab that sends JSON writes no field paths:
its mapping file's tests, units, flags, not-performed values, decimal comma, time zone
and recipient apply as they do to HL7. The document is turned into the ORU^R01 the
engine already understands, so both routes give the same result and the same gaps;
a gap's place is then named in JSON terms (``orders[1].results[2].unit``).

    {"messageId": "LAB-0001",                    // the lab's own id: a resend with it is the same message
     "patient": {"snils": "11223344595", "enp": "…", "localId": "A-77", "birthDate": "1980-01-01", "sex": "F",
                 "name": {"family": "Иванова", "given": "Анна", "middle": "Петровна"}},
     "orders": [                                 // one per order; or "order" + "results" for a single one
       {"placer": "ORD-1", "filler": "LAB-1", "service": {"code": "CBC", "text": "Общий анализ крови"},
        "status": "P", "observedAt": "2026-11-23T09:00:00+03:00", "reportedAt": "…", "notes": ["…"],
        "results": [{"code": "HGB", "text": "Гемоглобин", "type": "NM", "value": "13,5", "unit": "g/dL",
                     "range": "12-16", "flags": ["N"], "status": "P", "observedAt": "…", "notes": ["…"]}]}]}

A result's status left out is its order's; both left out, F (the JSON contract since the
first version; send P for a preliminary result). ``"value": null`` is the lab stating
there is no value (HL7's ``""``); a value left out is an empty one.
"""
from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Literal

import hl7
from lxml import etree
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from adapters.mapping.lab_mapping import Fields, LabMapping

_ESCAPES = {"\\": "\\E\\", "|": "\\F\\", "^": "\\S\\", "~": "\\R\\", "&": "\\T\\", "\n": "\\X0A\\", "\r": "\\X0D\\"}
_ESCAPE = re.compile(r"[\\|^~&\r\n]")

#: Where the JSON's fields land in the ORU built from it; a JSON lab's mapping needs no ``fields``.
JSON_FIELDS = Fields.model_validate({
    "patient": {"name": "PID-5",
                "snils": {"path": "PID-3.1", "where": {"component": 5, "equals": "SNILS"}},
                "enp": {"path": "PID-3.1", "where": {"component": 5, "equals": "ENP"}},
                "local_id": {"path": "PID-3.1", "where": {"component": 5, "equals": "MR"}},
                "birth_date": "PID-7", "sex": "PID-8"},
    "order": {"placer": "OBR-2.1", "filler": "OBR-3.1", "service": "OBR-4"},
    "observed_at": "OBR-7", "reported_at": "OBR-22",
})
#: HL7 places → JSON names, for gaps.
_PATIENT_PLACES = {3: "patient", 5: "patient.name", 7: "patient.birthDate", 8: "patient.sex"}
_ORDER_FIELDS = {2: "placer", 3: "filler", 4: "service", 7: "observedAt", 22: "reportedAt", 25: "status"}
_RESULT_FIELDS = {3: "code", 5: "value", 6: "unit", 7: "range", 8: "flags", 11: "status", 14: "observedAt"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class JsonName(_Strict):
    family: str | None = None
    given: str | None = None
    middle: str | None = None


class JsonPatient(_Strict):
    name: JsonName | None = None
    snils: str | None = None
    enp: str | None = None
    localId: str | None = None
    birthDate: str | None = None
    sex: Literal["M", "F", "U"] | None = None


class JsonCoded(_Strict):
    code: str
    text: str | None = None
    system: str | None = None


class JsonResult(_Strict):
    code: str = Field(min_length=1)
    text: str | None = None
    system: str | None = None
    type: Literal["NM", "SN", "ST", "TX", "FT", "CE", "CWE"] = "NM"
    value: str | None = None
    unit: str | None = None
    range: str | None = None
    flags: list[str] = []
    status: str | None = None
    observedAt: str | None = None
    notes: list[str] = []

    def is_null(self, name: str) -> bool:
        """``"value": null`` given (HL7's explicit null), not just left out."""
        return name in self.model_fields_set and getattr(self, name) is None


class JsonOrder(_Strict):
    placer: str | None = None
    filler: str | None = None
    service: JsonCoded | None = None
    status: str | None = None
    observedAt: str | None = None
    reportedAt: str | None = None
    notes: list[str] = []
    results: list[JsonResult] = []


class LabResultsDocument(_Strict):
    messageId: str = Field(min_length=1, max_length=199)
    patient: JsonPatient
    orders: list[JsonOrder] = []
    # the single-order form
    order: JsonOrder | None = None
    observedAt: str | None = None
    reportedAt: str | None = None
    status: str | None = None
    results: list[JsonResult] = Field(default_factory=list, validate_default=True)

    @field_validator("results")
    @classmethod
    def _results_or_orders(cls, value: list[JsonResult], info: ValidationInfo) -> list[JsonResult]:
        orders = info.data.get("orders") or []
        if not value and not orders:
            raise ValueError("no results: give results (one order) or orders")
        if value and orders:
            raise ValueError("give orders, or results for a single order, not both")
        return value

    @model_validator(mode="after")
    def _one_form(self) -> LabResultsDocument:
        if self.orders and (self.order is not None or self.status or self.observedAt or self.reportedAt):
            raise ValueError("with orders, each order has its own status and times: no order, status, observedAt "
                             "or reportedAt beside them")
        if self.order is not None and self.order.results:
            raise ValueError("in the single-order form the results go beside order, not in it")
        return self

    def all_orders(self) -> list[tuple[str, JsonOrder]]:
        """Each order with its JSON place (``orders[1]``, or ``""`` for the single-order form's top level)."""
        if self.orders:
            return [(f"orders[{i}]", o) for i, o in enumerate(self.orders)]
        order = (self.order or JsonOrder()).model_copy(update={
            "status": (self.order.status if self.order else None) or self.status,
            "observedAt": (self.order.observedAt if self.order else None) or self.observedAt,
            "reportedAt": (self.order.reportedAt if self.order else None) or self.reportedAt,
            "results": self.results})
        return [("", order)]


def _e(value: str | None) -> str:
    return _ESCAPE.sub(lambda m: _ESCAPES[m.group(0)], value or "")


def _v(result: JsonResult, name: str) -> str:
    return '""' if result.is_null(name) else _e(getattr(result, name))


def _dtm(value: str | None) -> str:
    """ISO 8601 → HL7 DTM; anything that is not ISO goes through as written, for the engine to judge."""
    if not value:
        return ""
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return _e(value)
    text = moment.strftime("%Y%m%d%H%M%S") if "T" in value or " " in value else moment.strftime("%Y%m%d")
    return text + (moment.strftime("%z") if moment.tzinfo else "")


#: (segment, ordinal) of the built ORU → the JSON place it came from.
Places = dict[tuple[str, int], str]


def to_oru(doc: LabResultsDocument, mapping: LabMapping) -> tuple[hl7.Message, Places]:
    p = doc.patient
    ids = "~".join(f"{_e(v)}^^^^{kind}" for v, kind in ((p.snils, "SNILS"), (p.enp, "ENP"), (p.localId, "MR")) if v)
    name = "^".join(_e(v) for v in (p.name.family, p.name.given, p.name.middle)) if p.name else ""
    segments = [
        f"MSH|^~\\&|REST|{_e(mapping.lab)}|GW|GW|{datetime.now().strftime('%Y%m%d%H%M%S')}||ORU^R01|"
        f"{_e(doc.messageId)}|P|2.5.1",
        f"PID|1||{ids}||{name}||{_dtm(p.birthDate)}|{p.sex or ''}",
    ]
    places: Places = {("PID", 1): "patient", ("MSH", 1): "messageId"}
    counts = {"OBR": 0, "OBX": 0, "NTE": 0}

    def add(segment: str, place: str) -> None:
        name = segment[:3]
        counts[name] += 1
        places[(name, counts[name])] = place
        segments.append(segment)

    for where, o in doc.all_orders():
        inner = f"{where}." if where else ""
        service = f"{_e(o.service.code)}^{_e(o.service.text)}^{_e(o.service.system)}" if o.service else ""
        obr = ["OBR", str(counts["OBR"] + 1), _e(o.placer), _e(o.filler), service, "", "", _dtm(o.observedAt)]
        obr += [""] * 14 + [_dtm(o.reportedAt), "", "", _e(o.status)]
        add("|".join(obr), where)
        for i, note in enumerate(o.notes):
            add(f"NTE|{i + 1}|L|{_e(note)}", f"{inner or 'order.'}notes[{i}]")
        for j, r in enumerate(o.results):
            # an SN in JSON is written as text ("<5", ">=11"), which the engine reads as an NM with a comparator
            vtype = "NM" if r.type == "SN" else r.type
            code = f"{_e(r.code)}^{_e(r.text)}^{_e(r.system)}"
            fields = ["OBX", str(j + 1), vtype, code, "", _v(r, "value"), _v(r, "unit"), _v(r, "range"),
                      "~".join(_e(f) for f in r.flags), "", "", _e(r.status), "", "", _dtm(r.observedAt)]
            add("|".join(fields), f"{inner}results[{j}]")
            for k, note in enumerate(r.notes):
                add(f"NTE|{k + 1}|L|{_e(note)}", f"{inner}results[{j}].notes[{k}]")
    return hl7.parse("\r".join(segments)), places


def json_place(places: Places, segment: str, sequence: int, field: int) -> str:
    """Where a gap found in the built ORU is, in the lab's JSON."""
    place = places.get((segment, sequence))
    if place is None:
        return "body"
    if segment == "OBX":
        return f"{place}.{_RESULT_FIELDS.get(field, 'value')}"
    if segment == "OBR":
        name = _ORDER_FIELDS.get(field)
        if place:
            return f"{place}.{name}" if name else place
        # the single-order form: numbers and service in "order", times and status at the top
        return name if field in (7, 22, 25) else (f"order.{name}" if name else "order")
    if segment == "PID":
        return _PATIENT_PLACES.get(field, "patient")
    return place


def for_json(mapping: LabMapping) -> LabMapping:
    """The lab's mapping with the JSON's fixed field places, and F for results no status is given for."""
    return mapping.model_copy(update={"fields": JSON_FIELDS,
                                      "status_when_missing": mapping.status_when_missing or "F"})


LAB_REPORT_NS = "urn://zdravlink/types/lab-report/1.0"
_XSI_NIL = "{http://www.w3.org/2001/XMLSchema-instance}nil"


def document_from_xml(root: etree._Element) -> LabResultsDocument:
    """The JSON document's twin in XML (schemas_xsd/payloads/lab-report-1.0.xsd), already XSD-valid.

    The wrappers ``orders``, ``results`` and ``notes`` and the repeated ``flag`` become lists;
    an element with ``xsi:nil="true"`` becomes JSON's null.
    """
    lists = {"flag": "flags"}
    wrappers = {"orders", "results", "notes"}

    def plain(el: etree._Element) -> Any:
        if el.get(_XSI_NIL) in ("true", "1"):
            return None
        children = [c for c in el if isinstance(c.tag, str)]
        if not children:
            return el.text or ""
        name = etree.QName(el).localname
        if name in wrappers:
            return [plain(c) for c in children]
        out: dict[str, Any] = {}
        for child in children:
            key = etree.QName(child).localname
            if key in lists:
                out.setdefault(lists[key], []).append(plain(child))
            else:
                out[key] = plain(child)
        return out

    return LabResultsDocument.model_validate(plain(root))
