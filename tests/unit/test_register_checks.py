"""The ФЛК-side checks: other people's valid registers pass, and each rule catches what it is for.

The real registers are region 75's own valid test files (tests/data/oms/region75); the L-file
paired with H_VALID here is written by hand for its one patient, valid against region 75's
PERS schema, so every check has a passing pair to break one thing in.
"""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
from lxml import etree

from gateway.oms.archive import from_bytes
from gateway.oms.checks import check_register

ROOT = Path(__file__).resolve().parents[2]
REAL = ROOT / "tests" / "data" / "oms" / "region75"
R75 = ROOT / "schemas_xsd" / "oms" / "region75"
MP31, MP32, PERS31, PERS32 = (R75 / f"tfoms75-actual-{n}.xsd" for n in ("MP-3.1", "MP-3.2", "PERS-3.1", "PERS-3.2"))
L_FILE = """<?xml version="1.0" encoding="windows-1251"?>
<PERS_LIST><ZGLV><VERSION>3.1</VERSION><DATA>2021-04-23</DATA><FILENAME>LM750096T75_21041</FILENAME>
<FILENAME1>HM750096T75_21041</FILENAME1></ZGLV>
<PERS><ID_PAC>41524</ID_PAC><FAM>Сидоров</FAM><IM>Пётр</IM><W>1</W><DR>1961-07-30</DR><DOST>1</DOST>
<DOCTYPE>14</DOCTYPE><DOCSER>76 05</DOCSER><DOCNUM>123456</DOCNUM><SNILS>112-233-445 95</SNILS></PERS></PERS_LIST>
""".encode("cp1251")


def real(name: str) -> etree._Element:
    return from_bytes((REAL / name).read_bytes(), name)


@pytest.fixture
def pair() -> tuple[etree._Element, etree._Element]:
    return real("tfoms75-test-H_VALID.XML"), from_bytes(L_FILE, "L")


def codes(h: etree._Element, l_file: etree._Element | None, **kw: object) -> list[tuple[str, str | None]]:
    found = check_register(h, l_file, h_schema=MP31, l_schema=PERS31 if l_file is not None else None, **kw)  # type: ignore[arg-type]
    return [(e.oshib, e.element) for e in found.all]


def test_the_real_registers_pass_against_the_schema_of_their_period() -> None:
    assert check_register(real("tfoms75-test-H_VALID.XML"), None, h_schema=MP31, l_schema=None).all == []
    # 2022-01, the MP 3.2 layout, although its ZGLV/VERSION still says 3.1: checked by period, as region 75 does
    h32 = real("tfoms75-test-H_VALID_3.2.XML")
    assert (h32.findtext("ZGLV/VERSION"), h32.findtext("SCHET/YEAR")) == ("3.1", "2022")
    assert check_register(h32, None, h_schema=MP32, l_schema=None).all == []
    # the V021 check passes with the specialties they use, and names their services without them
    assert check_register(h32, None, h_schema=MP32, l_schema=None, specialties={"17", "10"}).all == []
    assert check_register(real("tfoms75-test-H_VALID.XML"), None, h_schema=MP31, l_schema=None,
                          specialties={"17"}).all == []


def test_against_the_other_editions_schema_each_is_refused_where_the_editions_differ() -> None:
    wrong = check_register(real("tfoms75-test-H_VALID.XML"), None, h_schema=MP32, l_schema=None).all
    assert [(e.oshib, e.element, e.n_zap, e.idserv) for e in wrong] == [("XSD", "USL/PRVS", "1", "477246")]
    wrong = check_register(real("tfoms75-test-H_VALID_3.2.XML"), None, h_schema=MP31, l_schema=None).all
    assert {(e.oshib, e.element) for e in wrong} == {("XSD", "PACIENT/ENP"), ("XSD", "USL/MR_USL_N")}


def test_the_pair_passes(pair: tuple[etree._Element, etree._Element]) -> None:
    assert codes(*pair) == []


def _set(root: etree._Element, path: str, text: str | None) -> etree._Element:
    changed = copy.deepcopy(root)
    el = changed.find(path)
    assert el is not None, path
    if text is None:
        el.getparent().remove(el)
    else:
        el.text = text
    return changed


@pytest.mark.parametrize("path,text,expected", [
    ("ZGLV/SD_Z", "2", ("ZL.SD_Z", "ZGLV/SD_Z")),
    ("ZAP/Z_SL/SUMV", "115.10", ("H_0600/05500", "Z_SL/SUMV")),
    ("SCHET/SUMMAV", "115.08", ("ZL.SUMMAV", "SCHET/SUMMAV")),
    ("ZAP/Z_SL/SL/DATE_1", "2021-04-04", ("ZL.DATES", "SL/DATE_1")),
    ("ZAP/Z_SL/SL/USL/DATE_OUT", "2021-04-06", ("ZL.DATES", "USL/DATE_IN")),
    ("ZGLV/FILENAME", "HM750096T75_21042", ("ZL.FILENAME", "ZGLV/FILENAME")),
    ("ZAP/PACIENT/ID_PAC", "41525", ("003F.00.3070", "PACIENT/ID_PAC")),
])
def test_each_h_file_rule_catches_its_breach(pair: tuple[etree._Element, etree._Element], path: str, text: str,
                                            expected: tuple[str, str]) -> None:
    h, l_file = pair
    assert expected in codes(_set(h, path, text), l_file)


def test_plat_is_required_from_a_medical_organisation_to_an_insurer(pair: tuple[etree._Element, etree._Element]) -> None:
    h, l_file = pair
    assert codes(_set(h, "SCHET/PLAT", None), l_file) == []  # M→T: not required (Q015 003F.00.0010)
    to_insurer = _set(_set(h, "SCHET/PLAT", None), "ZGLV/FILENAME", "HM750096S75001_21041")
    its_l_file = _set(_set(l_file, "ZGLV/FILENAME", "LM750096S75001_21041"), "ZGLV/FILENAME1", "HM750096S75001_21041")
    assert codes(to_insurer, its_l_file) == [("003F.00.0010", "SCHET/PLAT")]


def test_npolis_may_be_left_out_only_for_a_single_format_policy_with_its_enp() -> None:
    h32 = real("tfoms75-test-H_VALID_3.2.XML")
    assert check_register(_set(h32, "ZAP/PACIENT/VPOLIS", "1"), None, h_schema=MP32, l_schema=None).all[0].oshib \
        == "003F.00.2170"
    assert check_register(_set(h32, "ZAP/PACIENT/ENP", None), None, h_schema=MP32, l_schema=None).all[0].oshib \
        == "003F.00.2170"


@pytest.mark.parametrize("path,text,expected", [
    ("PERS/FAM", None, ("003F.00.1530", "PERS/FAM")),            # no surname and no DOST 2
    ("PERS/DOST", "2", ("003F.00.1540", "PERS/FAM")),            # DOST 2 says no surname, but there is one
    ("PERS/IM", None, ("003F.00.1570", "PERS/IM")),
    ("ZGLV/FILENAME1", "HM750096T75_21042", ("ZL.FILENAME", "ZGLV/FILENAME1")),
    ("PERS/W", "3", ("XSD", "PERS/W")),
])
def test_each_l_file_rule_catches_its_breach(pair: tuple[etree._Element, etree._Element], path: str,
                                            text: str | None, expected: tuple[str, str]) -> None:
    h, l_file = pair
    assert expected in codes(h, _set(l_file, path, text))


def test_a_patronymic_with_dost_1_is_a_contradiction(pair: tuple[etree._Element, etree._Element]) -> None:
    h, l_file = pair
    pers = l_file.find("PERS")
    etree.SubElement(pers, "OT").text = "Иванович"
    pers.find("IM").addnext(pers[-1])  # OT after IM, where the schema has it
    assert codes(h, l_file) == [("003F.00.1610", "PERS/OT")]


def test_an_old_style_policy_needs_the_identity_document(pair: tuple[etree._Element, etree._Element]) -> None:
    h, l_file = pair
    old_policy = _set(h, "ZAP/PACIENT/VPOLIS", "1")
    assert codes(old_policy, l_file) == []
    assert codes(old_policy, _set(l_file, "PERS/DOCSER", None)) == [("003F.00.1730", "PERS/DOCSER")]
    assert codes(h, _set(l_file, "PERS/DOCSER", None)) == []  # VPOLIS 3: not required


def test_specialties_outside_the_receivers_directory_name_their_service(
        pair: tuple[etree._Element, etree._Element]) -> None:
    h, l_file = pair
    found = check_register(h, l_file, h_schema=MP31, l_schema=PERS31, specialties={"76"}).all
    assert [(e.oshib, e.element, e.n_zap, e.sl_id, e.idserv) for e in found] == [
        ("001F.00.0310", "SL/PRVS", "1", "263695", None), ("001F.00.0661", "USL/PRVS", "1", "263695", "477246")]


def test_a_schema_complaint_names_the_record_it_is_in(pair: tuple[etree._Element, etree._Element]) -> None:
    h, l_file = pair
    (error,) = check_register(_set(h, "ZAP/Z_SL/SL/USL/KOL_USL", "x"), l_file, h_schema=MP31,
                              l_schema=PERS31).all
    assert (error.oshib, error.element, error.n_zap, error.idcase, error.sl_id, error.idserv, error.id_pac) == (
        "XSD", "USL/KOL_USL", "1", "263695", "263695", "477246", "41524")
    (person,) = check_register(h, _set(l_file, "PERS/DR", "1961-13-30"), h_schema=MP31, l_schema=PERS31).l
    assert (person.element, person.id_pac) == ("PERS/DR", "41524")
