"""Region profiles and insurer bindings (``config/oms/``): which edition of the register an insurer
takes for a period, in which region's layout, and where the region's own elements get their values.

Why configuration and not code: every region renders the federal tables with its own
elements and schemas, and the edition changes by reporting period (L-file 3.2 from November
2019, H-file 3.2 from 2022, 5.0 from January 2025, 5.1 from July 2025 —
../shared/research/oms-format.md §2, [MF] Q015 002F.00.0030/0050/0014/0016, [Z75]). A profile
names its region's schemas per file version; the writer takes element order from them
(``gateway.oms.layout``) and the profile says where each regional element's value comes from.
An insurer binding picks a profile, the receiver letter of the file name, values the
operator must give (a region's codes no record carries), and optionally its own editions.

A period whose edition Zdravlink does not write (anything but 3.1 and 3.2) is a clear
error naming the edition and where it starts, never an act in the wrong edition.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gateway.config import ConfigProblem, GatewayConfig, _key, _rule
from gateway.oms.layout import Layout, LayoutError, load_layout
from gateway.schemas import schemas_dir
from zdravlink.errors import ConfigurationError

#: The file versions the writer knows how to fill: 3.1, and 3.2 (PACIENT/ENP, USL/MR_USL_N;
#: L-file DOCDATE, DOCORG). No public schema of 4.x or 5.x was found.
WRITTEN = ("3.1", "3.2")
PERIOD = r"^[0-9]{4}-(0[1-9]|1[0-2])$"

#: Where a regional element's value comes from. ``binding``: the insurer binding's ``values``.
Source = Literal["department", "specialty", "case_sum", "service_tariff", "residence_okato", "stay_okato",
                 "binding"]

#: Record fields behind the elements a record may leave out: a layout that requires one of these
#: elements makes the field required for that insurer at intake.
_ELEMENT_FIELDS = {
    "ZL_LIST/ZAP/Z_SL/SL/LPU_1": "Service/Department",
    "ZL_LIST/ZAP/Z_SL/SL/USL/LPU_1": "Service/Department",
    "PERS_LIST/PERS/FAM": "Patient/Person/FamilyName",
    "PERS_LIST/PERS/IM": "Patient/Person/GivenName",
    "PERS_LIST/PERS/OT": "Patient/Person/Patronymic",
    "PERS_LIST/PERS/MR": "Patient/Person/BirthPlace",
    "PERS_LIST/PERS/DOCTYPE": "Patient/Person/IdentityDocument",
    "PERS_LIST/PERS/DOCNUM": "Patient/Person/IdentityDocument",
    "PERS_LIST/PERS/SNILS": "Patient/Person/SNILS",
}
_SOURCE_FIELDS = {"department": "Service/Department", "residence_okato": "Patient/Person/ResidenceOKATO",
                  "stay_okato": "Patient/Person/StayOKATO"}


class EditionError(ConfigurationError, ValueError):
    """No register can be written for this insurer and period; the message says what is missing."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Edition(_Strict):
    """From reporting period ``from`` on, the H-file is version ``h`` and the L-file version ``l``."""

    starts: str = Field(alias="from", pattern=PERIOD)
    h: str = Field(pattern=r"^[0-9]+\.[0-9]+$")
    l: str = Field(pattern=r"^[0-9]+\.[0-9]+$")  # noqa: E741 (the format's own letter)


def _ordered(editions: list[Edition]) -> list[Edition]:
    starts = [e.starts for e in editions]
    if starts != sorted(starts) or len(set(starts)) != len(starts):
        raise ValueError("editions must be in order of 'from', each period once")
    return editions


class Schemas(_Strict):
    """Per file version, the region's XSD, relative to schemas_xsd/."""

    h: dict[str, str] = {}
    l: dict[str, str] = {}  # noqa: E741


class RegionProfile(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{1,49}$")
    title: str = Field(min_length=1)
    editions: list[Edition] = Field(min_length=1)
    schemas: Schemas
    #: Element path (from the file's root) → where its value comes from.
    regional: dict[str, Source] = {}
    #: PERS/SNILS as ``XXX-XXX-XXX YY`` (federal, with separators) or 11 bare digits (ProMed's pattern).
    snils: Literal["separated", "digits"] = "separated"

    _editions = field_validator("editions")(classmethod(lambda cls, v: _ordered(v)))


class InsurerBinding(_Strict):
    profile: str
    #: The receiver letter of the file name: S an insurer, T a ТФОМС; its code is the participant's oms_code.
    receiver: Literal["S", "T"] = "S"
    #: This insurer's own editions, replacing the profile's (an agreement, or an emulator).
    editions: list[Edition] | None = Field(None, min_length=1)
    #: Values of the profile's ``binding`` elements, by element path.
    values: dict[str, str] = {}
    #: Also write each act's archive and signature here, for an insurer that collects files.
    drop_directory: str | None = None

    _editions = field_validator("editions")(classmethod(lambda cls, v: v if v is None else _ordered(v)))


class _ProfileFile(_Strict):
    profile: RegionProfile


class _InsurersFile(_Strict):
    insurers: dict[str, InsurerBinding]


@dataclass(frozen=True)
class ResolvedEdition:
    """What to write for one insurer and period: versions, layouts, and the profile's rules."""

    profile: RegionProfile
    binding: InsurerBinding
    period: str
    h_version: str
    l_version: str
    h_layout: Layout
    l_layout: Layout

    def required_fields(self) -> set[str]:
        """Record fields this insurer's register cannot do without (beyond the record schema's own)."""
        sources = {path: _SOURCE_FIELDS[src] for path, src in self.profile.regional.items() if src in _SOURCE_FIELDS}
        required = set(self.h_layout.required_paths()) | set(self.l_layout.required_paths())
        return {field for path, field in {**_ELEMENT_FIELDS, **sources}.items() if path in required}


@dataclass(frozen=True)
class OmsConfig:
    profiles: dict[str, RegionProfile]
    insurers: dict[str, InsurerBinding]
    directory: Path

    def resolve(self, insurer: str, period: str) -> ResolvedEdition:
        """The edition and layouts for ``insurer``'s register of ``period``, or EditionError saying why not."""
        binding = self.insurers.get(insurer)
        if binding is None:
            raise EditionError(f"insurer {insurer!r} has no entry in oms/insurers.yaml: which region's register "
                               "it takes is not configured")
        return resolve(self.profiles[binding.profile], binding, period)


def resolve(profile: RegionProfile, binding: InsurerBinding, period: str) -> ResolvedEdition:
    """The edition of ``profile`` (or the binding's own editions) for ``period``, with its layouts."""
    editions = binding.editions or profile.editions
    edition = next((e for e in reversed(editions) if e.starts <= period), None)
    if edition is None:
        raise EditionError(f"no edition of the register for {period}: the editions of {profile.name} start in "
                           f"{editions[0].starts}")
    for kind, version in (("H", edition.h), ("L", edition.l)):
        if version not in WRITTEN:
            raise EditionError(f"period {period} needs the {kind}-file in version {version} (from "
                               f"{edition.starts}, profile {profile.name}); Zdravlink writes versions "
                               f"{' and '.join(WRITTEN)} only: no public schema of {version} was found")
    layouts = []
    for kind, version, table in (("H", edition.h, profile.schemas.h), ("L", edition.l, profile.schemas.l)):
        if version not in table:
            raise EditionError(f"profile {profile.name} has no schema of the {kind}-file version {version} "
                               f"(needed for {period}): add the region's XSD to the profile")
        layouts.append(load_layout(schemas_dir() / table[version]))
    return ResolvedEdition(profile, binding, period, edition.h, edition.l, layouts[0], layouts[1])


def load_oms_config(config: GatewayConfig, problems: list[ConfigProblem]) -> OmsConfig:
    """``oms/profiles/*.yaml`` and ``oms/insurers.yaml`` (both optional), every problem reported at once."""
    base = config.directory / "oms"
    profiles: dict[str, RegionProfile] = {}
    for path in sorted((base / "profiles").glob("*.yaml")):
        parsed = _read(path, _ProfileFile, problems)
        if parsed is None:
            continue
        profile = parsed.profile
        if profile.name in profiles:
            problems.append(ConfigProblem(str(path), "profile.name", f"profile {profile.name!r} is defined twice"))
            continue
        if _check_profile(profile, str(path), problems):
            profiles[profile.name] = profile
    insurers: dict[str, InsurerBinding] = {}
    path = base / "insurers.yaml"
    parsed_insurers = _read(path, _InsurersFile, problems) if path.exists() else None
    for mnemonic, binding in (parsed_insurers.insurers if parsed_insurers else {}).items():
        where = f"insurers.{mnemonic}"
        participant = config.participants.get(mnemonic)
        if participant is None or participant.kind != "insurer":
            problems.append(ConfigProblem(str(path), where, f"{mnemonic!r} is not a participant of kind insurer"))
        elif participant.oms_code is None:
            problems.append(ConfigProblem(str(path), where, f"{mnemonic!r} has no oms_code in participants.yaml "
                                          "(its code in the file name and SCHET/PLAT)"))
        region = profiles.get(binding.profile)
        if region is None:
            problems.append(ConfigProblem(str(path), f"{where}.profile", f"no profile {binding.profile!r} in "
                                          f"{base / 'profiles'}"))
            continue
        wanted = {p for p, src in region.regional.items() if src == "binding"}
        for missing in sorted(wanted - set(binding.values)):
            problems.append(ConfigProblem(str(path), f"{where}.values", f"profile {region.name} fills {missing} "
                                          "from the binding: give its value"))
        for extra in sorted(set(binding.values) - wanted):
            problems.append(ConfigProblem(str(path), f"{where}.values.{extra}", f"profile {region.name} does not "
                                          "take this element from the binding"))
        insurers[mnemonic] = binding
    return OmsConfig(profiles, insurers, config.directory)


_File = TypeVar("_File", bound=_Strict)


def _read(path: Path, model: type[_File], problems: list[ConfigProblem]) -> _File | None:
    try:
        return model.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
    except (OSError, yaml.YAMLError) as exc:
        problems.append(ConfigProblem(str(path), "(file)", f"cannot read: {exc}"))
    except ValidationError as exc:
        problems.extend(ConfigProblem(str(path), _key(e["loc"]), _rule(e)) for e in exc.errors())
    return None


def _check_profile(profile: RegionProfile, shown: str, problems: list[ConfigProblem]) -> bool:
    """Every schema loads, and every regional element is in each schema of its file type."""
    before = len(problems)
    layouts: dict[str, list[Layout]] = {"ZL_LIST": [], "PERS_LIST": []}
    for kind, table in (("h", profile.schemas.h), ("l", profile.schemas.l)):
        for version, rel in table.items():
            where = f"profile.schemas.{kind}.{version}"
            if version not in WRITTEN:
                problems.append(ConfigProblem(shown, where, f"version {version} is not one the writer knows "
                                              f"({', '.join(WRITTEN)})"))
                continue
            try:
                layout = load_layout(schemas_dir() / rel)
            except (OSError, LayoutError, SyntaxError) as exc:
                problems.append(ConfigProblem(shown, where, f"cannot read the schema {rel}: {exc}"))
                continue
            if layout.root.name != ("ZL_LIST" if kind == "h" else "PERS_LIST"):
                problems.append(ConfigProblem(shown, where, f"{rel} describes {layout.root.name}, not the "
                                              f"{kind.upper()}-file"))
                continue
            layouts[layout.root.name].append(layout)
    for path in profile.regional:
        root = path.split("/", 1)[0]
        for layout in layouts.get(root, []):
            if layout.slot(path) is None:
                problems.append(ConfigProblem(shown, f"profile.regional.{path}",
                                              f"{layout.source.name} has no element {path}"))
        if root not in layouts:
            problems.append(ConfigProblem(shown, f"profile.regional.{path}", "paths start with ZL_LIST or PERS_LIST"))
    return len(problems) == before
