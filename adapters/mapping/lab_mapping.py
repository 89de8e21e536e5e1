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

    anyOf: list[Hl7Path] = Field(min_length=1)  # noqa: N815 (reads like the YAML it comes from)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if isinstance(value, dict) and "anyOf" in value:
            return value
        return {"anyOf": _paths(value)}


class PatientFields(_Strict):
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


class Fields(_Strict):
    patient: PatientFields = PatientFields()
    order: OrderFields = OrderFields()
    specimen_type: Location | None = None
    collected_at: Location | None = None
    performer: Location | None = None
    observed_at: Location | None = None
    reported_at: Location | None = None


class Unit(_Strict):
    code: str = Field(min_length=1)
    display: str | None = None


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
        result = eval(compile(_formula(self.formula or "x"), "<formula>", "eval"),  # noqa: S307 (checked AST)
                      {"__builtins__": {}}, {"x": float(value)})
        return Decimal(str(round(result, 6)))


class TestMapping(_Strict):
    """One of the lab's tests: its ФСЛИ code, the unit the MIS expects and how to get there."""

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


class Identify(_Strict):
    """How an HL7 message is known to come from this lab: MSH-4 (and MSH-3) values, and peers."""

    sending_facility: list[str] = Field(min_length=1)
    sending_application: list[str] = []
    allowed_peers: list[str] = ["127.0.0.1"]


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
    #: Lab test code (OBX-3.1, or OBX-3.2 text when the code is empty) → mapping.
    tests: dict[str, TestMapping] = Field(min_length=1)
    #: Lab abnormal flags → HL7 table 0078 values; flags not listed pass unchanged.
    flags: dict[str, str] = {}
    #: Values that mean "no result" (cancelled, not measured), e.g. "....." or "## TEST CANCELLED ##".
    not_performed: list[str] = []

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

    def test_for(self, code: str, text: str) -> tuple[str, TestMapping] | None:
        for key in (code, text):
            if key and key in self.tests:
                return key, self.tests[key]
        return None


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
    return found
