"""The ФЛК-side checks of a register: what a receiver checks before it pays, as ФЛК errors.

The same checks run on both sides: the act builder runs them on every register before it
is sent (a finding there is a bug or a record the gateway should have refused), the
insurer emulator answers with what they find, and the tests run them on real registers of
region 75, which must pass: other people's valid data is the test of a checker.

Each check carries the code of the implementation it comes from where one exists — a Q015
check id as [MF] implements it, an element-style id as [HC] writes it — and otherwise a
``ZL.`` code of this gateway's own; ../shared/research/oms-format.md §5 lists the rules:

==================  ==========================================================================
code                rule
==================  ==========================================================================
``XSD``             the file against its region's schema for the period (``schema_check``)
``ZL.FILENAME``     ZGLV/FILENAME is the file's name; the L-file's FILENAME1 is the H-file's
``ZL.SD_Z``         SD_Z is the number of ZAP
``H_0600/05500``    Z_SL/SUMV is the sum of its SL/SUM_M ([HC] MPExam)
``ZL.SUMMAV``       SCHET/SUMMAV is the sum of Z_SL/SUMV
``ZL.DATES``        DATE_Z_1 ≤ DATE_1 ≤ DATE_2 ≤ DATE_Z_2, services within their case
``003F.00.0010``    SCHET/PLAT is filled in a file MO→insurer, insurer→ТФОМС, insurer→MO
``003F.00.2170``    NPOLIS is filled unless VPOLIS is 3 and ENP is
``003F.00.3070``    every PACIENT/ID_PAC has its PERS in the L-file
``003F.00.1530``…   FAM / IM filled unless DOST says they are missing (1530, 1570), and absent
                    when it does (1540, 1580, 1610 for OT)
``003F.00.1720``…   DOCTYPE, DOCSER, DOCNUM (1720–1740) and, in L-file 3.2, DOCDATE, DOCORG
                    (0330, 0340) when the policy is not the single-format one (VPOLIS ≠ 3)
``001F.00.0310``    SL/PRVS in the receiver's V021 (when a directory is given), and the
``001F.00.0661/3``  service's PRVS (USL in 3.1, MR_USL_N in 3.2)
==================  ==========================================================================

The checks do not compare ZGLV/VERSION with the period: region 75's own valid 3.2 test file
says ``3.1`` (tests/data/oms/region75); the schema is chosen by the period, as its loader does.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

from lxml import etree

from gateway.oms import OmsFileError
from gateway.oms.flk import FlkError
from gateway.oms.names import RegisterName
from gateway.oms.schema_check import schema_errors

_PLAT_REQUIRED = ("MS", "ST", "SM")


@dataclass(frozen=True)
class Findings:
    """What the checks found, by the file each finding belongs in the protocol of."""

    h: list[FlkError]
    l: list[FlkError]  # noqa: E741 (the format's letter)

    @property
    def all(self) -> list[FlkError]:
        return self.h + self.l


def check_register(h_file: etree._Element, l_file: etree._Element | None, *, h_schema: Path,
                   l_schema: Path | None, specialties: Collection[str] | None = None) -> Findings:
    """Every finding about an H-file and, when given, its L-file; none when the pair passes.

    With ``l_file`` None the H-file is checked alone (no pair checks): a lone real register,
    or an archive whose L-file is missing, which the caller reports as such.
    """
    h = schema_errors(h_file, h_schema) + list(_header(h_file, l_file)) + list(_sums(h_file)) + list(_entries(h_file))
    persons: list[FlkError] = []
    if l_file is not None:
        if l_schema is not None:
            persons += schema_errors(l_file, l_schema)
        for where, finding in _persons(h_file, l_file):
            (h if where == "H" else persons).append(finding)
    if specialties is not None:
        h += list(_specialties(h_file, set(specialties)))
    return Findings(h, persons)


def _text(el: etree._Element, path: str) -> str:
    return (el.findtext(path) or "").strip()


def _amount(el: etree._Element, path: str) -> Decimal | None:
    try:
        value = Decimal(_text(el, path))
    except InvalidOperation:
        return None
    return value if value.is_finite() else None


def _day(el: etree._Element, path: str) -> dt.date | None:
    try:
        return dt.date.fromisoformat(_text(el, path))
    except ValueError:
        return None


def _at(zap: etree._Element, sl: etree._Element | None = None, usl: etree._Element | None = None) -> dict[str, str]:
    where = {"n_zap": _text(zap, "N_ZAP"), "idcase": _text(zap, "Z_SL/IDCASE"), "id_pac": _text(zap, "PACIENT/ID_PAC")}
    if sl is not None:
        where["sl_id"] = _text(sl, "SL_ID")
    if usl is not None:
        where["idserv"] = _text(usl, "IDSERV")
    return {k: v for k, v in where.items() if v}


def _header(h_file: etree._Element, l_file: etree._Element | None) -> Iterator[FlkError]:
    h_name = _text(h_file, "ZGLV/FILENAME")
    try:
        name = RegisterName.parse(h_name)
    except OmsFileError as exc:
        yield FlkError("ZL.FILENAME", "FILENAME", "ZGLV", comment=str(exc))
        return
    if name.sender + name.receiver in _PLAT_REQUIRED and not _text(h_file, "SCHET/PLAT"):
        yield FlkError("003F.00.0010", "PLAT", "SCHET", comment=f"a file {name.sender}→{name.receiver} names its payer")
    if l_file is not None:
        if _text(l_file, "ZGLV/FILENAME") != str(name.paired("L")):
            yield FlkError("ZL.FILENAME", "FILENAME", "ZGLV", comment=f"the L-file of {name} is {name.paired('L')}")
        if _text(l_file, "ZGLV/FILENAME1") != h_name:
            yield FlkError("ZL.FILENAME", "FILENAME1", "ZGLV", comment=f"FILENAME1 must be the H-file's name {h_name}")


def _sums(h_file: etree._Element) -> Iterator[FlkError]:
    zaps = h_file.findall("ZAP")
    if _text(h_file, "ZGLV/SD_Z") != str(len(zaps)):
        yield FlkError("ZL.SD_Z", "SD_Z", "ZGLV", comment=f"SD_Z is not the number of ZAP ({len(zaps)})")
    total = Decimal(0)
    for zap in zaps:
        z_sl = zap.find("Z_SL")
        sumv = _amount(zap, "Z_SL/SUMV")
        amounts = [_amount(sl, "SUM_M") for sl in zap.iterfind("Z_SL/SL")]
        parts = [a for a in amounts if a is not None]
        if z_sl is None or sumv is None or len(parts) != len(amounts):
            continue  # the schema check reports a missing or unreadable amount
        total += sumv
        parts_sum = sum(parts, Decimal(0))
        if sumv != parts_sum:
            yield FlkError("H_0600/05500", "SUMV", "Z_SL", comment=f"SUMV {sumv} is not the sum of SL/SUM_M "
                           f"{parts_sum}", **_at(zap))
    summav = _amount(h_file, "SCHET/SUMMAV")
    if summav is not None and summav != total:
        yield FlkError("ZL.SUMMAV", "SUMMAV", "SCHET", comment=f"SUMMAV {summav} is not the sum of Z_SL/SUMV {total}")


def _entries(h_file: etree._Element) -> Iterator[FlkError]:
    for zap in h_file.iterfind("ZAP"):
        pacient = zap.find("PACIENT")
        if pacient is not None and not _text(pacient, "NPOLIS") and \
                not (_text(pacient, "VPOLIS") == "3" and _text(pacient, "ENP")):
            yield FlkError("003F.00.2170", "NPOLIS", "PACIENT", comment="NPOLIS is required unless VPOLIS is 3 and "
                           "ENP is given", **_at(zap))
        z1, z2 = _day(zap, "Z_SL/DATE_Z_1"), _day(zap, "Z_SL/DATE_Z_2")
        for sl in zap.iterfind("Z_SL/SL"):
            d1, d2 = _day(sl, "DATE_1"), _day(sl, "DATE_2")
            if None in (z1, z2, d1, d2):
                continue
            if not z1 <= d1 <= d2 <= z2:  # type: ignore[operator]
                yield FlkError("ZL.DATES", "DATE_1", "SL", comment="DATE_Z_1 ≤ DATE_1 ≤ DATE_2 ≤ DATE_Z_2 does not "
                               "hold", **_at(zap, sl))
            for usl in sl.iterfind("USL"):
                u1, u2 = _day(usl, "DATE_IN"), _day(usl, "DATE_OUT")
                if u1 is not None and u2 is not None and not d1 <= u1 <= u2 <= d2:  # type: ignore[operator]
                    yield FlkError("ZL.DATES", "DATE_IN", "USL", comment="the service's dates are not within its "
                                   "case's DATE_1..DATE_2", **_at(zap, sl, usl))


def _persons(h_file: etree._Element, l_file: etree._Element) -> Iterator[tuple[str, FlkError]]:
    """Findings of the pair: an entry without its PERS is the H-file's, the rest the L-file's."""
    persons = {_text(p, "ID_PAC"): p for p in l_file.iterfind("PERS")}
    with_docdate = _text(l_file, "ZGLV/VERSION") == "3.2"
    for zap in h_file.iterfind("ZAP"):
        pers = persons.get(_text(zap, "PACIENT/ID_PAC"))
        if pers is None:
            yield "H", FlkError("003F.00.3070", "ID_PAC", "PACIENT", comment="the patient is not in the L-file",
                                **_at(zap))
            continue
        at = {"id_pac": _text(pers, "ID_PAC")}
        if _text(zap, "PACIENT/NOVOR") == "0":
            dost = {d.text.strip() for d in pers.iterfind("DOST") if d.text}
            for code, tag, mark in (("1530", "FAM", "2"), ("1570", "IM", "3")):
                if not _text(pers, tag) and mark not in dost:
                    yield "L", FlkError(f"003F.00.{code}", tag, "PERS", comment=f"{tag} is required unless DOST {mark}",
                                        **at)
            for code, tag, mark in (("1540", "FAM", "2"), ("1580", "IM", "3"), ("1610", "OT", "1")):
                if mark in dost and pers.find(tag) is not None:
                    yield "L", FlkError(f"003F.00.{code}", tag, "PERS",
                                        comment=f"{tag} must be absent with DOST {mark}", **at)
        if _text(zap, "PACIENT/VPOLIS") != "3":
            wanted = [("1720", "DOCTYPE"), ("1730", "DOCSER"), ("1740", "DOCNUM")]
            if with_docdate:
                wanted += [("0330", "DOCDATE"), ("0340", "DOCORG")]
            for code, tag in wanted:
                if not _text(pers, tag):
                    yield "L", FlkError(f"003F.00.{code}", tag, "PERS", comment=f"{tag} is required when the policy "
                                        "is not the single-format one", **at)


def _specialties(h_file: etree._Element, known: set[str]) -> Iterator[FlkError]:
    for zap in h_file.iterfind("ZAP"):
        for sl in zap.iterfind("Z_SL/SL"):
            if _text(sl, "PRVS") not in known:
                yield FlkError("001F.00.0310", "PRVS", "SL", comment="the specialty is not in V021", **_at(zap, sl))
            for usl in sl.iterfind("USL"):
                for code, parent, prvs in _service_specialties(usl):
                    if prvs not in known:
                        yield FlkError(code, "PRVS", parent, comment="the specialty is not in V021",
                                       **_at(zap, sl, usl))


def _service_specialties(usl: etree._Element) -> Iterable[tuple[str, str, str]]:
    if usl.find("PRVS") is not None:
        yield "001F.00.0661", "USL", _text(usl, "PRVS")
    for mr in usl.iterfind("MR_USL_N"):
        if mr.find("PRVS") is not None:
            yield "001F.00.0663", "MR_USL_N", _text(mr, "PRVS")
