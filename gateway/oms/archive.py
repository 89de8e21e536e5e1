"""The register archive: the H-file and its L-file, windows-1251 XML without a namespace, in one ZIP.

The ZIP is named after the H-file and holds ``<H name>.xml`` and ``<L name>.xml`` (MIS writers
zip exactly that pair under the H-file's name, [CH] ``create2reestr26.prg``; ProMed the same).
Writing is deterministic — fixed member order and timestamps — so an act rebuilt from the
same records is the same archive byte for byte. Reading is defensive: an archive comes from
a partner, so members are counted and their sizes capped before anything is inflated.
"""
from __future__ import annotations

import datetime as dt
import io
import zipfile
from dataclasses import dataclass

from lxml import etree

from gateway.errors import Rejection
from gateway.oms import OmsFileError
from gateway.oms.names import RegisterName, strip_extension
from gateway.xmlsafe import parse_xml

ENCODING = "windows-1251"
MAX_MEMBERS = 16
MAX_INFLATED = 256 * 1024 * 1024  # a month of one organisation's registers is a few MB


def to_bytes(root: etree._Element) -> bytes:
    """The file as registers are written: windows-1251, declared the way real files declare it, no namespace."""
    declaration = f'<?xml version="1.0" encoding="{ENCODING}"?>\n'.encode("ascii")
    body = etree.tostring(root, encoding=ENCODING, xml_declaration=False, pretty_print=True)
    # lxml-stubs type tostring() as str | bytes for an encoding outside their short list; any but "unicode" is bytes.
    return declaration + body  # type: ignore[operator]


def from_bytes(data: bytes, name: str) -> etree._Element:
    """Parse a register or protocol file safely (no DTD, no entities); OmsFileError names the file."""
    try:
        return parse_xml(data, field=name)
    except Rejection as exc:
        raise OmsFileError(f"{name}: {exc.detail}") from None


@dataclass(frozen=True)
class RegisterPair:
    """The H-file and its L-file as parsed from an archive (the L-file may be missing in a bad one)."""

    name: RegisterName
    h_file: etree._Element
    l_file: etree._Element | None


def pack(files: list[tuple[str, bytes]], when: dt.date) -> bytes:
    """A ZIP of ``(member name, bytes)`` in the given order, every timestamp ``when`` at midnight."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for member, data in files:
            info = zipfile.ZipInfo(member, date_time=(when.year, when.month, when.day, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            z.writestr(info, data)
    return out.getvalue()


def members(archive: bytes, name: str) -> dict[str, bytes]:
    """Every file in a ZIP, by name; OmsFileError if it is not one, or too big to take."""
    try:
        with zipfile.ZipFile(io.BytesIO(archive)) as z:
            infos = [i for i in z.infolist() if not i.is_dir()]
            if len(infos) > MAX_MEMBERS:
                raise OmsFileError(f"{name}: {len(infos)} files in the archive, at most {MAX_MEMBERS} taken")
            if sum(i.file_size for i in infos) > MAX_INFLATED:
                raise OmsFileError(f"{name}: inflates to more than {MAX_INFLATED} bytes")
            found: dict[str, bytes] = {}
            for info in infos:
                with z.open(info) as f:
                    data = f.read(info.file_size + 1)
                if len(data) != info.file_size:
                    raise OmsFileError(f"{name}: {info.filename} is not the size its header says")
                found[info.filename.rsplit("/", 1)[-1]] = data
            return found
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError) as exc:
        raise OmsFileError(f"{name}: not a readable ZIP archive ({exc})") from None


def unpack_register(archive: bytes, archive_name: str) -> RegisterPair:
    """The pair inside a register archive, checked against the archive's name.

    The archive must be named after an H-type file and hold that file; its L-file is the
    member named like it with ``L`` first. A missing L-file is left to the checks to
    report (a real insurer answers it in its protocol); a missing H-file is unreadable.
    """
    name = RegisterName.parse(strip_extension(archive_name))
    if name.kind.startswith("L"):
        raise OmsFileError(f"{archive_name}: a register archive is named after its H-file, not its L-file")
    files = {strip_extension(k).upper(): v for k, v in members(archive, archive_name).items()
             if k.lower().endswith(".xml")}
    h_data = files.get(str(name).upper())
    if h_data is None:
        raise OmsFileError(f"{archive_name}: no {name.xml} inside")
    l_name = str(name.paired("L")).upper()
    l_data = files.get(l_name)
    return RegisterPair(name, from_bytes(h_data, name.xml),
                        from_bytes(l_data, f"{l_name}.xml") if l_data is not None else None)
