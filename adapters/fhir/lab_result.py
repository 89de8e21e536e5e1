"""A lab result (payload ``urn://zdravlink/types/lab-result/1.0``) as a FHIR R4 Bundle.

A recipient MIS that asks for FHIR gets a ``collection`` Bundle holding, for each Order of
the lab result, a DiagnosticReport with one Observation per test (and the order's Specimen
and ServiceRequest when it has them), plus the Patient, the laboratory as an Organization
and a Practitioner for each person named (requester, performer), linked by ``urn:uuid:``
fullUrls. ``validation.validate_bundle(..., mode=STRICT)`` is what it must pass. Where a
choice had to be made, it follows the Russian FHIR material (Ru-SEMD «Протокол
лабораторного исследования», ru.core) as recorded in ``shared/research/formats.md`` §2.3
and §4.3:

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

Nothing of the lab result is left behind (docs/onboarding-a-lab.md lists it all):

* Statuses: each lab result status maps onto its FHIR code (``_REPORT_STATUS``,
  ``_OBSERVATION_STATUS``); S (partial) is a report's ``partial``; B (appended) was read
  as A, an Observation's ``amended``.
* No value: NotPerformed is ``dataAbsentReason`` ``not-performed`` (``not-asked`` for a test
  the lab marked N); ``NoValue`` pending is ``temp-unknown``; HL7's explicit null is a
  dataAbsentReason with text only — no code of that value set says "the lab stated there is
  none", and inventing one would assert what the lab did not.
* Several coded answers (a repeating OBX-5) are components, one per answer: one
  CodeableConcept holds codings of one meaning, not several answers. A coded value's
  alternate coding is a second coding of the same concept, its original text the text.
* Notes: a test's are its Observation's ``note``; an order's, and the patient's (which R4's
  Patient cannot carry), are the DiagnosticReport's ``conclusion``, the patient's last and
  marked so; R4's DiagnosticReport has no ``note``.
* Names: HumanName with ``given`` = [given, middle] (отчество after the given name, as
  ru.core does).
* What the lab result warns about (an order's status lowered to its tests, a segment the
  lab's mapping let through unplaced, a unit that cannot go with a text) is an
  OperationOutcome in the Bundle, one issue each, ``severity: warning``, the HL7 place in
  ``location``: a FHIR recipient sees what an XML one sees.
* An order's performer (HL7 OBR-32, the principal result interpreter) is the report's
  ``resultsInterpreter``; a test's (OBX-16) is its Observation's ``performer`` beside the
  laboratory; the requester is the ServiceRequest's.

An order the lab sends again (a correction, a final after a preliminary) keeps its OrderId,
so the DiagnosticReport carries the same business identifier with its new status. R4 has no
``replaces`` element on DiagnosticReport; the generic extension
``http://hl7.org/fhir/StructureDefinition/replaces`` is only allowed on canonical resources,
so the link uses the core extension made for this resource,
``http://hl7.org/fhir/StructureDefinition/diagnosticReport-replaces`` (valueReference to a
DiagnosticReport; HL7 describes it for a final report superseding a preliminary one, and a
correction is the same act: the new report takes the old one's place). Its reference is
logical: an identifier ``urn://zdravlink/fhir/message-id`` = the replaced message's id,
which every DiagnosticReport we emit carries for its own message (with the order's OrderId
beside it, so the MIS finds the order within that message).
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
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from decimal import Decimal
from typing import Any
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
ORDER_ID_SYSTEM = "urn://zdravlink/fhir/order-id"
WARNING_SYSTEM = "urn://zdravlink/fhir/warning"
PARTICIPANT_SYSTEM = "urn://zdravlink/fhir/participant"
LOCAL_CODE_SYSTEM = "urn://zdravlink/fhir/local-code/"
UCUM_SYSTEM = "http://unitsofmeasure.org"
INTERPRETATION_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
REPLACES_EXTENSION = "http://hl7.org/fhir/StructureDefinition/diagnosticReport-replaces"
_V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
_V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
_OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
_DATA_ABSENT_REASON = "http://terminology.hl7.org/CodeSystem/data-absent-reason"

_REPORT_STATUS = {"I": "registered", "R": "preliminary", "S": "partial", "P": "preliminary", "F": "final",
                  "A": "amended", "C": "corrected", "X": "cancelled", "N": "cancelled", "D": "entered-in-error",
                  "W": "entered-in-error"}
_OBSERVATION_STATUS = {**_REPORT_STATUS, "S": "preliminary"}
_ABSENT = {"not-performed": "Not Performed", "not-asked": "Not Asked", "temp-unknown": "Temporarily Unknown"}

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
_V2_SYSTEM_NAMES = {"UCUM": UCUM_SYSTEM, "LN": "http://loinc.org", "SCT": "http://snomed.info/sct"}

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


def _coding(coded: etree._Element, default_system: str | None = None) -> dict[str, Any] | None:
    """One Coding of a Code/System/Display triple; None without a code (text alone is no coding)."""
    code = _text(coded, "Code")
    if code is None:
        return None
    coding: dict[str, Any] = {}
    system = _system_uri(_text(coded, "System")) if coded.find(_L + "System") is not None else default_system
    if system:
        coding["system"] = system
    coding["code"] = code
    display = _text(coded, "Display")
    if display:
        coding["display"] = display
    return coding


def _concept(coded: etree._Element, default_system: str | None = None) -> dict[str, Any]:
    """A Coded whole: its coding, the alternate coding, and as text the original text or display."""
    codings = [c for c in (_coding(coded, default_system),) if c]
    alternate = coded.find(_L + "Alternate")
    if alternate is not None:
        alt = _coding(alternate)
        if alt:
            codings.append(alt)
    concept: dict[str, Any] = {"coding": codings} if codings else {}
    text = _text(coded, "OriginalText") or _text(coded, "Display") or (
        _text(alternate, "Display") if alternate is not None else None)
    if text:
        concept["text"] = text
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


class _Bundle:
    """The entries of one Bundle, with fullUrls derived from the message id (stable on redelivery)."""

    def __init__(self, message: uuid.UUID, lab: str, local_tz: tzinfo | None) -> None:
        self.message = message
        self.lab = lab
        self.local_tz = local_tz
        self.entries: list[dict[str, Any]] = []
        self.patient = self.full_url("Patient")
        self.organization = self.full_url("Organization")
        self._people: dict[str, str] = {}

    def full_url(self, role: str) -> str:
        return f"urn:uuid:{uuid.uuid5(self.message, role)}"

    def add(self, full_url: str, resource: dict[str, Any], at: int | None = None) -> None:
        self.entries.insert(len(self.entries) if at is None else at, _entry(full_url, resource))

    def practitioner(self, person: etree._Element) -> str:
        """A Practitioner for a Person; the same person named twice is one resource."""
        key = etree.tostring(person, method="c14n").decode()
        if key not in self._people:
            url = self.full_url(f"Practitioner/{len(self._people)}")
            resource: dict[str, Any] = {"resourceType": "Practitioner"}
            ident = _text(person, "Id")
            if ident:
                resource["identifier"] = [{"value": ident}]
            name = person.find(_L + "Name")
            if name is not None:
                resource["name"] = [_human_name(name)]
            self.add(url, resource)
            self._people[key] = url
        return self._people[key]


def _human_name(name: etree._Element) -> dict[str, Any]:
    out: dict[str, Any] = {}
    family = _text(name, "Family")
    if family:
        out["family"] = family
    given = [g for g in (_text(name, "Given"), _text(name, "Middle")) if g]
    if given:
        out["given"] = given
    for tag, key in (("Prefix", "prefix"), ("Suffix", "suffix")):
        value = _text(name, tag)
        if value:
            out[key] = [value]
    return out


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
    name = patient.find(_L + "Name")
    if name is not None:
        resource["name"] = [_human_name(name)]
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


def _unit(unit: etree._Element | None) -> dict[str, Any]:
    if unit is None:
        return {}
    code, display = _text(unit, "Code"), _text(unit, "Display")
    fields: dict[str, Any] = {}
    if display or code:
        fields["unit"] = display or code
    system = _system_uri(_text(unit, "System"))
    if system and code:
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
    text_el = rng.find(_L + "Text")
    text = _clean(text_el.text) if text_el is not None else None
    if text:
        # in the lab's own unit when the bounds were converted: say so, or the text misleads
        lab_unit = text_el.get("unit")
        out["text"] = f"{text} ({lab_unit})" if lab_unit else text
    return out or None


def _absent(code: str | None, text: str | None) -> dict[str, Any]:
    absent: dict[str, Any] = {}
    if code:
        absent["coding"] = [{"system": _DATA_ABSENT_REASON, "code": code, "display": _ABSENT[code]}]
    if text:
        absent["text"] = text
    return absent


def _value(test: etree._Element, obs: dict[str, Any], code: dict[str, Any]) -> dict[str, Any]:
    """Set the Observation's value (or why it has none); returns the unit its range shares."""
    quantity = test.find(_L + "Quantity")
    if quantity is not None:
        unit = _unit(quantity.find(_L + "Unit"))
        value: dict[str, Any] = {"value": Decimal(_required(quantity, "Value"))}
        comparator = _text(quantity, "Comparator")
        if comparator:
            value["comparator"] = comparator
        obs["valueQuantity"] = {**value, **unit}
        return unit
    coded = test.findall(_L + "Coded")
    status = _text(test, "Status")
    if _text(test, "Text"):
        obs["valueString"] = _text(test, "Text")
    elif len(coded) == 1:
        obs["valueCodeableConcept"] = _concept(coded[0])
    elif coded:
        obs["component"] = [{"code": code, "valueCodeableConcept": _concept(c)} for c in coded]
    elif test.find(_L + "NotPerformed") is not None:
        obs["dataAbsentReason"] = _absent("not-asked" if status == "N" else "not-performed",
                                          _text(test, "NotPerformed"))
    elif test.find(_L + "NoValue") is not None:
        reason = test.find(_L + "NoValue").get("reason")
        obs["dataAbsentReason"] = {
            "null": _absent(None, 'the laboratory stated there is no value (HL7 "")'),
            "pending": _absent("temp-unknown", "the result is still to come"),
            "withdrawn": _absent(None, "withdrawn by the laboratory"),
        }[reason]
    else:
        # The schema lets a Text be empty, and FHIR has no empty string: that is a value unknown.
        obs["dataAbsentReason"] = {"coding": [{"system": _DATA_ABSENT_REASON, "code": "unknown",
                                               "display": "Unknown"}]}
    return {}


@dataclass(frozen=True)
class _OrderContext:
    bundle: _Bundle
    specimen: str | None
    observed_at: str | None
    issued: str | None


def _observation(test: etree._Element, ctx: _OrderContext) -> dict[str, Any]:
    b = ctx.bundle
    code = _concept(_child(test, "Code"), FSLI_SYSTEM)
    local = test.find(_L + "LocalCode")
    if local is not None:
        local_concept = _concept(local, LOCAL_CODE_SYSTEM + quote(b.lab, safe=""))
        code.setdefault("coding", []).extend(local_concept.get("coding", []))
        if "text" not in code and "text" in local_concept:
            code["text"] = local_concept["text"]
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "status": _OBSERVATION_STATUS[_required(test, "Status")],
        "category": [{"coding": [{"system": _OBSERVATION_CATEGORY, "code": "laboratory", "display": "Laboratory"}]}],
        "code": code,
        "subject": _ref(b.patient),
    }
    observed = _text(test, "ObservedAt") or ctx.observed_at
    if observed:
        obs["effectiveDateTime"] = _fhir_datetime(observed, b.local_tz)
    if ctx.issued:
        obs["issued"] = ctx.issued
    obs["performer"] = [_ref(b.organization)]
    performer = test.find(_L + "Performer")
    if performer is not None:
        obs["performer"].append(_ref(b.practitioner(performer)))
    unit = _value(test, obs, {k: v for k, v in code.items()})
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


def _order(order: etree._Element, n: int, result: etree._Element, b: _Bundle, replaces: str | None) -> None:
    """The order's DiagnosticReport first, then what it refers to that is new to the Bundle."""
    prefix = f"Order/{n}"
    first = len(b.entries)
    specimen = order.find(_L + "Specimen")
    reported = _text(order, "ReportedAt")
    ctx = _OrderContext(
        bundle=b,
        specimen=b.full_url(f"{prefix}/Specimen") if specimen is not None else None,
        observed_at=_text(order, "ObservedAt"),
        issued=_zoned(reported, b.local_tz) if reported else None,
    )
    observations = [(b.full_url(f"{prefix}/Observation/{i}"), _observation(test, ctx))
                    for i, test in enumerate(order.findall(_L + "Test"))]

    report: dict[str, Any] = {"resourceType": "DiagnosticReport"}
    replaced = replaces or _text(order, "Replaces")
    if replaced:
        report["extension"] = [{"url": REPLACES_EXTENSION, "valueReference": {
            "type": "DiagnosticReport", "identifier": {"system": MESSAGE_ID_SYSTEM, "value": replaced}}}]
    identifiers: list[dict[str, Any]] = [
        {"system": ORDER_ID_SYSTEM, "value": _required(order, "OrderId")},
        {"system": RESULT_ID_SYSTEM, "value": _required(result, "ResultId")},
        {"system": MESSAGE_ID_SYSTEM, "value": str(b.message)},
    ]
    filler = _text(order, "FillerNumber")
    if filler:
        # FHIR maps the filler order number (OBR-3) to DiagnosticReport.identifier.
        identifiers.append({"type": {"coding": [{"system": _V2_0203, "code": "FILL", "display": "Filler Identifier"}]},
                            "value": filler})
    report["identifier"] = identifiers
    service_request = _service_request(order, prefix, b)
    if service_request:
        report["basedOn"] = [_ref(service_request)]
    report["status"] = _REPORT_STATUS[_required(order, "Status")]
    report["category"] = [{"coding": [{"system": _V2_0074, "code": "LAB", "display": "Laboratory"}]}]
    service = order.find(_L + "Service")
    report["code"] = (_concept(service) if service is not None else None) or {
        "coding": [{"system": "http://loinc.org", "code": "11502-2", "display": "Laboratory report"}],
        "text": "Laboratory report"}
    report["subject"] = _ref(b.patient)
    if ctx.observed_at:
        report["effectiveDateTime"] = _fhir_datetime(ctx.observed_at, b.local_tz)
    if ctx.issued:
        report["issued"] = ctx.issued
    report["performer"] = [_ref(b.organization)]
    interpreter = order.find(_L + "Performer")
    if interpreter is not None:
        report["resultsInterpreter"] = [_ref(b.practitioner(interpreter))]
    if ctx.specimen:
        report["specimen"] = [_ref(ctx.specimen)]
    report["result"] = [_ref(url) for url, _ in observations]
    conclusion = _conclusion(order, result)
    if conclusion:
        report["conclusion"] = conclusion
    b.add(b.full_url(f"{prefix}/DiagnosticReport"), report, at=first)
    for url, obs in observations:
        b.add(url, obs)
    if specimen is not None and ctx.specimen:
        b.add(ctx.specimen, _specimen(specimen, b))


def _conclusion(order: etree._Element, result: etree._Element) -> str | None:
    """The order's notes, then the patient's (marked): R4's DiagnosticReport has no note element."""
    lines = [n for n in (_clean(el.text) for el in order.findall(_L + "Note")) if n]
    patient = _child(result, "Patient")
    lines += [f"О пациенте: {n}" for n in (_clean(el.text) for el in patient.findall(_L + "Note")) if n]
    return "\n".join(lines) or None


def _service_request(order: etree._Element, prefix: str, b: _Bundle) -> str | None:
    """The order as the MIS placed it: its placer number and requester, when the lab sent them."""
    placer, requester = _text(order, "PlacerNumber"), order.find(_L + "Requester")
    if placer is None and requester is None:
        return None
    resource: dict[str, Any] = {"resourceType": "ServiceRequest", "status": "unknown", "intent": "order"}
    if placer:
        ident: dict[str, Any] = {
            "type": {"coding": [{"system": _V2_0203, "code": "PLAC", "display": "Placer Identifier"}]},
            "value": placer}
        assigner = order.find(_L + "PlacerNumber").get("assigner")
        if assigner:
            ident["assigner"] = {"display": assigner}
        resource["identifier"] = [ident]
    service = order.find(_L + "Service")
    if service is not None and _concept(service):
        resource["code"] = _concept(service)
    resource["subject"] = _ref(b.patient)
    if requester is not None:
        resource["requester"] = _ref(b.practitioner(requester))
    url = b.full_url(f"{prefix}/ServiceRequest")
    b.add(url, resource)
    return url


def _specimen(specimen: etree._Element, b: _Bundle) -> dict[str, Any]:
    resource: dict[str, Any] = {"resourceType": "Specimen", "subject": _ref(b.patient)}
    kind = specimen.find(_L + "Type")
    if kind is not None and _concept(kind):
        resource["type"] = _concept(kind)
    collected = _text(specimen, "CollectedAt")
    if collected:
        resource["collection"] = {"collectedDateTime": _fhir_datetime(collected, b.local_tz)}
    return resource


#: The lab result's warning codes → FHIR IssueType (required binding).
_ISSUE_TYPES = {"STATUS_LOWERED": "business-rule", "UNIT_IGNORED": "value", "ORDER_ID_REPEATED": "duplicate"}


def _outcome(warnings: list[etree._Element]) -> dict[str, Any]:
    issues = []
    for w in warnings:
        code = _required(w, "Code")
        issues.append({"severity": "warning",
                       "code": _ISSUE_TYPES.get(code, "structure" if code.startswith("SEGMENT_") else "processing"),
                       "details": {"coding": [{"system": WARNING_SYSTEM, "code": code}], "text": _required(w, "Text")},
                       "location": [_required(w, "Where")]})
    return {"resourceType": "OperationOutcome", "issue": issues}


def to_bundle(result: etree._Element, *, message_id: str, replaces: str | None = None,
              local_tz: tzinfo | None = None) -> dict[str, Any]:
    """The FHIR R4 Bundle of one schema-valid ``LabResult``.

    ``message_id`` (a UUID, as every gateway message id is) names the Bundle, and every fullUrl
    is a UUID derived from it: a redelivered message yields the same resource ids, so a
    recipient that keeps them sees the same resources again, not copies. ``replaces`` is the
    message id of the result a single-order result corrects; by default each order's own
    Replaces. ``local_tz`` is the laboratory's zone, used only for times the payload gives
    without an offset (see the module docstring). Decimals are ``Decimal`` so their precision
    survives: serialise with :func:`to_json_bytes`, check with
    ``validation.validate_bundle(..., mode=STRICT)``.
    """
    if result.tag != _L + "LabResult":
        raise ValueError(f"not a lab result: {result.tag}")
    message = uuid.UUID(message_id)
    b = _Bundle(message, _required(_child(result, "Laboratory"), "Mnemonic"), local_tz)
    orders = result.findall(_L + "Order")
    for n, order in enumerate(orders):
        _order(order, n, result, b, replaces if len(orders) == 1 else None)
    b.add(b.patient, _patient(_child(result, "Patient")))
    b.add(b.organization, _organization(_child(result, "Laboratory")))
    warnings = result.findall(_L + "Warning")
    if warnings:
        b.add(b.full_url("OperationOutcome"), _outcome(warnings))
    return {
        "resourceType": "Bundle",
        "id": str(message),
        "identifier": {"system": URI_SYSTEM, "value": f"urn:uuid:{message}"},
        "type": "collection",
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "entry": b.entries,
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
