"""Service acts as registers: a month of synthetic records for two clinics and three insurers, per region and edition.

Every register built here is validated against the region's own schema, as vendored, by the
test itself (ProMed's: the instance copy moved into the schema's namespace, as
schemas_xsd/oms/SOURCES.md says; nothing else is changed). The sums are recomputed with
fractions, independently of the builder's Decimals.
"""
from __future__ import annotations

import copy
import datetime as dt
import random
import re
from dataclasses import replace
from datetime import date, timedelta
from decimal import Decimal
from fractions import Fraction
from math import floor
from pathlib import Path

import pytest
import yaml
from lxml import etree

from adapters.acts.archive import RegisterArchive
from adapters.acts.builder import CaseDefaults, Person, Record, Register, RegisterError, build_register, register_digest
from demo.ca import demo_signer
from gateway.identifiers import enp_valid, snils_valid
from gateway.oms.archive import members, to_bytes, unpack_register
from gateway.oms.profiles import EditionError, InsurerBinding, ResolvedEdition, _ProfileFile, resolve
from gateway.service_records import SERVICE_RECORD_NS
from signing import TrustStore
from signing.cms import verify_detached

ROOT = Path(__file__).resolve().parents[2]
OMS = ROOT / "schemas_xsd" / "oms"
RECORD_XSD = ROOT / "schemas_xsd" / "payloads" / "service-record-1.0.xsd"
S = "{%s}" % SERVICE_RECORD_NS
ACT_DATE = date(2026, 11, 5)
CLINICS = {"020101": "1.2.643.5.1.13.13.12.2.2.4101", "020202": "1.2.643.5.1.13.13.12.2.2.4202"}
INSURERS = {"smo-alfa": "02001", "smo-beta": "02003", "smo-gamma": "02007"}
QUANTITIES = ["1", "2", "0.5", "1.5", "3", "0.25"]
TARIFFS = ["1234.56", "0.01", "99999.99", "350.00", "17.35", "0.05", "2500.10"]
DIAGNOSES = ["J06.9", "I10", "E11.9", "M54.5", "Z00.0", "K29.7"]
SPECIALTIES = ["76", "27", "49", "1122"]
SERVICE_CODES = ["B01.047.001", "A09.05.083.002", "B04.014.004", "700301"]
BASHKORTOSTAN_VALUES = {"ZL_LIST/SCHET/PODR": "7", "PERS_LIST/PERS/STATUS": "1"}

# (profile, period, H version, L version, the schemas a test validates with, their namespace)
EDITIONS = {
    "z75-3.1": ("zabaykalsky", "2021-10", "3.1", "3.2", "region75/tfoms75-actual-MP-3.1.xsd",
                "region75/tfoms75-actual-PERS-3.2.xsd", None),
    "z75-3.2": ("zabaykalsky", "2024-10", "3.2", "3.2", "region75/tfoms75-actual-MP-3.2.xsd",
                "region75/tfoms75-actual-PERS-3.2.xsd", None),
    "z75-l3.1": ("zabaykalsky", "2019-10", "3.1", "3.1", "region75/tfoms75-actual-MP-3.1.xsd",
                 "region75/tfoms75-actual-PERS-3.1.xsd", None),
    "ufa-3.1": ("bashkortostan", "2020-10", "3.1", "3.2", "bashkortostan/promed-ufa-OMS-D1-1-NEW.xsd",
                "bashkortostan/promed-ufa-OMS-D2-NEW.xsd", ("OMS-D1", "OMS-D2")),
}


def profile(name: str):
    data = yaml.safe_load((ROOT / "config" / "oms" / "profiles" / f"{name}.yaml").read_text(encoding="utf-8"))
    return _ProfileFile.model_validate(data).profile


def edition(key: str) -> ResolvedEdition:
    name, period = EDITIONS[key][:2]
    binding = InsurerBinding(profile=name, values=BASHKORTOSTAN_VALUES if name == "bashkortostan" else {})
    return resolve(profile(name), binding, period)


# --- synthetic data ---------------------------------------------------------------------------

def _enp(rng: random.Random) -> str:
    body = "".join(rng.choice("0123456789") for _ in range(15))
    (value,) = [body + d for d in "0123456789" if enp_valid(body + d)]
    return value


def _snils(rng: random.Random) -> str:
    body = str(rng.randrange(100_000_000, 1_000_000_000))
    check = sum(int(d) * w for d, w in zip(body, range(9, 0, -1))) % 101 % 100
    value = f"{body}{check:02d}"
    assert snils_valid(value)
    return value


def _person(rng: random.Random, n: int, names_required: bool) -> tuple[Person, str, str | None]:
    """A patient; every fifth lacks a patronymic, every seventh a surname (where the region allows it),
    every sixth has an old-style policy with its number and full document."""
    old_style = n % 6 == 5
    person = Person(
        family_name=None if n % 7 == 3 and not names_required else rng.choice(["Иванова", "Петров", "Щукина"]),
        given_name=rng.choice(["Анна", "Пётр", "Ёлка"]), patronymic=None if n % 5 == 0 else "Сергеевна",
        sex=rng.choice("12"), birth_date=date(1940 + n % 60, 1 + n % 12, 1 + n % 28),
        doc_type="14", doc_series=f"{n:02d} 06", doc_number=f"{100000 + n}", doc_date=date(2010, 5, 20),
        doc_issuer="ОВД района", snils=_snils(rng), residence_okato="80401000000", stay_okato="80401000000")
    return person, "1" if old_style else "3", f"77000{n:05d}" if old_style else None


def month_of_records(key: str, seed: int = 20261105) -> list[Record]:
    name, period = EDITIONS[key][:2]
    year, month = (int(p) for p in period.split("-"))
    rng = random.Random(seed)
    patients = []
    for n in range(40):
        person, policy, number = _person(rng, n, names_required=name == "bashkortostan")
        patients.append((_enp(rng), person, policy, number, rng.choice(sorted(INSURERS)),
                         rng.sample(DIAGNOSES, rng.randint(1, 2))))
    records: list[Record] = []
    for code_mo, oid in CLINICS.items():
        doctors = [(_snils(rng), rng.choice(SPECIALTIES)) for _ in range(5)]
        for enp, person, policy, number, insurer, diagnoses in rng.sample(patients, 25):
            for diagnosis in diagnoses:
                for _ in range(rng.randint(1, 4)):
                    day_in = date(year, month, rng.randint(1, 27))
                    snils, specialty = rng.choice(doctors)
                    records.append(Record(
                        record_id=f"{code_mo}-{len(records):05d}", period=period, org_oid=oid, code_mo=code_mo,
                        enp=enp, policy_type=policy, insurer=insurer, service_code=rng.choice(SERVICE_CODES),
                        date_in=day_in, date_out=min(day_in + timedelta(days=rng.randint(0, 3)), date(year, month, 28)),
                        quantity=Decimal(rng.choice(QUANTITIES)), tariff=Decimal(rng.choice(TARIFFS)),
                        diagnosis=diagnosis, doctor_snils=snils, specialty=specialty, person=person,
                        policy_number=number, department=str(rng.randint(1, 40))))
    return records


def groups(records: list[Record]) -> dict[tuple[str, str], list[Record]]:
    found: dict[tuple[str, str], list[Record]] = {}
    for r in records:
        found.setdefault((r.code_mo, r.insurer), []).append(r)
    return found


def build(key: str, records: list[Record], **kw: object) -> Register:
    options = {"act_number": "A-1", "act_date": ACT_DATE, **kw}
    code = INSURERS[records[0].insurer] if records else "02001"
    return build_register(records, edition=edition(key), receiver_code=code, **options)  # type: ignore[arg-type]


@pytest.fixture(scope="module", params=sorted(EDITIONS))
def month(request: pytest.FixtureRequest) -> tuple[str, dict[tuple[str, str], list[Record]], dict]:
    key = request.param
    by_group = groups(month_of_records(key))
    return key, by_group, {g: build(key, rs) for g, rs in by_group.items()}


def reference_valid(root: etree._Element, xsd: str, namespace: str | None) -> list[str]:
    """The region's schema, compiled here from the vendored file, on the file or (ProMed) a namespaced copy."""
    schema = etree.XMLSchema(etree.parse(str(OMS / xsd)))
    instance = copy.deepcopy(root)
    if namespace:
        for el in instance.iter():
            el.tag = f"{{{namespace}}}{el.tag}"
    return [] if schema.validate(instance) else [f"{e.path}: {e.message}" for e in schema.error_log]


# --- exact sums: fractions, half up to kopecks -----------------------------------------------------

def _exact(r: Record) -> Fraction:
    return Fraction(str(r.quantity)) * Fraction(str(r.tariff))


def _rounded(r: Record) -> Fraction:
    return Fraction(floor(_exact(r) * 100 + Fraction(1, 2)), 100)


def _f(el: etree._Element, path: str) -> Fraction:
    value = el.findtext(path)
    assert value is not None, path
    return Fraction(value)


# --- the registers ---------------------------------------------------------------------------------

def test_the_synthetic_month_covers_what_the_registers_must_handle() -> None:
    records = month_of_records("z75-3.2")
    assert set(groups(records)) == {(c, i) for c in CLINICS for i in INSURERS}
    assert any(_exact(r) != _rounded(r) for r in records), "no service whose amount needs rounding"
    assert {r.policy_type for r in records} == {"1", "3"}
    assert any(r.person.patronymic is None for r in records) and any(r.person.family_name is None for r in records)
    assert all(r.person.family_name for r in month_of_records("ufa-3.1"))  # FAM is required in Bashkortostan


def test_every_register_is_valid_for_its_regions_schemas(month) -> None:
    key, by_group, registers = month
    h_xsd, l_xsd, namespaces = EDITIONS[key][4:]
    assert len(registers) == 6
    for g, reg in registers.items():
        assert etree.QName(reg.h_file).namespace is None and etree.QName(reg.l_file).namespace is None
        assert reference_valid(reg.h_file, h_xsd, namespaces and namespaces[0]) == [], g
        assert reference_valid(reg.l_file, l_xsd, namespaces and namespaces[1]) == [], g
        assert reference_valid(etree.fromstring(to_bytes(reg.h_file)), h_xsd, namespaces and namespaces[0]) == []


def test_the_versions_are_the_periods(month) -> None:
    key, _, registers = month
    for reg in registers.values():
        assert (reg.h_file.findtext("ZGLV/VERSION"), reg.l_file.findtext("ZGLV/VERSION")) == EDITIONS[key][2:4]


def test_sums_are_exact_and_recomputed_from_the_services(month) -> None:
    _, by_group, registers = month
    for g, reg in registers.items():
        h = reg.h_file
        assert _f(h, "SCHET/SUMMAV") == sum((_rounded(r) for r in by_group[g]), Fraction(0)) == Fraction(str(reg.total))
        assert _f(h, "SCHET/SUMMAV") == sum(_f(z, "Z_SL/SUMV") for z in h.findall("ZAP"))
        assert int(h.findtext("ZGLV/SD_Z") or "") == len(h.findall("ZAP"))
        for zap in h.findall("ZAP"):
            assert _f(zap, "Z_SL/SUMV") == sum(_f(sl, "SUM_M") for sl in zap.findall("Z_SL/SL"))
            for sl in zap.findall("Z_SL/SL"):
                assert _f(sl, "SUM_M") == sum(_f(u, "SUMV_USL") for u in sl.findall("USL"))


def test_rounding_is_per_service_and_half_up() -> None:
    base = groups(month_of_records("z75-3.2"))[("020101", "smo-alfa")][0]
    tiny = [replace(base, record_id="T1", quantity=Decimal("0.5"), tariff=Decimal("0.01")),
            replace(base, record_id="T2", quantity=Decimal("0.5"), tariff=Decimal("0.01")),
            replace(base, record_id="T3", quantity=Decimal("0.5"), tariff=Decimal("0.05"))]
    reg = build("z75-3.2", tiny)
    assert [u.text for u in reg.h_file.iterfind(".//SUMV_USL")] == ["0.01", "0.01", "0.03"]  # 0.025 → 0.03
    assert reg.h_file.findtext("SCHET/SUMMAV") == "0.05"  # rounding the exact total (0.035) would bill 0.04


def test_file_names_follow_the_federal_rule(month) -> None:
    key, _, registers = month
    year_month = EDITIONS[key][1].replace("-", "")[2:]
    for (code_mo, insurer), reg in registers.items():
        h_name = f"HM{code_mo}S{INSURERS[insurer]}_{year_month}1"
        assert str(reg.name) == reg.h_file.findtext("ZGLV/FILENAME") == h_name and len(h_name) <= 26
        assert reg.l_file.findtext("ZGLV/FILENAME") == "L" + h_name[1:]
        assert reg.l_file.findtext("ZGLV/FILENAME1") == h_name
        assert reg.h_file.findtext("SCHET/PLAT") == INSURERS[insurer]  # a file to an insurer names its payer


def test_every_patient_is_linked_once_by_id_pac(month) -> None:
    _, by_group, registers = month
    for g, reg in registers.items():
        pac_ids = [z.findtext("PACIENT/ID_PAC") for z in reg.h_file.findall("ZAP")]
        pers_ids = [p.findtext("ID_PAC") for p in reg.l_file.findall("PERS")]
        assert len(pers_ids) == len(set(pers_ids)) == len({r.enp for r in by_group[g]})
        assert set(pac_ids) == set(pers_ids)
        people = {r.enp: r.person for r in by_group[g]}
        for pers in reg.l_file.findall("PERS"):
            person = people[pers.findtext("ID_PAC") or ""]
            assert (pers.findtext("FAM"), pers.findtext("IM"), pers.findtext("OT")) == (
                person.family_name, person.given_name, person.patronymic)
            assert (pers.findtext("W"), pers.findtext("DR")) == (person.sex, person.birth_date.isoformat())
            dost = sorted(d.text or "" for d in pers.findall("DOST"))
            assert dost == sorted(c for c, part in (("1", person.patronymic), ("2", person.family_name),
                                                    ("3", person.given_name)) if not part)


def test_one_zap_per_patient_and_diagnosis_each_service_once(month) -> None:
    key, by_group, registers = month
    v32 = EDITIONS[key][2] == "3.2"
    for g, reg in registers.items():
        by_id = {r.record_id: r for r in by_group[g]}
        zaps = reg.h_file.findall("ZAP")
        cases = [(z.findtext("PACIENT/ID_PAC"), z.findtext("Z_SL/SL/DS1")) for z in zaps]
        assert len(cases) == len(set(cases)) == len({(r.enp, r.diagnosis) for r in by_id.values()})
        assert sorted(u.text or "" for u in reg.h_file.iterfind(".//USL/IDSERV")) == sorted(by_id)
        for zap in zaps:
            sl = zap.find("Z_SL/SL")
            mine = [by_id[u.text or ""] for u in sl.iterfind("USL/IDSERV")]
            assert zap.findtext("PACIENT/VPOLIS") == mine[0].policy_type
            assert zap.findtext("PACIENT/SMO") == INSURERS[g[1]]
            for usl in sl.findall("USL"):
                r = by_id[usl.findtext("IDSERV") or ""]
                s = r.doctor_snils
                doctor = usl.find("MR_USL_N") if v32 else usl
                assert (doctor.findtext("PRVS"), doctor.findtext("CODE_MD")) == (
                    r.specialty, f"{s[:3]}-{s[3:6]}-{s[6:9]} {s[9:]}")
                assert _f(usl, "SUMV_USL") == _rounded(r)


def test_what_3_2_writes_differently(month) -> None:
    key, by_group, registers = month
    h_version, l_version = EDITIONS[key][2:4]
    for g, reg in registers.items():
        policies = {r.enp: (r.policy_type, r.policy_number) for r in by_group[g]}
        for pacient in reg.h_file.iterfind("ZAP/PACIENT"):
            enp = pacient.findtext("ID_PAC") or ""
            vpolis, number = policies[enp]
            if h_version == "3.2":  # ENP after NPOLIS; the single-format policy has no NPOLIS
                assert pacient.findtext("ENP") == enp
                assert pacient.findtext("NPOLIS") == (number if vpolis != "3" else None)
            else:
                assert pacient.find("ENP") is None
                assert pacient.findtext("NPOLIS") == (number if vpolis != "3" else enp)
        assert (reg.h_file.find(".//USL/MR_USL_N") is not None) == (h_version == "3.2")
        assert (reg.h_file.find(".//USL/CODE_MD") is not None) == (h_version == "3.1")
        assert (reg.l_file.find("PERS/DOCDATE") is not None) == (l_version == "3.2")


def test_the_regions_own_elements_are_filled_from_records_and_binding(month) -> None:
    key, by_group, registers = month
    for g, reg in registers.items():
        by_id = {r.record_id: r for r in by_group[g]}
        h, l_file = reg.h_file, reg.l_file
        for sl in h.iterfind(".//SL"):
            services = [by_id[u.findtext("IDSERV") or ""] for u in sl.findall("USL")]
            if key.startswith("z75"):  # SL/PODR and USL/PODR required in region 75
                assert sl.findtext("PODR") == services[-1].department
                assert [u.findtext("PODR") for u in sl.findall("USL")] == [r.department for r in services]
            else:  # Bashkortostan: the regional specialty and tariff of the case
                assert sl.findtext("PRVS_R") == sl.findtext("PRVS")
                assert sl.findtext("TARIF_R") == sl.findtext("SUM_M")
        if key.startswith("ufa"):
            assert h.findtext("SCHET/PODR") == "7"
            assert {p.findtext("STATUS") for p in l_file.findall("PERS")} == {"1"}
            assert {p.findtext("OKATOG") for p in l_file.findall("PERS")} == {"80401000000"}
            assert all(re.fullmatch(r"\d{11}", p.findtext("SNILS") or "") for p in l_file.findall("PERS"))
        else:
            assert h.find("SCHET/PODR") is None and l_file.find("PERS/STATUS") is None
            assert all(re.fullmatch(r"\d{3}-\d{3}-\d{3} \d{2}", p.findtext("SNILS") or "") for p in l_file.findall("PERS"))


def test_the_same_records_make_the_same_files_whatever_their_order() -> None:
    records = groups(month_of_records("ufa-3.1"))[("020202", "smo-beta")]
    shuffled = list(records)
    random.Random(7).shuffle(shuffled)
    first, again = build("ufa-3.1", records), build("ufa-3.1", shuffled)
    assert (to_bytes(first.h_file), to_bytes(first.l_file)) == (to_bytes(again.h_file), to_bytes(again.l_file))
    assert register_digest(first) == register_digest(again)
    changed = [replace(r, person=replace(r.person, doc_number="999999")) if r.enp == records[0].enp else r
               for r in records]
    assert register_digest(build("ufa-3.1", changed)) != register_digest(first)  # the L-file counts too
    assert register_digest(build("ufa-3.1", records, act_number="A-2")) != register_digest(first)


def test_a_correction_is_marked_and_named_by_its_pack_number() -> None:
    records = groups(month_of_records("z75-3.2"))[("020202", "smo-beta")]
    first, second = build("z75-3.2", records), build("z75-3.2", records, version=2, replaces="A-1")
    assert str(second.name).endswith("_24102") and second.l_file.findtext("ZGLV/FILENAME1") == str(second.name)
    assert {z.text for z in second.h_file.iterfind("ZAP/PR_NOV")} == {"1"}
    assert "A-1" in (second.h_file.findtext("SCHET/COMENTS") or "")
    assert second.h_file.findtext("SCHET/CODE") != first.h_file.findtext("SCHET/CODE")
    for bad in ({"version": 1, "replaces": "A-1"}, {"version": 2}, {"version": 0}):
        with pytest.raises(RegisterError):
            build("z75-3.2", records, **bad)


def test_records_that_cannot_make_one_register_are_refused_by_record_never_by_personal_data() -> None:
    records = groups(month_of_records("z75-3.2"))[("020101", "smo-gamma")]
    again = next(i for i, r in enumerate(records) if i > 0 and r.enp in {x.enp for x in records[:i]})
    cases = {
        records[4].record_id: [replace(r, period="2024-11") if i == 4 else r for i, r in enumerate(records)],
        records[2].record_id: [replace(r, diagnosis=None) if i == 2 else r for i, r in enumerate(records)],
        records[3].record_id: [replace(r, tariff=Decimal("10.005")) if i == 3 else r for i, r in enumerate(records)],
        records[again].record_id: [replace(r, person=replace(r.person, family_name="Другая")) if i == again else r
                                   for i, r in enumerate(records)],
    }
    for culprit, bad in cases.items():
        with pytest.raises(RegisterError) as exc:
            build("z75-3.2", bad)
        assert repr(culprit) in str(exc.value)
        assert "Другая" not in str(exc.value) and records[again].enp not in str(exc.value)
    with pytest.raises(RegisterError, match="twice"):
        build("z75-3.2", records + [records[0]])
    with pytest.raises(RegisterError, match="at least one record"):
        build("z75-3.2", [])


def test_a_record_the_regions_schema_refuses_stops_the_register_before_it_leaves() -> None:
    records = groups(month_of_records("z75-3.2"))[("020101", "smo-alfa")]
    no_department = [replace(r, department=None) if i == 0 else r for i, r in enumerate(records)]
    with pytest.raises(Exception, match="PODR: required"):  # the layout: nothing fills a required element
        build("z75-3.2", no_department)
    long_specialty = [replace(r, specialty="12345") if i == 0 else r for i, r in enumerate(records)]
    with pytest.raises(RegisterError, match="fails its checks.*XSD"):
        build("z75-3.2", long_specialty)


def test_case_defaults_are_written_and_can_be_overridden() -> None:
    records = groups(month_of_records("z75-3.1"))[("020202", "smo-gamma")]
    usual = build("z75-3.1", records).h_file
    assert [usual.findtext(f"ZAP/Z_SL/{n}") for n in ("USL_OK", "VIDPOM", "FOR_POM", "RSLT", "ISHOD", "IDSP")] \
        == ["3", "13", "3", "304", "304", "28"]
    regional = build("z75-3.1", records, defaults=CaseDefaults(vidpom=12, profil=57)).h_file
    assert {v.text for v in regional.iterfind(".//VIDPOM")} == {"12"}
    assert {p.text for p in regional.iterfind(".//PROFIL")} == {"57"}


def test_periods_needing_an_edition_we_do_not_write_are_refused() -> None:
    for period, version in (("2025-01", "5.0"), ("2026-10", "5.1")):
        with pytest.raises(EditionError, match=f"version {version}"):
            resolve(profile("zabaykalsky"), InsurerBinding(profile="zabaykalsky"), period)


def test_the_archive_holds_the_pair_under_the_rules_names_and_its_signature_verifies(demo_keys: Path) -> None:
    reg = build("z75-3.2", groups(month_of_records("z75-3.2"))[("020101", "smo-alfa")])
    archive = RegisterArchive.make(reg, ACT_DATE, demo_signer(demo_keys, "gateway"))
    assert (archive.file_name, archive.signature_name) == (f"{reg.name}.zip", f"{reg.name}.zip.sig")
    assert members(archive.content, archive.file_name) == {reg.name.xml: to_bytes(reg.h_file),
                                                           reg.name.paired("L").xml: to_bytes(reg.l_file)}
    pair = unpack_register(archive.content, archive.file_name)
    assert pair.name == reg.name and pair.l_file is not None
    verify_detached(archive.content, archive.signature, trust=TrustStore.from_directory(demo_keys / "trust"),
                    signers=None)
    assert RegisterArchive.make(reg, ACT_DATE, demo_signer(demo_keys, "gateway")).content == archive.content


# --- reading service records -----------------------------------------------------------------------

def _record_xml(r: Record) -> etree._Element:
    def sub(parent: etree._Element, name: str, text: str | None = None) -> etree._Element | None:
        if text is None and name not in ("Organisation", "Patient", "Person", "IdentityDocument", "Service",
                                          "Doctor"):
            return None
        el = etree.SubElement(parent, S + name)
        el.text = text
        return el

    p = r.person
    root = etree.Element(S + "ServiceRecord", nsmap={"sr": SERVICE_RECORD_NS})
    sub(root, "RecordId", r.record_id)
    sub(root, "Period", r.period)
    org = sub(root, "Organisation")
    sub(org, "Oid", r.org_oid)
    sub(org, "CodeMO", r.code_mo)
    patient = sub(root, "Patient")
    for name, value in (("ENP", r.enp), ("PolicyType", r.policy_type), ("PolicySeries", r.policy_series),
                        ("PolicyNumber", r.policy_number), ("Insurer", r.insurer)):
        sub(patient, name, value)
    person = sub(patient, "Person")
    for name, value in (("FamilyName", p.family_name), ("GivenName", p.given_name), ("Patronymic", p.patronymic),
                        ("Sex", p.sex), ("BirthDate", p.birth_date.isoformat()), ("BirthPlace", p.birth_place)):
        sub(person, name, value)
    doc = sub(person, "IdentityDocument")
    for name, value in (("Type", p.doc_type), ("Series", p.doc_series), ("Number", p.doc_number),
                        ("IssueDate", p.doc_date.isoformat() if p.doc_date else None), ("IssuedBy", p.doc_issuer)):
        sub(doc, name, value)
    for name, value in (("SNILS", p.snils), ("ResidenceOKATO", p.residence_okato), ("StayOKATO", p.stay_okato)):
        sub(person, name, value)
    service = sub(root, "Service")
    for name, value in (("Code", r.service_code), ("DateIn", r.date_in.isoformat()),
                        ("DateOut", r.date_out.isoformat()), ("Quantity", str(r.quantity)), ("Tariff", str(r.tariff)),
                        ("Diagnosis", r.diagnosis), ("Department", r.department)):
        sub(service, name, value)
    doctor = sub(root, "Doctor")
    sub(doctor, "SNILS", r.doctor_snils)
    sub(doctor, "Specialty", r.specialty)
    return root


def test_records_read_from_service_record_payloads_build_the_same_register() -> None:
    schema = etree.XMLSchema(etree.parse(str(RECORD_XSD)))
    records = groups(month_of_records("ufa-3.1"))[("020202", "smo-gamma")]
    read = []
    for r in records:
        el = etree.fromstring(etree.tostring(_record_xml(r)))
        assert schema.validate(el), schema.error_log
        read.append(Record.from_element(el))
    assert read == records
    assert register_digest(build("ufa-3.1", read)) == register_digest(build("ufa-3.1", records))
    with pytest.raises(RegisterError, match="ServiceRecord"):
        Record.from_element(etree.Element("ZL_LIST"))


def test_dates_are_taken_as_dates(month) -> None:
    _, _, registers = month
    for reg in registers.values():
        for path in ("ZGLV/DATA", "SCHET/DSCHET"):
            assert dt.date.fromisoformat(reg.h_file.findtext(path) or "") == ACT_DATE
