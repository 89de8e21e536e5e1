"""Service acts: a month of synthetic records for two clinics and three insurers, one act per pair.

The sums are recomputed here with fractions, independently of the builder's Decimals; the
act's element paths and our schema are compared with the real TFOMS schema the act is
derived from (tests/data/oms/), which is what ties the act to the format an insurer reads.
"""
from __future__ import annotations

import hashlib
import random
import re
from dataclasses import replace
from datetime import date, timedelta
from decimal import Decimal
from fractions import Fraction
from math import floor
from pathlib import Path

import pytest
from lxml import etree

from adapters.acts.builder import (
    ACT_NS,
    SERVICE_RECORD_NS,
    CaseDefaults,
    Record,
    act_digest,
    build_act,
    validate_act,
)
from gateway.identifiers import enp_valid, snils_valid
from tests.support.references import SHARED

ROOT = Path(__file__).resolve().parents[2]
OUR_XSD = ROOT / "schemas_xsd" / "oms" / "service-act-3.1.xsd"
REFERENCE_XSD = ROOT / "schemas_xsd" / "oms" / "bashkortostan" / "promed-ufa-OMS-D1-1-NEW.xsd"
REFERENCE_SHA256 = "be8f11f1ff8d1a4b383007741e288c9953495c10cd58b816b9e11651b15c698b"
RECORD_XSD = ROOT / "schemas_xsd" / "payloads" / "service-record-1.0.xsd"
XS = "{http://www.w3.org/2001/XMLSchema}"
NS = {"a": ACT_NS}
S = "{%s}" % SERVICE_RECORD_NS

PERIOD = "2026-10"
ACT_DATE = date(2026, 11, 5)
CLINICS = {"020101": "1.2.643.5.1.13.13.12.2.2.4101", "020202": "1.2.643.5.1.13.13.12.2.2.4202"}
INSURERS = {"smo-alfa": "02001", "smo-beta": "02003", "smo-gamma": "02007"}
QUANTITIES = ["1", "2", "0.5", "1.5", "3", "0.25"]
TARIFFS = ["1234.56", "0.01", "99999.99", "350.00", "17.35", "0.05", "2500.10"]
DIAGNOSES = ["J06.9", "I10", "E11.9", "M54.5", "Z00.0", "K29.7"]
SPECIALTIES = ["76", "27", "49", "1122"]
SERVICE_CODES = ["B01.047.001", "A09.05.083.002", "B04.014.004", "700301"]
ENP_PATH = "ZL_LIST/ZAP/PACIENT/ENP"
REGIONAL_REQUIRED = {"ZL_LIST/SCHET/PODR", "ZL_LIST/ZAP/Z_SL/SL/PRVS_R", "ZL_LIST/ZAP/Z_SL/SL/TARIF_R"}


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


def _month_of_records(seed: int = 20261105) -> list[Record]:
    rng = random.Random(seed)
    patients = [(_enp(rng), rng.choice("3332"), rng.choice(sorted(INSURERS)), rng.sample(DIAGNOSES, rng.randint(1, 2)))
                for _ in range(40)]
    records: list[Record] = []
    for code_mo, oid in CLINICS.items():
        doctors = [(_snils(rng), rng.choice(SPECIALTIES)) for _ in range(5)]
        for enp, policy, insurer, diagnoses in rng.sample(patients, 25):
            for diagnosis in diagnoses:
                for _ in range(rng.randint(1, 4)):
                    day_in = date(2026, 10, rng.randint(1, 28))
                    snils, specialty = rng.choice(doctors)
                    records.append(Record(
                        record_id=f"{code_mo}-{len(records):05d}", period=PERIOD, org_oid=oid, code_mo=code_mo,
                        enp=enp, policy_type=policy, insurer=insurer, insurer_code=INSURERS[insurer],
                        service_code=rng.choice(SERVICE_CODES), date_in=day_in,
                        date_out=day_in + timedelta(days=rng.randint(0, 3)),
                        quantity=Decimal(rng.choice(QUANTITIES)), tariff=Decimal(rng.choice(TARIFFS)),
                        diagnosis=diagnosis, doctor_snils=snils, specialty=specialty))
    return records


RECORDS = _month_of_records()


def _groups(records: list[Record]) -> dict[tuple[str, str], list[Record]]:
    groups: dict[tuple[str, str], list[Record]] = {}
    for r in records:
        groups.setdefault((r.code_mo, r.insurer), []).append(r)
    return groups


GROUPS = _groups(RECORDS)


def _act(records: list[Record], *, act_number: str = "A-2610-1", version: int = 1, replaces: str | None = None,
         defaults: CaseDefaults = CaseDefaults()) -> etree._Element:
    return build_act(records, act_number=act_number, act_date=ACT_DATE, version=version, replaces=replaces,
                     defaults=defaults)


@pytest.fixture(scope="module")
def acts() -> dict[tuple[str, str], etree._Element]:
    return {key: _act(rs) for key, rs in GROUPS.items()}


def test_the_synthetic_month_covers_what_the_act_must_handle() -> None:
    assert set(GROUPS) == {(c, i) for c in CLINICS for i in INSURERS}
    assert all(enp_valid(r.enp) and snils_valid(r.doctor_snils) for r in RECORDS)
    assert any(_exact(r) != _rounded(r) for r in RECORDS), "no service whose amount needs rounding"
    assert any(r.quantity == Decimal("0.5") and r.tariff == Decimal("0.01") for r in RECORDS)
    assert {str(r.tariff) for r in RECORDS} >= {"1234.56", "0.01", "99999.99"}
    patients_with_two = {(r.code_mo, r.enp) for r in RECORDS
                         if len({x.diagnosis for x in RECORDS if (x.code_mo, x.enp) == (r.code_mo, r.enp)}) > 1}
    assert patients_with_two, "no patient with two diagnoses in one clinic"


# --- oracle: fractions, half up to kopecks ------------------------------------------------------

def _exact(r: Record) -> Fraction:
    return Fraction(str(r.quantity)) * Fraction(str(r.tariff))


def _rounded(r: Record) -> Fraction:
    return Fraction(floor(_exact(r) * 100 + Fraction(1, 2)), 100)


def _f(el: etree._Element, path: str) -> Fraction:
    return Fraction(_t(el, path))


def _t(el: etree._Element, path: str) -> str:
    found = el.find(path, NS)
    assert found is not None, path
    return found.text or ""


# --- the acts -----------------------------------------------------------------------------------

def test_every_act_validates_against_our_schema(acts: dict[tuple[str, str], etree._Element]) -> None:
    assert len(acts) == 6
    for key, act in acts.items():
        assert etree.QName(act).namespace == ACT_NS and etree.QName(act).localname == "ZL_LIST"
        assert validate_act(act) == [], key


def test_summav_is_the_exact_sum_of_services_rounded_each_to_kopecks(
        acts: dict[tuple[str, str], etree._Element]) -> None:
    for key, act in acts.items():
        expected = sum((_rounded(r) for r in GROUPS[key]), Fraction(0))
        assert _f(act, "a:SCHET/a:SUMMAV") == expected, key
        assert _f(act, "a:SCHET/a:SUMMAV") == sum(_f(z, "a:Z_SL/a:SUMV") for z in act.findall("a:ZAP", NS))
        for zap in act.findall("a:ZAP", NS):
            sls = zap.findall("a:Z_SL/a:SL", NS)
            assert _f(zap, "a:Z_SL/a:SUMV") == sum(_f(sl, "a:SUM_M") for sl in sls)
            for sl in sls:
                assert _f(sl, "a:SUM_M") == sum(_f(u, "a:SUMV_USL") for u in sl.findall("a:USL", NS))


def test_rounding_is_per_service_and_half_up() -> None:
    base = GROUPS[("020101", "smo-alfa")][0]
    tiny = [replace(base, record_id="T1", quantity=Decimal("0.5"), tariff=Decimal("0.01")),
            replace(base, record_id="T2", quantity=Decimal("0.5"), tariff=Decimal("0.01")),
            replace(base, record_id="T3", quantity=Decimal("0.5"), tariff=Decimal("0.05"))]
    act = _act(tiny)
    assert [u.text for u in act.iterfind(".//a:SUMV_USL", NS)] == ["0.01", "0.01", "0.03"]  # 0.025 → 0.03, not 0.02
    assert _t(act, "a:SCHET/a:SUMMAV") == "0.05"
    # Rounding the exact total instead (0.005 + 0.005 + 0.025 = 0.035) would bill 0.04.
    assert Fraction(floor(sum(_exact(r) for r in tiny) * 100 + Fraction(1, 2)), 100) == Fraction("0.04")
    assert validate_act(act) == []


def test_header_and_bill(acts: dict[tuple[str, str], etree._Element]) -> None:
    for (code_mo, insurer), act in acts.items():
        zaps = act.findall("a:ZAP", NS)
        assert _t(act, "a:ZGLV/a:VERSION") == "3.1"
        assert _t(act, "a:ZGLV/a:DATA") == _t(act, "a:SCHET/a:DSCHET") == "2026-11-05"
        assert _t(act, "a:ZGLV/a:FILENAME") == f"HM{code_mo}S{INSURERS[insurer]}_26101"
        assert int(_t(act, "a:ZGLV/a:SD_Z")) == len(zaps)
        assert [_t(z, "a:N_ZAP") for z in zaps] == [str(n) for n in range(1, len(zaps) + 1)]
        assert _t(act, "a:SCHET/a:CODE_MO") == code_mo
        assert (_t(act, "a:SCHET/a:YEAR"), _t(act, "a:SCHET/a:MONTH")) == ("2026", "10")
        assert _t(act, "a:SCHET/a:NSCHET") == "A-2610-1"
        assert _t(act, "a:SCHET/a:PLAT") == INSURERS[insurer]
        assert re.fullmatch(r"[0-9]{1,8}", _t(act, "a:SCHET/a:CODE"))
        assert act.find("a:SCHET/a:COMENTS", NS) is None
        assert {_t(z, "a:PR_NOV") for z in zaps} == {"0"}
    codes = {_t(act, "a:SCHET/a:CODE") for act in acts.values()}
    assert len(codes) == len(acts), "two acts of one period share SCHET/CODE"


def test_one_zap_per_patient_and_diagnosis_each_service_once(acts: dict[tuple[str, str], etree._Element]) -> None:
    for key, act in acts.items():
        by_id = {r.record_id: r for r in GROUPS[key]}
        zaps = act.findall("a:ZAP", NS)
        cases = [(_t(z, "a:PACIENT/a:ENP"), _t(z, "a:Z_SL/a:SL/a:DS1")) for z in zaps]
        assert len(cases) == len(set(cases)) == len({(r.enp, r.diagnosis) for r in by_id.values()})
        assert sorted(u.text or "" for u in act.iterfind(".//a:USL/a:IDSERV", NS)) == sorted(by_id)
        assert len({_t(z, "a:Z_SL/a:IDCASE") for z in zaps}) == len(zaps)
        for zap, (enp, ds) in zip(zaps, cases):
            assert len(zap.findall("a:Z_SL", NS)) == 1 and len(zap.findall("a:Z_SL/a:SL", NS)) == 1
            assert _t(zap, "a:PACIENT/a:ID_PAC") == _t(zap, "a:PACIENT/a:NPOLIS") == enp
            assert _t(zap, "a:PACIENT/a:SMO") == INSURERS[key[1]]
            sl = zap.find("a:Z_SL/a:SL", NS)
            assert sl is not None
            mine = [by_id[u.text or ""] for u in sl.iterfind("a:USL/a:IDSERV", NS)]
            assert {(r.enp, r.diagnosis) for r in mine} == {(enp, ds)}
            assert {_t(zap, "a:PACIENT/a:VPOLIS")} == {r.policy_type for r in mine}
            day = date.fromisoformat
            z1, z2 = day(_t(zap, "a:Z_SL/a:DATE_Z_1")), day(_t(zap, "a:Z_SL/a:DATE_Z_2"))
            d1, d2 = day(_t(sl, "a:DATE_1")), day(_t(sl, "a:DATE_2"))
            assert (z1, z2) == (min(r.date_in for r in mine), max(r.date_out for r in mine))
            assert z1 <= d1 <= d2 <= z2
            for usl in sl.findall("a:USL", NS):
                r = by_id[_t(usl, "a:IDSERV")]
                assert d1 <= day(_t(usl, "a:DATE_IN")) == r.date_in <= day(_t(usl, "a:DATE_OUT")) == r.date_out <= d2
                assert _t(usl, "a:DS") == r.diagnosis and _t(usl, "a:LPU") == r.code_mo
                assert _t(usl, "a:CODE_USL") == r.service_code and _t(usl, "a:PRVS") == r.specialty
                assert _f(usl, "a:KOL_USL") == Fraction(str(r.quantity))
                assert _f(usl, "a:TARIF") == Fraction(str(r.tariff))
                assert _f(usl, "a:SUMV_USL") == _rounded(r)
                s = r.doctor_snils
                assert _t(usl, "a:CODE_MD") == f"{s[:3]}-{s[3:6]}-{s[6:9]} {s[9:]}"
            closing = sl.findall("a:USL", NS)[-1]  # the case's doctor is the one of its last service
            assert (_t(sl, "a:IDDOKT"), _t(sl, "a:PRVS")) == (_t(closing, "a:CODE_MD"), _t(closing, "a:PRVS"))


def test_services_within_a_case_are_in_date_order(acts: dict[tuple[str, str], etree._Element]) -> None:
    for act in acts.values():
        for sl in act.iterfind(".//a:SL", NS):
            dates = [u.text or "" for u in sl.iterfind("a:USL/a:DATE_IN", NS)]
            assert dates == sorted(dates)


def test_case_defaults_are_written_and_can_be_overridden() -> None:
    records = GROUPS[("020202", "smo-gamma")]
    usual = _act(records)
    assert [_t(usual, f"a:ZAP/a:Z_SL/a:{n}") for n in ("USL_OK", "VIDPOM", "FOR_POM", "RSLT", "ISHOD", "IDSP")] \
        == ["3", "13", "3", "304", "304", "28"]
    assert [_t(usual, f"a:ZAP/a:Z_SL/a:SL/a:{n}") for n in ("PROFIL", "DET", "VERS_SPEC")] == ["97", "0", "V021"]
    regional = _act(records, defaults=CaseDefaults(vidpom=12, profil=57))
    assert {v.text for v in regional.iterfind(".//a:VIDPOM", NS)} == {"12"}
    assert {p.text for p in regional.iterfind(".//a:PROFIL", NS)} == {"57"}
    assert validate_act(regional) == []


# --- determinism and digests ----------------------------------------------------------------------

def test_rebuilding_gives_the_same_act_whatever_the_order_of_records(
        acts: dict[tuple[str, str], etree._Element]) -> None:
    for key, act in acts.items():
        shuffled = list(GROUPS[key])
        random.Random(7).shuffle(shuffled)
        assert shuffled != GROUPS[key]
        again = _act(shuffled)
        assert etree.tostring(again) == etree.tostring(act)
        assert act_digest(again) == act_digest(act)


def test_a_changed_record_changes_the_digest() -> None:
    records = GROUPS[("020101", "smo-beta")]
    digest = act_digest(_act(records))
    for change in ({"tariff": records[3].tariff + Decimal("0.01")}, {"specialty": "9999"},
                   {"date_out": records[3].date_out + timedelta(days=1)}):
        changed = [replace(r, **change) if i == 3 else r for i, r in enumerate(records)]
        assert act_digest(_act(changed)) != digest, change
    assert act_digest(_act(records, act_number="A-2610-2")) != digest


def test_the_digest_is_of_the_act_alone_wherever_it_is_embedded() -> None:
    act = _act(GROUPS[("020202", "smo-alfa")])
    wrapper = etree.Element("{urn://example/envelope}Envelope", nsmap={"e": "urn://example/envelope",
                                                                     "x": "urn://example/other"})
    etree.SubElement(wrapper, "{urn://example/envelope}Payload").append(_copy(act))
    embedded = wrapper[0][0]
    assert embedded.nsmap != act.nsmap
    assert act_digest(embedded) == act_digest(act)
    canonical = etree.tostring(act, method="c14n", exclusive=True)
    assert act_digest(act) == hashlib.sha256(canonical).hexdigest()


# --- refusals -------------------------------------------------------------------------------------

@pytest.mark.parametrize("change", [{"period": "2026-11"}, {"insurer": "smo-beta", "insurer_code": "02003"},
                                    {"insurer_code": "02099"}, {"code_mo": "020202"}])
def test_records_of_another_act_are_refused_by_name(change: dict[str, str]) -> None:
    records = list(GROUPS[("020101", "smo-alfa")])
    stray = records[4] = replace(records[4], **change)
    with pytest.raises(ValueError, match=re.escape(repr(stray.record_id))):
        _act(records)


def test_records_the_register_cannot_carry_are_refused_by_name() -> None:
    records = list(GROUPS[("020101", "smo-gamma")])
    again = next(i for i, r in enumerate(records) if i > 0 and r.enp in {x.enp for x in records[:i]})
    cases = {
        2: {"twice": records + [records[2]],
            "no diagnosis": [replace(r, diagnosis=None) if i == 2 else r for i, r in enumerate(records)],
            "tenth of a kopeck": [replace(r, tariff=Decimal("10.005")) if i == 2 else r
                                  for i, r in enumerate(records)]},
        0: {"not a month": [replace(r, period="2026-13") for r in records]},
        again: {"another policy": [replace(r, policy_type="1") if i == again else r for i, r in enumerate(records)]},
    }
    for culprit, bad_lists in cases.items():
        for name, bad in bad_lists.items():
            with pytest.raises(ValueError, match=re.escape(repr(records[culprit].record_id))):
                _act(bad)
    with pytest.raises(ValueError, match="at least one record"):
        _act([])
    with pytest.raises(ValueError, match="version"):
        _act(records, version=0)


def test_a_correction_is_marked_and_names_the_act_it_replaces() -> None:
    records = GROUPS[("020202", "smo-beta")]
    first = _act(records)
    second = _act(records, act_number="A-2610-1К", version=2, replaces="A-2610-1")
    assert validate_act(second) == []
    assert {z.text for z in second.iterfind("a:ZAP/a:PR_NOV", NS)} == {"1"}
    assert "A-2610-1" in _t(second, "a:SCHET/a:COMENTS")
    assert _t(second, "a:ZGLV/a:FILENAME").endswith("_26102")
    assert _t(second, "a:SCHET/a:SUMMAV") == _t(first, "a:SCHET/a:SUMMAV")
    assert _t(second, "a:SCHET/a:CODE") != _t(first, "a:SCHET/a:CODE")
    same_number = _act(records, version=2, replaces="A-2610-1")
    assert _t(same_number, "a:SCHET/a:CODE") != _t(first, "a:SCHET/a:CODE"), "CODE must differ per version"
    assert act_digest(second) != act_digest(first)
    with pytest.raises(ValueError, match="replaces"):
        _act(records, version=1, replaces="A-2610-1")
    with pytest.raises(ValueError, match="replaces"):
        _act(records, version=2)


def test_validate_act_reports_what_is_wrong_and_where() -> None:
    act = _act(GROUPS[("020101", "smo-alfa")])
    no_sum = _copy(act)
    schet = no_sum.find("a:SCHET", NS)
    assert schet is not None
    schet.remove(schet[7])
    errors = validate_act(no_sum)
    assert len(errors) == 1 and errors[0].startswith("ZL_LIST/SCHET: ") and "SUMMAV" in errors[0]

    broken = _copy(act)
    zaps = broken.findall("a:ZAP", NS)
    prvs = zaps[2].find("a:Z_SL/a:SL/a:PRVS", NS)
    assert prvs is not None
    prvs.addprevious(etree.Element(f"{{{ACT_NS}}}PRVS_R"))  # a regional element: not ours
    k, zap = next((k, z) for k, z in enumerate(zaps, start=1) if len(z.findall(".//a:USL", NS)) > 1)
    zap.findall(".//a:USL", NS)[1][10].text = "1.005"  # SUMV_USL
    wrapper = etree.Element("wrapper")
    wrapper.append(broken)
    where = sorted(e.split(": ")[0] for e in validate_act(broken))
    assert where == sorted([f"ZL_LIST/ZAP[{k}]/Z_SL/SL/USL[2]/SUMV_USL", "ZL_LIST/ZAP[3]/Z_SL/SL/PRVS_R"])


# --- the act is the real format ---------------------------------------------------------------------

def test_the_reference_schema_is_a_byte_exact_copy() -> None:
    data = REFERENCE_XSD.read_bytes()
    assert hashlib.sha256(data).hexdigest() == REFERENCE_SHA256
    shared = SHARED / "oms" / REFERENCE_XSD.name
    if shared.exists():
        assert shared.read_bytes() == data


def _schema_tree(xsd: Path) -> dict[str, tuple[str, str, str, list[str]]]:
    """Each element path (local names) → (type, minOccurs, maxOccurs, child names in order)."""
    doc = etree.parse(str(xsd)).getroot()
    assert doc.find(f".//{XS}choice") is None and doc.find(f".//{XS}all") is None
    assert all(e.get("type") for e in doc.iter(f"{XS}element")), "an anonymous type would escape the walk"
    types = {t.get("name"): t for t in doc.findall(f"{XS}complexType")}
    tree: dict[str, tuple[str, str, str, list[str]]] = {}

    def walk(path: str, el: etree._Element) -> None:
        type_name = (el.get("type") or "").split(":")[-1]
        complex_type = types.get(type_name)
        children = complex_type.findall(f"{XS}sequence/{XS}element") if complex_type is not None else []
        tree[path] = (type_name, el.get("minOccurs", "1"), el.get("maxOccurs", "1"),
                      [c.get("name") or "" for c in children])
        for child in children:
            walk(f"{path}/{child.get('name')}", child)

    root = doc.find(f"{XS}element")
    assert root is not None
    walk(root.get("name") or "", root)
    return tree


def _simple_types(xsd: Path) -> dict[str, list[tuple[str, str]]]:
    doc = etree.parse(str(xsd)).getroot()
    return {t.get("name") or "": [(etree.QName(f).localname, (f.get("value") or f.get("base") or "").split(":")[-1])
                                  for f in t.iter(f"{XS}*") if f is not t]
            for t in doc.findall(f"{XS}simpleType")}


def _is_subsequence(small: list[str], big: list[str]) -> bool:
    it = iter(big)
    return all(name in it for name in small)


def test_our_schema_is_derived_from_the_reference() -> None:
    ours, ref = _schema_tree(OUR_XSD), _schema_tree(REFERENCE_XSD)
    assert set(ours) - set(ref) == {ENP_PATH}
    for path, (type_name, low, high, children) in ours.items():
        if path == ENP_PATH:
            assert (low, high) == ("0", "1")
            continue
        assert (type_name, low, high) == ref[path][:3], path
        assert _is_subsequence([c for c in children if f"{path}/{c}" != ENP_PATH], ref[path][3]), path
    assert ours["ZL_LIST/ZAP/PACIENT"][3][2:4] == ["NPOLIS", "ENP"]
    required = {f"{path}/{c}" for path in ours if path in ref for c in ref[path][3]
                if ref[f"{path}/{c}"][1] != "0"}
    assert required - set(ours) == REGIONAL_REQUIRED
    ours_types, ref_types = _simple_types(OUR_XSD), _simple_types(REFERENCE_XSD)
    assert set(ours_types) - set(ref_types) == {"ENP"}
    assert {n for n in ours_types if n in ref_types and ours_types[n] != ref_types[n]} == {"VERSION"}


def _element_paths(el: etree._Element, prefix: str = "") -> set[str]:
    path = f"{prefix}{etree.QName(el).localname}"
    return {path}.union(*(_element_paths(child, path + "/") for child in el))


def test_every_element_path_of_the_act_is_in_the_reference(acts: dict[tuple[str, str], etree._Element]) -> None:
    reference = set(_schema_tree(REFERENCE_XSD))
    for act in acts.values():
        assert _element_paths(act) - reference == {ENP_PATH}
    corrected = _act(GROUPS[("020101", "smo-alfa")], version=2, replaces="A-2610-1")
    assert "ZL_LIST/SCHET/COMENTS" in _element_paths(corrected) <= reference | {ENP_PATH}


def test_an_act_with_our_deviations_undone_is_valid_for_the_reference(
        acts: dict[tuple[str, str], etree._Element]) -> None:
    reference = etree.XMLSchema(etree.parse(str(REFERENCE_XSD)))
    for key, act in acts.items():
        ufa = _copy(_act(GROUPS[key], version=2, replaces="A-2610-1"))
        for el in ufa.iter():
            el.tag = f"{{OMS-D1}}{etree.QName(el).localname}"
        etree.cleanup_namespaces(ufa)
        assert not reference.validate(ufa), "the regional elements are required by the reference"
        for pacient in ufa.iterfind(".//{OMS-D1}PACIENT"):
            pacient.remove(pacient[3])  # ENP
        _insert_before(ufa.find("{OMS-D1}SCHET/{OMS-D1}YEAR"), "PODR", "1")
        for sl in ufa.iterfind(".//{OMS-D1}SL"):
            _insert_before(sl.find("{OMS-D1}PRVS"), "PRVS_R", sl.findtext("{OMS-D1}PRVS") or "")
            _insert_before(sl.find("{OMS-D1}SUM_M"), "TARIF_R", sl.findtext("{OMS-D1}SUM_M") or "")
        assert reference.validate(ufa), (key, str(reference.error_log))


def _insert_before(el: etree._Element | None, name: str, text: str) -> None:
    assert el is not None
    new = etree.Element(f"{{OMS-D1}}{name}")
    new.text = text
    el.addprevious(new)


def _copy(el: etree._Element) -> etree._Element:
    return etree.fromstring(etree.tostring(el))


# --- reading service records ------------------------------------------------------------------------

def _record_xml(r: Record) -> etree._Element:
    def sub(parent: etree._Element, name: str, text: str | None = None) -> etree._Element:
        el = etree.SubElement(parent, S + name)
        el.text = text
        return el

    root = etree.Element(S + "ServiceRecord", nsmap={"sr": SERVICE_RECORD_NS})
    sub(root, "RecordId", r.record_id)
    sub(root, "Period", r.period)
    org = sub(root, "Organisation")
    sub(org, "Oid", r.org_oid)
    sub(org, "CodeMO", r.code_mo)
    patient = sub(root, "Patient")
    sub(patient, "ENP", r.enp)
    sub(patient, "PolicyType", r.policy_type)
    sub(patient, "Insurer", r.insurer)
    service = sub(root, "Service")
    sub(service, "Code", r.service_code)
    sub(service, "DateIn", r.date_in.isoformat())
    sub(service, "DateOut", r.date_out.isoformat())
    sub(service, "Quantity", str(r.quantity))
    sub(service, "Tariff", str(r.tariff))
    if r.diagnosis is not None:
        sub(service, "Diagnosis", r.diagnosis)
    doctor = sub(root, "Doctor")
    sub(doctor, "SNILS", r.doctor_snils)
    sub(doctor, "Specialty", r.specialty)
    return root


def test_records_read_from_service_record_payloads_build_the_same_act() -> None:
    schema = etree.XMLSchema(etree.parse(str(RECORD_XSD)))
    records = GROUPS[("020202", "smo-gamma")]
    read = []
    for r in records:
        el = etree.fromstring(etree.tostring(_record_xml(r)))
        assert schema.validate(el), schema.error_log
        read.append(Record.from_element(el, r.insurer_code))
    assert read == records
    assert act_digest(_act(read)) == act_digest(_act(records))
    # A payload without Diagnosis reads as a record without one, which build_act refuses by name.
    no_diagnosis = Record.from_element(_record_xml(replace(records[0], diagnosis=None)), "02007")
    assert no_diagnosis.diagnosis is None
    with pytest.raises(ValueError, match=re.escape(repr(records[0].record_id))):
        _act([no_diagnosis])
    with pytest.raises(ValueError, match="ServiceRecord"):
        Record.from_element(etree.Element(f"{{{ACT_NS}}}ZL_LIST"), "02007")
