"""Values out of an HL7 v2 message, whole: composites with all their parts, nulls told from empties.

python-hl7 nests a field as repetitions → components → sub-components only as deep as the
separators in it go, so the same field is a string in one message and a list in the next;
``text_of`` hides that. On top of it, the readers here keep what a first-component read
would cut off: a name's given and middle names, a coded value's text, system and alternate
coding, a number's assigning authority.

HL7's explicit null ``""`` ("the sender states there is no value", v2.5 §2.5.3) is not an
empty field ("nothing was sent"): ``is_null`` tells them apart, and a component that is
``""`` reads as empty wherever a value is built, so the two quote marks never leak into a
result as text.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import hl7

NULL = '""'
_HEX = re.compile(r"X(?:[0-9A-Fa-f]{2})+")
_DTM = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\.\d+)?([+-]\d{4})?$")


def field_of(segment: Any, number: int) -> Any:
    return segment[number] if segment is not None and len(segment) > number else None


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


def components(fld: Any, rep: int = 1) -> int:
    """How many components repetition ``rep`` has (1 for a plain value)."""
    if fld is None or isinstance(fld, str):
        return 1
    items = list(fld)
    if not items or all(isinstance(i, str) for i in items) or rep > len(items):
        return 1
    repetition = items[rep - 1]
    return 1 if isinstance(repetition, str) else len(repetition)


def subcomponents(fld: Any, rep: int = 1, comp: int = 1) -> int:
    if fld is None or isinstance(fld, str):
        return 1
    items = list(fld)
    if not items or all(isinstance(i, str) for i in items) or rep > len(items):
        return 1
    repetition = items[rep - 1]
    if isinstance(repetition, str) or comp > len(repetition):
        return 1
    component = repetition[comp - 1]
    return 1 if isinstance(component, str) else len(component)


def is_empty(fld: Any) -> bool:
    return all(leaf == "" for leaf in _leaves(fld))


def is_null(fld: Any) -> bool:
    """The whole field is HL7's null: ``""``, or composites of nothing but ``""`` and empties (``^""``)."""
    leaves = list(_leaves(fld))
    return any(leaf == NULL for leaf in leaves) and all(leaf in ("", NULL) for leaf in leaves)


def _leaves(fld: Any) -> list[str]:
    if fld is None:
        return [""]
    if isinstance(fld, str):
        return [fld.strip()]
    out: list[str] = []
    for item in fld:
        out += _leaves(item)
    return out or [""]



@dataclass(frozen=True)
class Coded:
    """A CE/CWE whole. Components that are ``""`` read as empty."""

    code: str = ""
    display: str = ""
    system: str = ""
    alt_code: str = ""
    alt_display: str = ""
    alt_system: str = ""
    original_text: str = ""

    def __bool__(self) -> bool:
        return any((self.code, self.display, self.alt_code, self.alt_display, self.original_text))


@dataclass(frozen=True)
class PersonName:
    family: str = ""
    given: str = ""
    middle: str = ""
    prefix: str = ""
    suffix: str = ""
    degree: str = ""

    def __bool__(self) -> bool:
        return any((self.family, self.given, self.middle))


@dataclass(frozen=True)
class Person:
    id: str = ""
    name: PersonName = field(default_factory=PersonName)

    def __bool__(self) -> bool:
        return bool(self.id or self.name)


class Values:
    """Readers bound to one message, for its escape sequences."""

    def __init__(self, message: hl7.Message) -> None:
        self.message = message

    def unescape(self, value: str) -> str:
        """HL7 escapes resolved (v2.5 §2.7); a line break (``\\.br\\``, ``\\X0D\\``) becomes a newline.

        Not python-hl7's ``unescape``: it drops a sequence it does not know and logs the whole
        field, which may be a patient's name (``O\\Brien``). An unknown sequence is kept here
        as the lab wrote it, and nothing is logged.
        """
        esc = self.message.esc
        if esc not in value:
            return value
        seps = self.message.separators  # segment, field, repetition, component, sub-component
        known = {"F": seps[1], "R": seps[2], "S": seps[3], "T": seps[4], "E": esc, ".br": "\n", ".sp": "\n",
                 "H": "", "N": ""}

        def one(match: re.Match[str]) -> str:
            code = match.group(1)
            if code in known:
                return known[code]
            if _HEX.fullmatch(code):
                return bytes.fromhex(code[1:]).decode("latin-1")
            return match.group(0)

        pattern = re.escape(esc) + "([^" + re.escape(esc) + "]*)" + re.escape(esc)
        return re.sub(pattern, one, value).replace("\r\n", "\n").replace("\r", "\n")

    def text(self, fld: Any, rep: int = 1, comp: int = 1, sub: int = 1) -> str:
        """One part, unescaped and stripped; ``""`` reads as empty."""
        value = text_of(fld, rep, comp, sub).strip()
        return "" if value == NULL else self.unescape(value).strip()

    def whole(self, fld: Any, rep: int = 1) -> str:
        """A repetition as the lab wrote it, components joined by ``^`` (a range ``^^10.0``, a unit ``10^3/ul``)."""
        parts = [self.text(fld, rep, c) for c in range(1, components(fld, rep) + 1)]
        return "^".join(parts).rstrip("^")

    def coded(self, fld: Any, rep: int = 1) -> Coded:
        sent = components(fld, rep)
        c = [self.text(fld, rep, n) if n <= sent else "" for n in range(1, 10)]
        return Coded(code=c[0], display=c[1], system=c[2], alt_code=c[3], alt_display=c[4], alt_system=c[5],
                     original_text=c[8])

    def name(self, fld: Any, rep: int = 1) -> PersonName:
        """XPN: family (its first sub-component: the surname), given, further given names (отчество)."""
        return PersonName(family=self.text(fld, rep, 1, 1), given=self.text(fld, rep, 2),
                          middle=self.text(fld, rep, 3), suffix=self.text(fld, rep, 4),
                          prefix=self.text(fld, rep, 5), degree=self.text(fld, rep, 6))

    def person(self, fld: Any, rep: int = 1) -> Person:
        """XCN (id^family^given^middle^suffix^prefix^degree), or CNN inside the first component of
        an NDL (OBR-32…35: id&family&given&…), told apart by the sub-components of component 1."""
        if subcomponents(fld, rep, 1) > 1:
            parts = [self.text(fld, rep, 1, s) for s in range(1, 8)]
        else:
            parts = [self.text(fld, rep, c) for c in range(1, 8)]  # component 2 (FN): its surname
        return Person(id=parts[0], name=PersonName(family=parts[1], given=parts[2], middle=parts[3],
                                                    suffix=parts[4], prefix=parts[5], degree=parts[6]))

    def identifier(self, fld: Any) -> tuple[str, str]:
        """EI: the number and its assigning authority (namespace id, else universal id)."""
        return self.text(fld, 1, 1), self.text(fld, 1, 2) or self.text(fld, 1, 3)


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
