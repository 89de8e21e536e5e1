"""OMS register files: names by the federal rule, the ZIP, layouts from regional schemas, the ФЛК protocol."""
from __future__ import annotations

import io
import zipfile
from datetime import date
from pathlib import Path

import pytest
from lxml import etree

from gateway.oms import OmsFileError
from gateway.oms.archive import from_bytes, members, pack, to_bytes, unpack_register
from gateway.oms.flk import FlkError, FlkProtocol, read_flk, read_protocol_file, write_flk
from gateway.oms.layout import LayoutError, load_layout, render
from gateway.oms.names import RegisterName
from gateway.oms.services import named_by, service_rows

ROOT = Path(__file__).resolve().parents[2]
OMS = ROOT / "schemas_xsd" / "oms"
REAL = ROOT / "tests" / "data" / "oms" / "region75"


# --- names ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("text,parts", [
    ("HM750096T75_21041", ("H", "M", "750096", "T", "75", 2021, 4, 1)),          # region 75's test file
    ("HM250200T25_16102031", ("H", "M", "250200", "T", "25", 2016, 10, 2031)),  # pack 2031 of 2016-10
    ("LM770001S77001_26102", ("L", "M", "770001", "S", "77001", 2026, 10, 2)),
    ("LTM750096T75_21041", ("LT", "M", "750096", "T", "75", 2021, 4, 1)),
])
def test_names_are_read_by_the_federal_rule(text: str, parts: tuple[object, ...]) -> None:
    name = RegisterName.parse(text)
    assert (name.kind, name.sender, name.sender_code, name.receiver, name.receiver_code, name.year, name.month,
            name.pack) == parts
    assert str(name) == text


def test_a_name_knows_its_pair_archive_and_protocol() -> None:
    h = RegisterName("H", "M", "770001", "S", "77001", 2026, 10, 1)
    assert str(h) == "HM770001S77001_26101" and h.archive == "HM770001S77001_26101.zip"
    assert str(h.paired("L")) == "LM770001S77001_26101" and h.paired("L").xml == "LM770001S77001_26101.xml"
    assert h.protocol == "VM770001S77001_26101"  # V + the name without its first letter
    assert h.paired("L").protocol == "FM770001S77001_26101"


@pytest.mark.parametrize("bad", ["HM750096T75_2104", "HX750096T75_21041", "HM750096T75_21131", "HM750096T75-21041",
                                 "HM750096T75_21040", ""])
def test_what_is_not_a_register_name_is_refused_with_the_rule(bad: str) -> None:
    with pytest.raises(OmsFileError, match="register file name"):
        RegisterName.parse(bad)


def test_a_name_longer_than_26_characters_cannot_be_made() -> None:
    with pytest.raises(OmsFileError, match="26"):
        RegisterName("H", "M", "770001", "S", "77001", 2026, 10, 12345678)  # 27 characters
    assert len(str(RegisterName("H", "M", "770001", "S", "77001", 2026, 10, 1234567))) == 26


# --- the archive ------------------------------------------------------------------------------------

def _pair_zip(h: bytes = b"<ZL_LIST/>", l_file: bytes | None = b"<PERS_LIST/>", name: str = "HM770001S77001_26101",
              when: date = date(2026, 11, 5)) -> bytes:
    files = [(f"{name}.xml", h)] + ([("L" + name[1:] + ".xml", l_file)] if l_file is not None else [])
    return pack(files, when)


def test_packing_is_deterministic_and_the_pair_comes_back() -> None:
    first, again = _pair_zip(), _pair_zip()
    assert first == again
    assert _pair_zip(when=date(2026, 11, 6)) != first
    with zipfile.ZipFile(io.BytesIO(first)) as z:
        assert z.namelist() == ["HM770001S77001_26101.xml", "LM770001S77001_26101.xml"]
        assert all(i.compress_type == zipfile.ZIP_DEFLATED for i in z.infolist())
    pair = unpack_register(first, "HM770001S77001_26101.zip")
    assert str(pair.name) == "HM770001S77001_26101"
    assert pair.h_file.tag == "ZL_LIST" and pair.l_file is not None and pair.l_file.tag == "PERS_LIST"


def test_an_archive_without_its_l_file_is_read_and_the_gap_left_to_the_checks() -> None:
    assert unpack_register(_pair_zip(l_file=None), "HM770001S77001_26101.zip").l_file is None


@pytest.mark.parametrize("archive,name,rule", [
    (b"not a zip", "HM770001S77001_26101.zip", "not a readable ZIP"),
    (_pair_zip(), "HM770001S77001_26102.zip", "no HM770001S77001_26102.xml inside"),
    (_pair_zip(), "LM770001S77001_26101.zip", "named after its H-file"),
    (_pair_zip(), "acts.zip", "not a register file name"),
    (_pair_zip(h=b"<!DOCTYPE x [<!ENTITY e 'x'>]><ZL_LIST>&e;</ZL_LIST>"), "HM770001S77001_26101.zip", "DOCTYPE"),
])
def test_an_archive_that_is_not_the_pair_is_refused_with_the_reason(archive: bytes, name: str, rule: str) -> None:
    with pytest.raises(OmsFileError, match=rule):
        unpack_register(archive, name)


def test_an_archive_too_big_to_inflate_or_with_too_many_files_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import gateway.oms.archive as archive

    bomb = pack([("HM770001S77001_26101.xml", b"<ZL_LIST>" + b" " * 100_000 + b"</ZL_LIST>")], date(2026, 11, 5))
    assert len(bomb) < 2_000
    monkeypatch.setattr(archive, "MAX_INFLATED", 50_000)
    with pytest.raises(OmsFileError, match="inflates to more than 50000"):
        members(bomb, "HM770001S77001_26101.zip")
    many = pack([(f"f{i}.xml", b"<x/>") for i in range(archive.MAX_MEMBERS + 1)], date(2026, 11, 5))
    with pytest.raises(OmsFileError, match="files in the archive"):
        members(many, "many.zip")


def test_files_are_windows_1251_declared_like_real_registers() -> None:
    root = etree.Element("PERS_LIST")
    etree.SubElement(root, "FAM").text = "Щукина"
    data = to_bytes(root)
    assert data.startswith(b'<?xml version="1.0" encoding="windows-1251"?>\n')
    assert "Щукина".encode("cp1251") in data and "Щукина".encode() not in data
    assert from_bytes(data, "x.xml").findtext("FAM") == "Щукина"
    real = (REAL / "tfoms75-test-H_VALID.XML").read_bytes()
    assert real.startswith(b'<?xml version="1.0" encoding="windows-1251"?>')


# --- layouts from the regions' schemas ----------------------------------------------------------------

def test_a_layout_is_the_schemas_order_including_the_regions_own() -> None:
    promed = load_layout(OMS / "bashkortostan" / "promed-ufa-OMS-D1-1-NEW.xsd")
    region75 = load_layout(OMS / "region75" / "tfoms75-actual-MP-3.1.xsd")
    assert promed.namespace == "OMS-D1" and region75.namespace is None
    z_sl = [c.name for c in promed.slot("ZL_LIST/ZAP/Z_SL").children]
    assert z_sl.index("IDSP") < z_sl.index("SL")  # ProMed: payment method and sum before the cases
    z_sl = [c.name for c in region75.slot("ZL_LIST/ZAP/Z_SL").children]
    assert z_sl.index("SL") < z_sl.index("IDSP")  # region 75: the federal order
    assert [c.name for c in promed.slot("ZL_LIST/SCHET").children][:3] == ["CODE", "CODE_MO", "PODR"]
    assert region75.slot("ZL_LIST/SCHET/REF/FIRST_CODE") is not None
    assert "ZL_LIST/ZAP/Z_SL/SL/PODR" in region75.required_paths()
    assert "ZL_LIST/ZAP/Z_SL/SL/PODR" not in promed.required_paths()
    pers = load_layout(OMS / "bashkortostan" / "promed-ufa-OMS-D2-NEW.xsd").slot("PERS_LIST/PERS")
    assert [c.name for c in pers.children][-2:] == ["DOST", "DOST_P"]  # ProMed moves DOST to the end


def test_render_puts_values_in_the_schemas_order_and_refuses_what_does_not_fit() -> None:
    layout = load_layout(OMS / "region75" / "tfoms75-actual-PERS-3.2.xsd")
    values = {"ZGLV": {"FILENAME1": "HM1S2_26101", "FILENAME": "LM1S2_26101", "DATA": "2026-11-05", "VERSION": "3.2"},
              "PERS": [{"DR": "1980-01-01", "W": "1", "ID_PAC": "p1", "DOST": ["1", "3"], "OT": None}]}
    root = render(layout, values)
    assert etree.QName(root).namespace is None
    assert [c.tag for c in root.find("ZGLV")] == ["VERSION", "DATA", "FILENAME", "FILENAME1"]
    assert [c.tag for c in root.find("PERS")] == ["ID_PAC", "W", "DR", "DOST", "DOST"]
    with pytest.raises(LayoutError, match="PERS_LIST/PERS/W: required"):
        render(layout, {**values, "PERS": [{"ID_PAC": "p1", "DR": "1980-01-01"}]})
    with pytest.raises(LayoutError, match="no place for PRVS_R"):
        render(layout, {**values, "PERS": [{**values["PERS"][0], "PRVS_R": "76"}]})  # type: ignore[dict-item]
    with pytest.raises(LayoutError, match="2 given"):
        render(layout, {**values, "PERS": [{**values["PERS"][0], "W": ["1", "2"]}]})  # type: ignore[dict-item]
    with pytest.raises(LayoutError, match="at least"):
        render(layout, {"ZGLV": values["ZGLV"], "PERS": []})


# --- the ФЛК protocol -----------------------------------------------------------------------------------

def _flk(fname_tag: str = "FNAME_I", pr: str = "") -> bytes:
    return ('<?xml version="1.0" encoding="windows-1251"?><FLK_P><FNAME>VM750096T75_21041</FNAME>'
            f"<{fname_tag}>HM750096T75_21041.XML</{fname_tag}>{pr}</FLK_P>").encode("cp1251")


def test_a_protocol_is_read_whichever_way_regions_write_it() -> None:
    pr = ("<PR><COMMENT>Специальность не найдена</COMMENT><IDSERV>477246</IDSERV><OSHIB>001F.00.0661</OSHIB>"
          "<ZN_POL>17</ZN_POL><BAS_EL>USL</BAS_EL><IM_POL>PRVS</IM_POL><N_ZAP>1</N_ZAP></PR><PR><OSHIB>904</OSHIB></PR>")
    for tag in ("FNAME_I", "FNAME_1"):  # region 75 writes FNAME_1
        protocol = read_flk(_flk(tag, pr), "VM750096T75_21041.xml")
        assert protocol.answers == "HM750096T75_21041"
        first, second = protocol.errors
        assert (first.oshib, first.element, first.n_zap, first.idserv, first.comment) == (
            "001F.00.0661", "USL/PRVS", "1", "477246", "Специальность не найдена")
        assert second.file_level and not first.file_level


@pytest.mark.parametrize("data,rule", [
    (b"<FLK_P><FNAME>V1</FNAME></FLK_P>", "no FNAME_I"),
    (_flk(pr="<PR><IM_POL>X</IM_POL></PR>"), r"PR\[1\] has no OSHIB"),
    (b'<FLK_P xmlns="urn:x"><FNAME_I>H</FNAME_I></FLK_P>', "no namespace"),
    (b"<ZL_LIST/>", "not FLK_P"),
])
def test_a_protocol_that_cannot_be_read_says_why(data: bytes, rule: str) -> None:
    with pytest.raises(OmsFileError, match=rule):
        read_flk(data, "V.xml")


def test_written_protocols_read_back_without_the_offending_values() -> None:
    protocol = FlkProtocol("VM770001S77001_26101", "HM770001S77001_26101", (
        FlkError("003F.00.2170", "NPOLIS", "PACIENT", n_zap="3", id_pac="p3", idcase="3", comment="нет полиса"),
        FlkError("XSD", "W", "PERS", id_pac="p4", comment="x" * 400)))
    data = write_flk(protocol)
    assert b"ZN_POL" not in data and data.startswith(b'<?xml version="1.0" encoding="windows-1251"?>')
    again = read_flk(data, "VM770001S77001_26101.xml")
    assert again.errors[0] == protocol.errors[0]
    assert len(again.errors[1].comment or "") == 250
    zipped = pack([("VM770001S77001_26101.xml", data), ("FM770001S77001_26101.xml", write_flk(
        FlkProtocol("FM770001S77001_26101", "LM770001S77001_26101", ())))], date(2026, 11, 5))
    assert [p.answers for p in read_protocol_file("VM770001S77001_26101.zip", zipped)] == [
        "LM770001S77001_26101", "HM770001S77001_26101"]
    with pytest.raises(OmsFileError, match="no protocol"):
        read_protocol_file("V.zip", pack([("readme.txt", b"")], date(2026, 11, 5)))


def test_an_error_names_the_services_its_keys_select() -> None:
    rows = service_rows(from_bytes((REAL / "tfoms75-test-H_VALID.XML").read_bytes(), "H"))
    assert [(r.n_zap, r.idcase, r.sl_id, r.idserv, r.id_pac) for r in rows] == [
        ("1", "263695", "263695", "477246", "41524")]
    assert named_by(FlkError("x", idserv="477246"), rows) == rows
    assert named_by(FlkError("x", n_zap="1", sl_id="263695"), rows) == rows
    assert named_by(FlkError("x"), rows) == rows  # the whole file
    assert named_by(FlkError("x", id_pac="41524"), rows) == rows
    with pytest.raises(OmsFileError, match="N_ZAP 2"):
        named_by(FlkError("x", n_zap="2"), rows)
    with pytest.raises(OmsFileError, match="IDSERV 477246"):
        named_by(FlkError("x", n_zap="1", idserv="477246", idcase="9"), rows)  # every key must match
