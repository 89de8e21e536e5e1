"""The register archive as it leaves: the ZIP of the pair, its detached signature, and both as files or a payload.

The ZIP holds ``<H>.xml`` and ``<L>.xml`` and is named ``<H>.zip`` (``gateway.oms.archive``);
the signature is a detached CMS over the ZIP's bytes (``signing.cms``), written beside it as
``<H>.zip.sig`` — the same two files whether they travel in a message (payload
``urn://zdravlink/types/oms-register/1.0``, base64) or are left in a directory.
"""
from __future__ import annotations

import base64
import datetime as dt
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from lxml import etree

from adapters.acts.builder import Register
from gateway.oms import OmsFileError
from gateway.oms.archive import pack, to_bytes
from gateway.service_records import REGISTER_NS
from signing.cms import sign_detached
from signing.xmldsig import Signer

_R = "{%s}" % REGISTER_NS


@dataclass(frozen=True)
class RegisterArchive:
    file_name: str  # <H>.zip
    content: bytes
    signature: bytes

    @property
    def signature_name(self) -> str:
        return f"{self.file_name}.sig"

    @classmethod
    def make(cls, register: Register, when: dt.date, signer: Signer) -> RegisterArchive:
        """Pack the pair (H-file first, as writers do) and sign the ZIP detached."""
        content = pack([(register.name.xml, to_bytes(register.h_file)),
                        (register.name.paired("L").xml, to_bytes(register.l_file))], when)
        return cls(register.name.archive, content, sign_detached(content, signer))


def archive_payload(archive: RegisterArchive) -> etree._Element:
    root = etree.Element(_R + "RegisterArchive", nsmap={"rg": REGISTER_NS})
    etree.SubElement(root, _R + "FileName").text = archive.file_name
    etree.SubElement(root, _R + "Content").text = base64.b64encode(archive.content).decode("ascii")
    signature = etree.SubElement(root, _R + "Signature")
    etree.SubElement(signature, _R + "FileName").text = archive.signature_name
    etree.SubElement(signature, _R + "Content").text = base64.b64encode(archive.signature).decode("ascii")
    return root


def read_archive_payload(payload: etree._Element) -> RegisterArchive:
    """The archive a RegisterArchive payload carries (one that passed its schema)."""
    try:
        return RegisterArchive(payload.findtext(_R + "FileName") or "",
                               base64.b64decode(payload.findtext(_R + "Content") or "", validate=False),
                               base64.b64decode(payload.findtext(f"{_R}Signature/{_R}Content") or "", validate=False))
    except ValueError as exc:
        raise OmsFileError(f"a RegisterArchive payload that is not base64: {exc}") from None


def write_files(directory: Path, archive: RegisterArchive) -> Path:
    """Write ``<H>.zip`` and ``<H>.zip.sig`` into ``directory``, each whole or not at all (a collector
    polling the directory never sees half a file); returns the archive's path."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in ((archive.signature_name, archive.signature), (archive.file_name, archive.content)):
        fd, tmp = tempfile.mkstemp(prefix=".", suffix=".part", dir=directory)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, directory / name)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return directory / archive.file_name
