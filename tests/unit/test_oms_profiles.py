"""Region profiles and insurer bindings: the edition per period, what a region requires, and config mistakes."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from gateway.config import ConfigProblem, load_config
from gateway.oms.profiles import EditionError, InsurerBinding, OmsConfig, load_oms_config

ROOT = Path(__file__).resolve().parents[2]
PARTICIPANTS = """participants:
  - {mnemonic: clinic, name: C, kind: mis, delivery: {mode: pull}}
  - {mnemonic: smo-75, name: S, kind: insurer, oms_code: "75001", delivery: {mode: pull}}
  - {mnemonic: smo-02, name: B, kind: insurer, oms_code: "02001", delivery: {mode: pull}}
  - {mnemonic: smo-nocode, name: N, kind: insurer, delivery: {mode: pull}}
"""
BINDINGS = """insurers:
  smo-75: {profile: zabaykalsky}
  smo-02: {profile: bashkortostan, values: {ZL_LIST/SCHET/PODR: "3", PERS_LIST/PERS/STATUS: "1"}}
"""


def configure(tmp_path: Path, insurers: str = BINDINGS, extra_profile: str | None = None) -> tuple[OmsConfig, list]:
    (tmp_path / "participants.yaml").write_text(PARTICIPANTS)
    (tmp_path / "routes.yaml").write_text("routes: []\n")
    shutil.copytree(ROOT / "config" / "oms" / "profiles", tmp_path / "oms" / "profiles")
    (tmp_path / "oms" / "insurers.yaml").write_text(insurers)
    if extra_profile is not None:
        (tmp_path / "oms" / "profiles" / "extra.yaml").write_text(extra_profile)
    problems: list[ConfigProblem] = []
    return load_oms_config(load_config(tmp_path), problems), problems


@pytest.mark.parametrize("insurer,period,versions", [
    ("smo-75", "2019-10", ("3.1", "3.1")),
    ("smo-75", "2019-11", ("3.1", "3.2")),   # L-file 3.2 from November 2019
    ("smo-75", "2021-12", ("3.1", "3.2")),
    ("smo-75", "2022-01", ("3.2", "3.2")),   # region 75's MP 3.2
    ("smo-75", "2024-12", ("3.2", "3.2")),
    ("smo-02", "2020-06", ("3.1", "3.2")),
])
def test_the_edition_follows_the_period(tmp_path: Path, insurer: str, period: str, versions: tuple[str, str]) -> None:
    oms, problems = configure(tmp_path)
    assert problems == []
    edition = oms.resolve(insurer, period)
    assert (edition.h_version, edition.l_version) == versions
    assert edition.h_layout.source.parent.name == ("region75" if insurer == "smo-75" else "bashkortostan")


@pytest.mark.parametrize("insurer,period,rule", [
    ("smo-75", "2025-01", "needs the H-file in version 5.0 (from 2025-01"),
    ("smo-75", "2026-10", "needs the H-file in version 5.1 (from 2025-07"),
    ("smo-02", "2022-03", "profile bashkortostan has no schema of the H-file version 3.2"),
    ("smo-75", "2018-12", "no edition of the register for 2018-12"),
    ("smo-nocode", "2021-04", "has no entry in oms/insurers.yaml"),
])
def test_a_period_we_cannot_write_is_refused_with_the_reason(tmp_path: Path, insurer: str, period: str,
                                                              rule: str) -> None:
    oms, _ = configure(tmp_path)
    with pytest.raises(EditionError, match=rule.replace("(", r"\(")):
        oms.resolve(insurer, period)


def test_an_insurers_own_editions_replace_the_profiles(tmp_path: Path) -> None:
    oms, _ = configure(tmp_path)
    agreed = InsurerBinding(profile="zabaykalsky", editions=[{"from": "2019-01", "h": "3.2", "l": "3.2"}])
    oms.insurers["smo-75"] = agreed
    assert (oms.resolve("smo-75", "2026-10").h_version, oms.resolve("smo-75", "2020-01").h_version) == ("3.2", "3.2")


def test_what_a_region_requires_of_a_record(tmp_path: Path) -> None:
    oms, _ = configure(tmp_path)
    assert oms.resolve("smo-75", "2021-04").required_fields() == {"Service/Department"}  # SL/PODR, USL/PODR
    assert oms.resolve("smo-02", "2020-06").required_fields() == {
        "Service/Department",  # SL/LPU_1 is required there
        "Patient/Person/FamilyName", "Patient/Person/GivenName",  # FAM, IM required (T40NN)
        "Patient/Person/ResidenceOKATO", "Patient/Person/StayOKATO"}  # OKATOG, OKATOP


@pytest.mark.parametrize("insurers,extra,where,rule", [
    ("insurers:\n  smo-75: {profile: tatarstan}\n", None, "insurers.smo-75.profile", "no profile 'tatarstan'"),
    ("insurers:\n  smo-02: {profile: bashkortostan}\n", None, "insurers.smo-02.values",
     "fills ZL_LIST/SCHET/PODR from the binding"),
    ("insurers:\n  smo-75: {profile: zabaykalsky, values: {ZL_LIST/SCHET/PODR: '1'}}\n", None,
     "insurers.smo-75.values.ZL_LIST/SCHET/PODR", "does not take this element"),
    ("insurers:\n  clinic: {profile: zabaykalsky}\n", None, "insurers.clinic", "not a participant of kind insurer"),
    ("insurers:\n  smo-nocode: {profile: zabaykalsky}\n", None, "insurers.smo-nocode", "has no oms_code"),
    ("insurers:\n  smo-75: {profile: zabaykalsky, receiver: X}\n", None, "insurers.smo-75.receiver", "not one of"),
    (BINDINGS, "profile: {name: extra, title: E, editions: [{from: 2020-01, h: '3.1', l: '3.1'}], schemas: {h: "
     "{'3.1': oms/region75/tfoms75-actual-MP-3.1.xsd}}, regional: {ZL_LIST/SCHET/PODR: department}}\n",
     "profile.regional.ZL_LIST/SCHET/PODR", "tfoms75-actual-MP-3.1.xsd has no element ZL_LIST/SCHET/PODR"),
    (BINDINGS, "profile: {name: extra, title: E, editions: [{from: 2021-01, h: '3.1', l: '3.1'}, {from: 2020-01, "
     "h: '3.1', l: '3.1'}], schemas: {}}\n", "profile.editions", "in order of 'from'"),
    (BINDINGS, "profile: {name: extra, title: E, editions: [{from: 2020-01, h: '3.1', l: '3.1'}], schemas: {h: "
     "{'3.1': oms/region75/tfoms75-actual-PERS-3.1.xsd}}}\n", "profile.schemas.h.3.1", "not the H-file"),
    (BINDINGS, "profile: {name: extra, title: E, editions: [{from: 2020-01, h: '3.1', l: '3.1'}], schemas: {h: "
     "{'5.0': oms/region75/tfoms75-actual-MP-3.1.xsd}}}\n", "profile.schemas.h.5.0", "not one the writer knows"),
])
def test_configuration_mistakes_are_named_by_file_key_and_rule(tmp_path: Path, insurers: str, extra: str | None,
                                                                where: str, rule: str) -> None:
    _, problems = configure(tmp_path, insurers, extra)
    assert any(p.key == where and rule in p.rule for p in problems), problems


def test_the_bundled_configuration_is_clean() -> None:
    problems: list[ConfigProblem] = []
    oms = load_oms_config(load_config(ROOT / "config"), problems)
    assert problems == [] and set(oms.profiles) == {"zabaykalsky", "bashkortostan"}
    assert oms.resolve("insurer-demo", "2026-10").h_version == "3.2"  # the emulator's own agreement
