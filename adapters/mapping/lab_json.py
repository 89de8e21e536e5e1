"""A laboratory's results as JSON (REST), mapped by the same mapping file as its HL7 messages.

The JSON has one fixed shape (below), so a lab that sends JSON writes no field paths:
its mapping file's tests, units, flags, not-performed values, decimal comma, time zone
and recipient apply as they do to HL7. The document is turned into the ORU^R01 the
engine already understands, so both routes give the same result and the same gaps;
a gap's place is then named in JSON terms (``results[2].unit``).

    {"messageId": "LAB-0001",                    // the lab's own id: a resend with it is the same message
     "patient": {"snils": "11223344595", "enp": "…", "localId": "A-77", "birthDate": "1980-01-01", "sex": "F"},
     "order": {"placer": "ORD-1", "filler": "LAB-1", "service": {"code": "CBC", "text": "Общий анализ крови"}},
     "observedAt": "2026-11-23T09:00:00+03:00", "reportedAt": "2026-11-23T10:00:00+03:00", "status": "F",
     "results": [{"code": "HGB", "text": "Гемоглобин", "type": "NM", "value": "13,5", "unit": "g/dL",
                  "range": "12-16", "flags": ["N"], "status": "F", "observedAt": "…"}]}
"""
from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Literal

import hl7
from lxml import etree
from pydantic import BaseModel, ConfigDict, Field

from adapters.mapping.lab_mapping import Fields, LabMapping

_ESCAPES = {"\\": "\\E\\", "|": "\\F\\", "^": "\\S\\", "~": "\\R\\", "&": "\\T\\"}
_ESCAPE = re.compile(r"[\\|^~&]")

#: Where the JSON's fields land in the ORU built from it; a JSON lab's mapping needs no ``fields``.
JSON_FIELDS = Fields.model_validate({
    "patient": {"snils": {"path": "PID-3.1", "where": {"component": 5, "equals": "SNILS"}},
                "enp": {"path": "PID-3.1", "where": {"component": 5, "equals": "ENP"}},
                "local_id": {"path": "PID-3.1", "where": {"component": 5, "equals": "MR"}},
                "birth_date": "PID-7", "sex": "PID-8"},
    "order": {"placer": "OBR-2.1", "filler": "OBR-3.1", "service": "OBR-4"},
    "observed_at": "OBR-7", "reported_at": "OBR-22",
})
#: HL7 places → JSON names, for gaps.
_PLACES = {("PID", 3): "patient", ("PID", 7): "patient.birthDate", ("PID", 8): "patient.sex",
           ("OBR", 7): "observedAt", ("OBR", 22): "reportedAt", ("MSH", 0): "body"}
_RESULT_FIELDS = {3: "code", 5: "value", 6: "unit", 7: "range", 8: "flags", 11: "status", 14: "observedAt"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class JsonPatient(_Strict):
    snils: str | None = None
    enp: str | None = None
    localId: str | None = None  # noqa: N815 (JSON's name)
    birthDate: str | None = None  # noqa: N815
    sex: Literal["M", "F", "U"] | None = None


class JsonCoded(_Strict):
    code: str
    text: str | None = None


class JsonOrder(_Strict):
    placer: str | None = None
    filler: str | None = None
    service: JsonCoded | None = None


class JsonResult(_Strict):
    code: str = Field(min_length=1)
    text: str | None = None
    type: Literal["NM", "SN", "ST", "TX", "FT", "CE", "CWE"] = "NM"
    value: str | None = None
    unit: str | None = None
    range: str | None = None
    flags: list[str] = []
    status: str = "F"
    observedAt: str | None = None  # noqa: N815


class LabResultsDocument(_Strict):
    messageId: str = Field(min_length=1, max_length=199)  # noqa: N815
    patient: JsonPatient
    order: JsonOrder = JsonOrder()
    observedAt: str | None = None  # noqa: N815
    reportedAt: str | None = None  # noqa: N815
    status: str | None = None
    results: list[JsonResult] = Field(min_length=1)


def _e(value: str | None) -> str:
    return _ESCAPE.sub(lambda m: _ESCAPES[m.group(0)], value or "")


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


def to_oru(doc: LabResultsDocument, mapping: LabMapping) -> hl7.Message:
    p, o = doc.patient, doc.order
    ids = "~".join(f"{_e(v)}^^^^{kind}" for v, kind in ((p.snils, "SNILS"), (p.enp, "ENP"), (p.localId, "MR")) if v)
    service = f"{_e(o.service.code)}^{_e(o.service.text)}" if o.service else ""
    obr = ["OBR", "1", _e(o.placer), _e(o.filler), service, "", "", _dtm(doc.observedAt)] + [""] * 14
    obr += [_dtm(doc.reportedAt), "", "", _e(doc.status)]
    segments = [
        f"MSH|^~\\&|REST|{_e(mapping.lab)}|GW|GW|{datetime.now().strftime('%Y%m%d%H%M%S')}||ORU^R01|"
        f"{_e(doc.messageId)}|P|2.5.1",
        f"PID|1||{ids}||||{_dtm(p.birthDate)}|{p.sex or ''}",
        "|".join(obr),
    ]
    for i, r in enumerate(doc.results, 1):
        # an SN in JSON is written as text ("<5", ">=11"), which the engine reads as an NM with a comparator
        vtype = "NM" if r.type == "SN" else r.type
        fields = ["OBX", str(i), vtype, f"{_e(r.code)}^{_e(r.text)}", "", _e(r.value), _e(r.unit), _e(r.range),
                  "~".join(_e(f) for f in r.flags), "", "", _e(r.status), "", "", _dtm(r.observedAt)]
        segments.append("|".join(fields))
    return hl7.parse("\r".join(segments))


def json_place(segment: str, sequence: int, field: int) -> str:
    """Where a gap found in the built ORU is, in the lab's JSON."""
    if segment == "OBX":
        return f"results[{sequence - 1}].{_RESULT_FIELDS.get(field, 'value')}"
    return _PLACES.get((segment, field), f"{segment}-{field}")


def for_json(mapping: LabMapping) -> LabMapping:
    """The lab's mapping with the JSON's fixed field places."""
    return mapping.model_copy(update={"fields": JSON_FIELDS})


LAB_REPORT_NS = "urn://zdravlink/types/lab-report/1.0"


def document_from_xml(root: etree._Element) -> LabResultsDocument:
    """The JSON document's twin in XML (schemas_xsd/payloads/lab-report-1.0.xsd), already XSD-valid."""
    def plain(el: etree._Element | None) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for child in (el if el is not None else []):
            if not isinstance(child.tag, str):
                continue
            name = etree.QName(child).localname
            out[name] = plain(child) if len(child) else (child.text or "")
        return out

    body = plain(root)
    results = []
    for item in root.iterfind(f"{{{LAB_REPORT_NS}}}results/{{{LAB_REPORT_NS}}}result"):
        result = plain(item)
        result.pop("flag", None)
        result["flags"] = [f.text or "" for f in item.iterfind(f"{{{LAB_REPORT_NS}}}flag")]
        results.append(result)
    body["results"] = results
    return LabResultsDocument.model_validate(body)
