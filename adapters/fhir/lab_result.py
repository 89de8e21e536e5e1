"""A lab result (payload ``urn://zdravlink/types/lab-result/1.0``) as a FHIR R4 Bundle, and its validation.

A recipient MIS that asks for FHIR gets a ``collection`` Bundle holding a DiagnosticReport,
one Observation per test, the Patient, the laboratory as an Organization and the Specimen,
linked by ``urn:uuid:`` fullUrls. Where a choice had to be made, it follows the Russian FHIR
material (Ru-SEMD «Протокол лабораторного исследования», ru.core) as recorded in
``shared/research/formats.md`` §2.3 and §4.3:

* Test codes: ФСЛИ, ``urn:oid:1.2.643.5.1.13.13.11.1080`` (Ru-SEMD Observation.code). A test
  whose Code has no System is taken as ФСЛИ, because the payload schema says tests are coded
  with it. The lab's own code is a second coding; without a system of its own it gets one
  minted per laboratory (``urn://zdravlink/fhir/local-code/<mnemonic>``), so codes of two
  labs can never be mistaken for each other.
* СНИЛС: ``urn:oid:1.2.643.100.3``, the only СНИЛС OID in the research notes (§4.3, from
  ru.core's documentation; the same OID names СНИЛС in qualified certificates). The
  ``1.2.643.5.1.13.13.99.2.183`` sometimes suggested was not observed in any source, so it
  is not used.
* ЕНП (полис ОМС единого образца): no OID was observed. The system is ru.core's
  ``http://fhir.ru/core/systems/OMS`` (fixed by its Coverage profile, formats.md §2.3);
  Ru-SEMD's example spells it ``http://fhir.ru/ig/RuCore/systems/OMS`` — the two projects
  disagree, and the profile's value was preferred over an example's.
* The laboratory's ФРМО OID: ``{"system": "urn:ietf:rfc:3986", "value": "urn:oid:<OID>"}``,
  FHIR's own way to carry an OID that *is* the identifier. The value is exactly what Ru-SEMD
  puts there; its system (a CodeSystem URL, not an identifier namespace) was not copied.
* Interpretation: HL7 v2 table 0078 flags map one to one onto
  ``http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation``; a flag outside the
  known list travels as text only, since inventing a coding would assert a meaning.
* Units: ``unit`` always carries the text (the display, else the code); ``system`` and
  ``code`` only when the payload names the unit's system — whether "g/L" is meant as UCUM
  cannot be known from the string, and qty-3 forbids a code without a system.

A corrected result (Status C) keeps the ResultId of the report it corrects, so the
DiagnosticReport carries the same business identifier with ``status: corrected``. R4 has no
``replaces`` element on DiagnosticReport; the generic extension
``http://hl7.org/fhir/StructureDefinition/replaces`` is only allowed on canonical resources,
so the link uses the core extension made for this resource,
``http://hl7.org/fhir/StructureDefinition/diagnosticReport-replaces`` (valueReference to a
DiagnosticReport; HL7 describes it for a final report superseding a preliminary one, and a
correction is the same act: the new report takes the old one's place). Its reference is logical: an identifier ``urn://zdravlink/fhir/message-id``
= the replaced message's id, which every DiagnosticReport we emit carries for its own message.
A literal reference would dangle (the earlier report is in another Bundle).

Times: FHIR wants a time zone on any dateTime with a time, and ``issued`` is an instant,
which needs one. HL7 v2 feeds often send local wall-clock times, so a payload time may have
no offset. Without ``local_tz`` no offset is guessed: a dateTime keeps only its date (FHIR
allows a bare date), and ``issued`` is left out. With ``local_tz`` (the laboratory's zone,
which only the caller can know) the offset of that wall-clock time in that zone is added.
"""
from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone, tzinfo
from decimal import Decimal
from typing import Any, Mapping
from urllib.parse import quote

from lxml import etree

LAB_RESULT_NS = "urn://zdravlink/types/lab-result/1.0"
_L = "{%s}" % LAB_RESULT_NS

FSLI_SYSTEM = "urn:oid:1.2.643.5.1.13.13.11.1080"
SNILS_SYSTEM = "urn:oid:1.2.643.100.3"
ENP_SYSTEM = "http://fhir.ru/core/systems/OMS"
URI_SYSTEM = "urn:ietf:rfc:3986"
MESSAGE_ID_SYSTEM = "urn://zdravlink/fhir/message-id"
RESULT_ID_SYSTEM = "urn://zdravlink/fhir/result-id"
PARTICIPANT_SYSTEM = "urn://zdravlink/fhir/participant"
LOCAL_CODE_SYSTEM = "urn://zdravlink/fhir/local-code/"
UCUM_SYSTEM = "http://unitsofmeasure.org"
INTERPRETATION_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
REPLACES_EXTENSION = "http://hl7.org/fhir/StructureDefinition/diagnosticReport-replaces"
_V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
_V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
_OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
_DATA_ABSENT_REASON = "http://terminology.hl7.org/CodeSystem/data-absent-reason"

_STATUS = {"P": "preliminary", "F": "final", "C": "corrected", "X": "cancelled"}

#: HL7 v2 table 0078 flags that the v3 code system defines with the same code.
_INTERPRETATIONS = {
    "N": "Normal", "L": "Low", "H": "High", "LL": "Critical low", "HH": "Critical high",
    "A": "Abnormal", "AA": "Critical abnormal", "<": "Off scale low", ">": "Off scale high",
    "POS": "Positive", "NEG": "Negative", "IND": "Indeterminate", "DET": "Detected",
    "ND": "Not detected", "E": "Equivocal", "I": "Intermediate", "S": "Susceptible",
    "R": "Resistant", "U": "Significant change up", "D": "Significant change down",
    "B": "Better", "W": "Worse",
}

#: Coding-system names of HL7 v2 (table 0396) a lab mapping may pass through unchanged.
_V2_SYSTEM_NAMES = {"UCUM": UCUM_SYSTEM, "LN": "http://loinc.org"}

_OID = re.compile(r"[0-2](\.(0|[1-9][0-9]*))+")
_ABSOLUTE_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:\S+")
_XS_DATETIME = re.compile(
    r"(?P<y>\d{4})-(?P<mo>\d{2})-(?P<d>\d{2})T(?P<h>\d{2}):(?P<mi>\d{2}):(?P<s>\d{2})(?:\.\d+)?"
    r"(?P<zone>Z|[+-]\d{2}:\d{2})?"
)
_XS_DATE = re.compile(r"(\d{4}-\d{2}-\d{2})(?:Z|[+-]\d{2}:\d{2})?")


# ---- reading the payload ---------------------------------------------------------------

def _clean(text: str | None) -> str | None:
    """Stripped text, or None for nothing: FHIR refuses empty strings and padded codes."""
    return (text or "").strip() or None


def _text(parent: etree._Element, tag: str) -> str | None:
    return _clean(parent.findtext(_L + tag))


def _child(parent: etree._Element, tag: str) -> etree._Element:
    """A child the schema requires; its absence means the payload skipped validation."""
    found = parent.find(_L + tag)
    if found is None:
        raise ValueError(f"{etree.QName(parent).localname} has no {tag}: not a schema-valid lab result")
    return found


def _required(parent: etree._Element, tag: str) -> str:
    value = _clean(_child(parent, tag).text)
    if value is None:
        raise ValueError(f"{etree.QName(parent).localname}/{tag} is empty: not a schema-valid lab result")
    return value


def _system_uri(name: str | None) -> str | None:
    """A payload's free-form System as a FHIR system URI, or None when it names none we know."""
    if name is None:
        return None
    if _OID.fullmatch(name):
        return "urn:oid:" + name
    if _ABSOLUTE_URI.fullmatch(name):
        return name
    return _V2_SYSTEM_NAMES.get(name.upper())


def _coding(coded: etree._Element, default_system: str | None = None) -> dict[str, Any]:
    coding: dict[str, Any] = {}
    system = _system_uri(_text(coded, "System")) if coded.find(_L + "System") is not None else default_system
    if system:
        coding["system"] = system
    coding["code"] = _required(coded, "Code")
    display = _text(coded, "Display")
    if display:
        coding["display"] = display
    return coding


def _concept(coded: etree._Element, default_system: str | None = None) -> dict[str, Any]:
    coding = _coding(coded, default_system)
    concept: dict[str, Any] = {"coding": [coding]}
    if "display" in coding:
        concept["text"] = coding["display"]
    return concept


def _offset(delta: timedelta) -> str:
    minutes = int(delta.total_seconds()) // 60
    sign = "+" if minutes >= 0 else "-"
    hours, minutes = divmod(abs(minutes), 60)
    return f"{sign}{hours:02d}:{minutes:02d}"


def _zoned(value: str, local_tz: tzinfo | None) -> str | None:
    """An xs:dateTime with its offset, given or derived from ``local_tz``; None when neither is known.

    The lexical form is kept (not re-rendered) so the lab's precision and offset survive.
    """
    m = _XS_DATETIME.fullmatch(value)
    if m is None:
        raise ValueError(f"not an xs:dateTime: {value!r}")
    if m["zone"]:
        return value
    if local_tz is None:
        return None
    wall = datetime(*(int(m[k]) for k in ("y", "mo", "d", "h", "mi", "s")))
    return value + _offset(local_tz.utcoffset(wall) or timedelta(0))


def _fhir_datetime(value: str, local_tz: tzinfo | None) -> str:
    return _zoned(value, local_tz) or value[:10]


def _fhir_date(value: str) -> str:
    m = _XS_DATE.fullmatch(value)
    if m is None:
        raise ValueError(f"not an xs:date: {value!r}")
    return m[1]


# ---- building the Bundle ---------------------------------------------------------------

def _ref(full_url: str) -> dict[str, str]:
    return {"reference": full_url}


def _entry(full_url: str, resource: dict[str, Any]) -> dict[str, Any]:
    """An entry whose resource id is its fullUrl's UUID: FHIR says the two SHALL NOT disagree."""
    return {"fullUrl": full_url, "resource": {"resourceType": resource["resourceType"],
                                              "id": full_url.removeprefix("urn:uuid:"), **resource}}


@dataclass(frozen=True)
class _Context:
    lab: str
    patient: str
    organization: str
    specimen: str | None
    observed_at: str | None
    issued: str | None
    local_tz: tzinfo | None


def _patient(patient: etree._Element) -> dict[str, Any]:
    identifiers: list[dict[str, Any]] = []
    snils = _text(patient, "SNILS")
    if snils:
        identifiers.append({"type": {"text": "СНИЛС"}, "system": SNILS_SYSTEM, "value": snils})
    enp = _text(patient, "ENP")
    if enp:
        identifiers.append({"type": {"text": "Полис ОМС единого образца (ЕНП)"}, "system": ENP_SYSTEM, "value": enp})
    local = patient.find(_L + "LocalId")
    local_id = _clean(local.text) if local is not None else None
    if local is not None and local_id:
        # No system: the payload names the assigner, not the namespace of its numbers.
        ident: dict[str, Any] = {
            "type": {"coding": [{"system": _V2_0203, "code": "PI", "display": "Patient internal identifier"}]},
            "value": local_id,
        }
        if local.get("assigner"):
            ident["assigner"] = {"display": local.get("assigner")}
        identifiers.append(ident)
    resource: dict[str, Any] = {"resourceType": "Patient"}
    if identifiers:
        resource["identifier"] = identifiers
    sex = _text(patient, "Sex")
    if sex:
        resource["gender"] = sex
    birth = _text(patient, "BirthDate")
    if birth:
        resource["birthDate"] = _fhir_date(birth)
    return resource


def _organization(lab: etree._Element) -> dict[str, Any]:
    identifiers: list[dict[str, Any]] = [{"system": PARTICIPANT_SYSTEM, "value": _required(lab, "Mnemonic")}]
    oid = _text(lab, "FrmoOid")
    if oid:
        identifiers.insert(0, {"type": {"text": "ФРМО"}, "system": URI_SYSTEM, "value": "urn:oid:" + oid})
    resource: dict[str, Any] = {"resourceType": "Organization", "identifier": identifiers}
    name = _text(lab, "Name")
    if name:
        resource["name"] = name
    return resource


def _specimen(specimen: etree._Element, ctx: _Context) -> dict[str, Any]:
    resource: dict[str, Any] = {"resourceType": "Specimen", "subject": _ref(ctx.patient)}
    kind = specimen.find(_L + "Type")
    if kind is not None:
        resource["type"] = _concept(kind)
    collected = _text(specimen, "CollectedAt")
    if collected:
        resource["collection"] = {"collectedDateTime": _fhir_datetime(collected, ctx.local_tz)}
    return resource


def _unit(unit: etree._Element | None) -> dict[str, Any]:
    if unit is None:
        return {}
    code, display = _required(unit, "Code"), _text(unit, "Display")
    fields: dict[str, Any] = {"unit": display or code}
    system = _system_uri(_text(unit, "System"))
    if system:
        fields.update(system=system, code=code)
    return fields


def _interpretation(flag: str) -> dict[str, Any]:
    code = flag.upper()
    display = _INTERPRETATIONS.get(code)
    if display is None:
        return {"text": flag}
    return {"coding": [{"system": INTERPRETATION_SYSTEM, "code": code, "display": display}]}


def _reference_range(rng: etree._Element, unit: dict[str, Any]) -> dict[str, Any] | None:
    out: dict[str, Any] = {}
    for tag, key in (("Low", "low"), ("High", "high")):
        value = _text(rng, tag)
        if value is not None:
            out[key] = {"value": Decimal(value), **unit}
    text = _text(rng, "Text")
    if text:
        out["text"] = text
    return out or None


def _observation(test: etree._Element, ctx: _Context) -> dict[str, Any]:
    code = _concept(_child(test, "Code"), FSLI_SYSTEM)
    local = test.find(_L + "LocalCode")
    if local is not None:
        local_coding = _coding(local, LOCAL_CODE_SYSTEM + quote(ctx.lab, safe=""))
        code["coding"].append(local_coding)
        if "text" not in code and "display" in local_coding:
            code["text"] = local_coding["display"]
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "status": _STATUS[_required(test, "Status")],
        "category": [{"coding": [{"system": _OBSERVATION_CATEGORY, "code": "laboratory", "display": "Laboratory"}]}],
        "code": code,
        "subject": _ref(ctx.patient),
    }
    observed = _text(test, "ObservedAt") or ctx.observed_at
    if observed:
        obs["effectiveDateTime"] = _fhir_datetime(observed, ctx.local_tz)
    if ctx.issued:
        obs["issued"] = ctx.issued
    obs["performer"] = [_ref(ctx.organization)]

    unit: dict[str, Any] = {}
    quantity = test.find(_L + "Quantity")
    if quantity is not None:
        unit = _unit(quantity.find(_L + "Unit"))
        value: dict[str, Any] = {"value": Decimal(_required(quantity, "Value"))}
        comparator = _text(quantity, "Comparator")
        if comparator:
            value["comparator"] = comparator
        obs["valueQuantity"] = {**value, **unit}
    elif _text(test, "Text"):
        obs["valueString"] = _text(test, "Text")
    elif test.find(_L + "Coded") is not None:
        obs["valueCodeableConcept"] = _concept(_child(test, "Coded"))
    else:
        # The schema lets a Text be empty, and FHIR has no empty string: that is a value unknown.
        why, why_display = (("not-performed", "Not Performed") if test.find(_L + "NotPerformed") is not None
                            else ("unknown", "Unknown"))
        absent: dict[str, Any] = {"coding": [{"system": _DATA_ABSENT_REASON, "code": why, "display": why_display}]}
        reason = _text(test, "NotPerformed")
        if reason:
            absent["text"] = reason
        obs["dataAbsentReason"] = absent

    flags = [flag for flag in (_clean(el.text) for el in test.findall(_L + "Flag")) if flag]
    if flags:
        obs["interpretation"] = [_interpretation(flag) for flag in flags]
    notes = [note for note in (_clean(el.text) for el in test.findall(_L + "Note")) if note]
    if notes:
        obs["note"] = [{"text": note} for note in notes]
    if ctx.specimen:
        obs["specimen"] = _ref(ctx.specimen)
    rng = test.find(_L + "ReferenceRange")
    if rng is not None:
        # A range shares the result's unit; it has no comparator (SimpleQuantity).
        reference_range = _reference_range(rng, unit)
        if reference_range:
            obs["referenceRange"] = [reference_range]
    return obs


def to_bundle(result: etree._Element, *, message_id: str, replaces: str | None = None,
              local_tz: tzinfo | None = None) -> dict[str, Any]:
    """The FHIR R4 Bundle of one schema-valid ``LabResult``.

    ``message_id`` (a UUID, as every gateway message id is) names the Bundle, and every fullUrl
    is a UUID derived from it: a redelivered message yields the same resource ids, so a
    recipient that keeps them sees the same resources again, not copies. ``replaces`` is the
    message id of the result this one corrects; by default the payload's own Replaces.
    ``local_tz`` is the laboratory's zone, used only for times the payload gives without an
    offset (see the module docstring). Decimals are ``Decimal`` so their precision survives:
    serialise with :func:`to_json_bytes`, check with ``validation.validate_bundle(..., mode=STRICT)``.
    """
    if result.tag != _L + "LabResult":
        raise ValueError(f"not a lab result: {result.tag}")
    message = uuid.UUID(message_id)

    def full_url(role: str) -> str:
        return f"urn:uuid:{uuid.uuid5(message, role)}"

    reported = _text(result, "ReportedAt")
    specimen = result.find(_L + "Specimen")
    ctx = _Context(
        lab=_required(_child(result, "Laboratory"), "Mnemonic"),
        patient=full_url("Patient"),
        organization=full_url("Organization"),
        specimen=full_url("Specimen") if specimen is not None else None,
        observed_at=_text(result, "ObservedAt"),
        issued=_zoned(reported, local_tz) if reported else None,
        local_tz=local_tz,
    )
    observations = [(full_url(f"Observation/{n}"), _observation(test, ctx))
                     for n, test in enumerate(result.findall(_L + "Test"))]

    report: dict[str, Any] = {"resourceType": "DiagnosticReport"}
    replaced = replaces or _text(result, "Replaces")
    if replaced:
        report["extension"] = [{"url": REPLACES_EXTENSION, "valueReference": {
            "type": "DiagnosticReport", "identifier": {"system": MESSAGE_ID_SYSTEM, "value": replaced}}}]
    order = _child(result, "Order")
    identifiers: list[dict[str, Any]] = [
        {"system": RESULT_ID_SYSTEM, "value": _required(result, "ResultId")},
        {"system": MESSAGE_ID_SYSTEM, "value": str(message)},
    ]
    filler = _text(order, "FillerNumber")
    if filler:
        # FHIR maps the filler order number (OBR-3) to DiagnosticReport.identifier.
        identifiers.append({"type": {"coding": [{"system": _V2_0203, "code": "FILL", "display": "Filler Identifier"}]},
                            "value": filler})
    report["identifier"] = identifiers
    placer = _text(order, "PlacerNumber")
    if placer:
        report["basedOn"] = [{"type": "ServiceRequest", "identifier": {
            "type": {"coding": [{"system": _V2_0203, "code": "PLAC", "display": "Placer Identifier"}]},
            "value": placer}}]
    report["status"] = _STATUS[_required(result, "Status")]
    report["category"] = [{"coding": [{"system": _V2_0074, "code": "LAB", "display": "Laboratory"}]}]
    service = order.find(_L + "Service")
    report["code"] = _concept(service) if service is not None else {
        "coding": [{"system": "http://loinc.org", "code": "11502-2", "display": "Laboratory report"}],
        "text": "Laboratory report"}
    report["subject"] = _ref(ctx.patient)
    if ctx.observed_at:
        report["effectiveDateTime"] = _fhir_datetime(ctx.observed_at, local_tz)
    if ctx.issued:
        report["issued"] = ctx.issued
    report["performer"] = [_ref(ctx.organization)]
    performer = _text(result, "Performer")
    if performer:
        report["performer"].append({"display": performer})
    if ctx.specimen:
        report["specimen"] = [_ref(ctx.specimen)]
    report["result"] = [_ref(url) for url, _ in observations]

    entries = [_entry(full_url("DiagnosticReport"), report)]
    entries += [_entry(url, obs) for url, obs in observations]
    entries.append(_entry(ctx.patient, _patient(_child(result, "Patient"))))
    entries.append(_entry(ctx.organization, _organization(_child(result, "Laboratory"))))
    if specimen is not None:
        entries.append(_entry(full_url("Specimen"), _specimen(specimen, ctx)))
    return {
        "resourceType": "Bundle",
        "id": str(message),
        "identifier": {"system": URI_SYSTEM, "value": f"urn:uuid:{message}"},
        "type": "collection",
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "entry": entries,
    }


def _json(value: Any) -> str:
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{json.dumps(k, ensure_ascii=False)}:{_json(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_json(v) for v in value) + "]"
    if isinstance(value, Decimal):
        return str(value)
    return json.dumps(value, ensure_ascii=False)


def to_json_bytes(bundle: Mapping[str, Any]) -> bytes:
    """The Bundle as UTF-8 JSON, decimals written as the lab wrote them.

    ``json`` would turn a Decimal into a float and "5.50" into 5.5, and FHIR counts a
    decimal's trailing zeros as its precision — hence a writer of our own.
    """
    return _json(bundle).encode("utf-8")
