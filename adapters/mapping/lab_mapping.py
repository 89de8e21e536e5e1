"""A laboratory's mapping file (``config/mappings/<lab>.yaml``), as a typed model.

A lab joins by writing this file, not code, so every mistake in it must be reported
like any configuration mistake (file, key, rule) by ``check-config``, and the
engine must never meet a half-valid mapping at run time.

Field locations are HL7 v2 paths for labs that send HL7 (``PID-3``, ``OBR-7``,
``PID-3.1``, ``PID-3[2].4.1``: segment, field, optional repetition in brackets,
component, sub-component), and the first of several alternatives that has a
value wins (``[ORC-2, OBR-2]``). An identifier can be picked out of a repeating
field by a component's value (``{path: PID-3, where: {component: 5, equals: SNILS}}``).
"""
from __future__ import annotations

import ast
import re
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gateway.config import MNEMONIC, ConfigProblem

FSLI_OID = "1.2.643.5.1.13.13.11.1080"
#: HL7 table 0078 (abnormal flags), v2.5.1, with POS/NEG/IND/DET/ND of later versions.
ABNORMAL_FLAGS = ("L", "H", "LL", "HH", "<", ">", "N", "A", "AA", "U", "D", "B", "W", "S", "R", "I", "MS", "VS",
                  "NEG", "POS", "IND", "DET", "ND", "E", "NR", "QCF", "TOX")
_PATH = re.compile(r"^(?P<seg>[A-Z][A-Z0-9]{2})-(?P<field>[1-9][0-9]*)(\[(?P<rep>[1-9][0-9]*)\])?"
                   r"(\.(?P<comp>[1-9][0-9]*))?(\.(?P<sub>[1-9][0-9]*))?$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Hl7Path(_Strict):
    """One place in an HL7 message; ``where`` picks the repetition whose component equals a value."""

    path: str
    where: dict[str, str | int] | None = None

    @field_validator("path")
    @classmethod
    def _syntax(cls, value: str) -> str:
        if not _PATH.match(value):
            raise ValueError(f"not an HL7 path like PID-3, OBR-7, PID-3.1 or PID-3[2].4.1 (got {value!r})")
        return value

    @field_validator("where")
    @classmethod
    def _where(cls, value: dict[str, str | int] | None) -> dict[str, str | int] | None:
        if value is not None and (set(value) != {"component", "equals"} or not str(value["component"]).isdigit()):
            raise ValueError("where takes {component: N, equals: VALUE}")
        return value

    @property
    def parts(self) -> tuple[str, int, int | None, int, int]:
        m = _PATH.match(self.path)
        assert m is not None
        return (m["seg"], int(m["field"]), int(m["rep"]) if m["rep"] else None, int(m["comp"] or 1),
                int(m["sub"] or 1))


def _paths(value: Any) -> list[Any]:
    """A location may be written as one path, a list of alternatives, or {path, where} mappings."""
    items = value if isinstance(value, list) else [value]
    return [{"path": v} if isinstance(v, str) else v for v in items]


class Location(_Strict):
    """Alternatives, first with a value wins."""

    anyOf: list[Hl7Path] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if isinstance(value, dict) and "anyOf" in value:
            return value
        return {"anyOf": _paths(value)}


class PatientFields(_Strict):
    #: The patient's name (XPN: family^given^middle): carried whole into the result, never logged.
    name: Location | None = None
    snils: Location | None = None
    enp: Location | None = None
    local_id: Location | None = None
    local_id_assigner: Location | None = None
    birth_date: Location | None = None
    sex: Location | None = None


class OrderFields(_Strict):
    placer: Location | None = None
    filler: Location | None = None
    service: Location | None = None
    #: The ordering provider (XCN: OBR-16, ORC-12), a name whole.
    requester: Location | None = None


class Fields(_Strict):
    patient: PatientFields = PatientFields()
    order: OrderFields = OrderFields()
    specimen_type: Location | None = None
    collected_at: Location | None = None
    #: Who is responsible for the order's results (OBR-32 NDL, or an XCN): a name whole.
    performer: Location | None = None
    observed_at: Location | None = None
    reported_at: Location | None = None
    #: Who is responsible for one test's result (OBX-16, XCN).
    test_performer: Location | None = None


class Unit(_Strict):
    code: str = Field(min_length=1)
    display: str | None = None
    #: The unit's code system (``UCUM`` or a URI), when the code is one: FHIR carries the code only then.
    system: str | None = None


def _formula(text: str) -> ast.Expression:
    """An arithmetic expression in x, parsed once; anything else (names, calls) is refused."""
    tree = ast.parse(text, mode="eval")
    allowed = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Constant, ast.Name, ast.Load, ast.Add, ast.Sub,
               ast.Mult, ast.Div, ast.Pow, ast.USub, ast.UAdd)
    for node in ast.walk(tree):
        if not isinstance(node, allowed) or (isinstance(node, ast.Name) and node.id != "x") or (
                isinstance(node, ast.Constant) and not isinstance(node.value, (int, float))):
            raise ValueError(f"a formula uses only x, numbers and + - * / ** (got {text!r})")
    return tree


class Conversion(_Strict):
    """From a lab's unit to the target: a factor (value × factor) or a formula in x."""

    factor: Decimal | None = None
    formula: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if isinstance(value, (int, float, Decimal)):
            return {"factor": value}
        if isinstance(value, str):
            return {"formula": value}
        return value

    @model_validator(mode="after")
    def _one(self) -> Conversion:
        if (self.factor is None) == (self.formula is None):
            raise ValueError("give a factor or a formula")
        if self.formula is not None:
            _formula(self.formula)
        return self

    def apply(self, value: Decimal) -> Decimal:
        if self.factor is not None:
            return value * self.factor
        result = eval(compile(_formula(self.formula or "x"), "<formula>", "eval"),
                      {"__builtins__": {}}, {"x": float(value)})
        return Decimal(str(round(result, 6)))


class TestMapping(_Strict):
    """One of the lab's tests: how to recognise it, its ФСЛИ code, the unit the MIS expects and how to get there.

    Recognised by ``code`` (default: the entry's key) as OBX-3.1 — or OBX-3.2 when the lab
    sends no code — or as the alternate code OBX-3.4; ``system``, ``text`` and ``service``
    narrow it down for a lab that gives several tests one code: the coding system (OBX-3.3
    or 3.6), the test's text (OBX-3.2 or 3.5) and the order's service (OBR-4.1 or OBR-4.2).
    """

    code: str | None = Field(None, min_length=1)
    system: str | None = Field(None, min_length=1)
    text: str | None = Field(None, min_length=1)
    service: str | None = Field(None, min_length=1)
    fsli: str = Field(pattern=r"^[0-9]{1,10}$")
    display: str = Field(min_length=1)
    value: Literal["quantity", "text", "coded", "auto"] = "auto"
    unit: Unit | None = None
    #: Lab unit code → conversion to ``unit``; the target unit itself needs no entry.
    convert: dict[str, Conversion] = {}
    #: Lab unit codes that mean the target unit (spelling variants: mg/dl, mg/dL).
    same_unit: list[str] = []


class Recipient(_Strict):
    fixed: str | None = Field(None, pattern=MNEMONIC)
    from_field: Location | None = None
    map: dict[str, str] = {}

    @model_validator(mode="after")
    def _one(self) -> Recipient:
        if (self.fixed is None) == (self.from_field is None):
            raise ValueError("give fixed: MNEMONIC, or from_field with a map of values to participants")
        return self


class Hd(_Strict):
    """An HL7 hierarchic designator (MSH-3, MSH-4): the parts given must all match; a part left
    out matches anything. Written as a mapping or as the field itself, ``LAB^1234^CLIA``."""

    namespace_id: str | None = None
    universal_id: str | None = None
    universal_id_type: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if isinstance(value, str):
            parts = [*value.split("^"), "", "", ""][:3]
            return {k: v or None for k, v in zip(("namespace_id", "universal_id", "universal_id_type"), parts)}
        return value

    @model_validator(mode="after")
    def _something(self) -> Hd:
        parts = (self.namespace_id, self.universal_id, self.universal_id_type)
        if not any(p and p.strip() and p != '""' for p in parts):
            raise ValueError('an HD needs a namespace id or a universal id; an empty or "" one matches no message')
        if self.universal_id_type and not self.universal_id:
            raise ValueError("universal_id_type without universal_id")
        return self

    def parts(self) -> tuple[str | None, str | None, str | None]:
        return self.namespace_id, self.universal_id, self.universal_id_type

    def matches(self, sent: tuple[str, str, str]) -> int:
        """How many of its parts equal ``sent`` (namespace, universal id, type); 0 if any given part differs."""
        given = [(want, got) for want, got in zip(self.parts(), sent) if want is not None]
        return len(given) if all(want == got for want, got in given) else 0


class Identify(_Strict):
    """How an HL7 message is known to come from this lab: MSH-4 and MSH-3, and the peers it connects from.

    A lab that leaves MSH-4 empty is known by MSH-3 alone (``sending_facility`` left out);
    its messages must then come with an empty MSH-4, so a facility that does fill it in is
    never taken for it.
    """

    sending_facility: list[Hd] = []
    sending_application: list[Hd] = []
    allowed_peers: list[str] = ["127.0.0.1"]

    @model_validator(mode="after")
    def _something(self) -> Identify:
        if not self.sending_facility and not self.sending_application:
            raise ValueError("give sending_facility (MSH-4), sending_application (MSH-3), or both")
        return self

    def score(self, facility: tuple[str, str, str], application: tuple[str, str, str]) -> int:
        """How specifically this lab matches the message's MSH-4 and MSH-3; 0: not at all."""
        if self.sending_facility:
            fac = max(hd.matches(facility) for hd in self.sending_facility)
        else:
            fac = 1 if not any(facility) else 0
        if not fac:
            return 0
        if not self.sending_application:
            return fac
        app = max(hd.matches(application) for hd in self.sending_application)
        return fac + app if app else 0


class LabMapping(_Strict):
    lab: str = Field(pattern=MNEMONIC)
    format: Literal["hl7v2"] = "hl7v2"
    identify: Identify
    charset: str = "utf-8"
    #: The lab's time zone (IANA name), for times it sends without an offset; FHIR needs one.
    timezone: str | None = None
    decimal_comma: bool = False
    frmo_oid: str | None = Field(None, pattern=r"^[0-2](\.(0|[1-9][0-9]*))+$")
    recipient: Recipient
    fields: Fields = Fields()
    #: The lab's tests by name; each is found by its code (the name, unless ``code`` says otherwise).
    tests: dict[str, TestMapping] = Field(min_length=1)
    #: Lab abnormal flags → HL7 table 0078 values (the lab's spelling of a flag, e.g. "+" → A);
    #: flags not listed pass unchanged.
    flags: dict[str, str] = {}
    #: Values by which the lab says a test was not done, e.g. "....." or "## TEST CANCELLED ##".
    #: Not for values with a clinical meaning, and never empty or HL7's null "".
    not_performed: list[str] = []
    #: Z-segments the lab sends that carry nothing for the result (``[ZPS]``): passed over by name.
    ignore_segments: list[str] = []
    #: A segment that fits nowhere in ORU^R01 is a gap (the message is refused with AE); with
    #: ``warning`` the message goes through and the result carries a Warning naming it.
    unplaced_segments: Literal["gap", "warning"] = "gap"
    #: The status of a test whose OBX-11 and whose order's OBR-25 are both empty (an analyser
    #: that sends no statuses); without it such a test is a gap. An HL7 table 0085 code.
    status_when_missing: str | None = Field(None, pattern=r"^[CDFINOPRSUWXAB]$")

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str | None) -> str | None:
        if value is not None:
            from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"not an IANA time zone like Europe/Moscow (got {value!r})") from None
        return value

    @field_validator("flags")
    @classmethod
    def _flags(cls, value: dict[str, str]) -> dict[str, str]:
        for lab_flag, flag in value.items():
            if not lab_flag.strip() or lab_flag == '""':
                raise ValueError('an empty or "" flag is HL7\'s "no flag": it cannot be mapped to one')
            if flag not in ABNORMAL_FLAGS:
                raise ValueError(f"{lab_flag!r} → {flag!r}: not an HL7 table 0078 flag ({', '.join(ABNORMAL_FLAGS)})")
        return value

    @field_validator("not_performed")
    @classmethod
    def _not_performed(cls, value: list[str]) -> list[str]:
        if any(not v.strip() or v.strip() == '""' for v in value):
            raise ValueError('an empty value or HL7\'s null "" says no value, not "not performed"; '
                             "it cannot be listed here")
        return value

    @field_validator("ignore_segments")
    @classmethod
    def _ignore(cls, value: list[str]) -> list[str]:
        for name in value:
            if not re.fullmatch(r"Z[A-Z0-9]{2}", name):
                raise ValueError(f"only Z-segments can be ignored (got {name!r}): every standard segment is read")
        return value

    @field_validator("tests")
    @classmethod
    def _distinct_tests(cls, value: dict[str, TestMapping]) -> dict[str, TestMapping]:
        seen: dict[tuple[str | None, ...], str] = {}
        for key, test in value.items():
            condition = (test.code or key, test.system, test.text, test.service)
            if condition in seen:
                raise ValueError(f"tests {seen[condition]!r} and {key!r} are recognised by the same code, system, "
                                 "text and service: give one a system, text or service of its own")
            seen[condition] = key
        return value

    def test_for(self, primary: tuple[str, str, str], alternate: tuple[str, str, str],
                 service: tuple[str, str]) -> list[tuple[str, TestMapping]]:
        """The entries that fit the test best: its coding (code, text, system), its alternate
        coding, and the order's service (code, text). One entry, or none, or — when equally
        specific entries fit — all of them, for the caller to report."""
        best: list[tuple[str, TestMapping]] = []
        best_score = 0
        for key, test in self.tests.items():
            score = max(_fit(key, test, primary, service), _fit(key, test, alternate, service))
            if score and score > best_score:
                best, best_score = [(key, test)], score
            elif score and score == best_score:
                best.append((key, test))
        return best


def _fit(key: str, test: TestMapping, coding: tuple[str, str, str], service: tuple[str, str]) -> int:
    """1 + the number of narrowing conditions met, when the code matches and none fails; else 0."""
    code, text, system = coding
    if (test.code or key) != (code or text) or not (code or text):
        return 0
    checks = [(test.system, (system,)), (test.text, (text,)), (test.service, service)]
    if any(want is not None and want not in got for want, got in checks):
        return 0
    return 1 + sum(want is not None for want, _ in checks)


def load_mapping(path: Path, problems: list[ConfigProblem]) -> LabMapping | None:
    """Read one mapping file; its mistakes go into ``problems`` as (file, key, rule)."""
    from gateway.config import _key, _rule  # the same wording as every other configuration file

    shown = str(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        problems.append(ConfigProblem(shown, "(file)", f"cannot read: {exc}"))
        return None
    try:
        mapping = LabMapping.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors():
            problems.append(ConfigProblem(shown, _key(err["loc"]), _rule(err)))
        return None
    if mapping.lab != path.stem:
        problems.append(ConfigProblem(shown, "lab", f"must be the file's name {path.stem!r} (got {mapping.lab!r})"))
        return None
    return mapping


def load_mappings(directory: Path, participants: set[str], problems: list[ConfigProblem]) -> dict[str, LabMapping]:
    """Every ``mappings/*.yaml``, cross-checked against the participants."""
    found: dict[str, LabMapping] = {}
    for path in sorted((directory / "mappings").glob("*.yaml")):
        mapping = load_mapping(path, problems)
        if mapping is None:
            continue
        if mapping.lab not in participants:
            problems.append(ConfigProblem(str(path), "lab", f"unknown participant {mapping.lab!r}"))
        for where, target in [("recipient.fixed", mapping.recipient.fixed),
                              *((f"recipient.map.{k}", v) for k, v in mapping.recipient.map.items())]:
            if target is not None and target not in participants:
                problems.append(ConfigProblem(str(path), where, f"unknown participant {target!r}"))
        found[mapping.lab] = mapping
    _distinct_labs(found, directory, problems)
    return found


def _distinct_labs(labs: dict[str, LabMapping], directory: Path, problems: list[ConfigProblem]) -> None:
    """Two labs identified by the same MSH-4 (and MSH-3) would make every message of either ambiguous."""
    seen: dict[tuple[Any, ...], str] = {}
    for lab, mapping in labs.items():
        ident = mapping.identify
        apps = [hd.parts() for hd in ident.sending_application] or [None]
        for facility in ident.sending_facility:
            for app in apps:
                key = (facility.parts(), app)
                if key in seen:
                    problems.append(ConfigProblem(str(directory / "mappings" / f"{lab}.yaml"), "identify",
                                                  f"identifies its messages exactly as {seen[key]!r} does "
                                                  f"(MSH-4 {facility.parts()}); give one a universal id or an "
                                                  "application of its own"))
                seen.setdefault(key, lab)
