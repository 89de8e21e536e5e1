"""The ФЛК protocol (FLK_P): the receiver's format-and-logic control of a register file, error by error.

No public schema of it was found; six independent implementations agree on the elements
(../shared/research/oms-format.md §4): ``FLK_P`` holds ``FNAME`` (the protocol's own name),
``FNAME_I`` (the file checked) and one ``PR`` per error with ``OSHIB`` (the error: a Q015 check
id such as ``003F.00.2170``, or an F012 code), ``IM_POL`` (the element), ``BAS_EL`` (its parent),
the record it is about (``N_ZAP``, ``IDCASE``, ``SL_ID``, ``IDSERV``; ``ID_PAC`` for the L-file)
and ``COMMENT``. Reading is lenient where the implementations differ: region 75 writes
``FNAME_1`` for ``FNAME_I``, the order of the PR children varies, and some add elements
(``ZN_POL``, ``ID_BAS``, ``NHISTORY``) that are skipped here. ``ZN_POL`` (the offending value)
is never written: it may be a patient's data.
"""
from __future__ import annotations

from dataclasses import dataclass

from lxml import etree

from gateway.oms import OmsFileError
from gateway.oms.archive import from_bytes, members, to_bytes
from gateway.oms.names import strip_extension

#: PR children in the order they are written ([MF] FlkErr, without ZN_POL).
PR_ELEMENTS = ("OSHIB", "IM_POL", "BAS_EL", "N_ZAP", "ID_PAC", "IDCASE", "SL_ID", "IDSERV", "COMMENT")
COMMENT_MAX = 250


@dataclass(frozen=True)
class FlkError:
    """One PR: what is wrong, where, and in which record."""

    oshib: str
    im_pol: str | None = None
    bas_el: str | None = None
    n_zap: str | None = None
    id_pac: str | None = None
    idcase: str | None = None
    sl_id: str | None = None
    idserv: str | None = None
    comment: str | None = None

    @property
    def element(self) -> str | None:
        """``BAS_EL/IM_POL``, or whichever of the two is given."""
        return "/".join(p for p in (self.bas_el, self.im_pol) if p) or None

    @property
    def file_level(self) -> bool:
        """About the file as a whole: it names no record at all."""
        return not any((self.n_zap, self.id_pac, self.idcase, self.sl_id, self.idserv))


@dataclass(frozen=True)
class FlkProtocol:
    fname: str
    fname_i: str
    errors: tuple[FlkError, ...]

    @property
    def answers(self) -> str:
        """The checked file's name without extension, however the protocol wrote it."""
        return strip_extension(self.fname_i)


def write_flk(protocol: FlkProtocol) -> bytes:
    root = etree.Element("FLK_P")
    etree.SubElement(root, "FNAME").text = protocol.fname
    etree.SubElement(root, "FNAME_I").text = protocol.fname_i
    for error in protocol.errors:
        pr = etree.SubElement(root, "PR")
        for name in PR_ELEMENTS:
            value = getattr(error, name.lower())
            if value:
                etree.SubElement(pr, name).text = value[:COMMENT_MAX] if name == "COMMENT" else value
    return to_bytes(root)


def read_flk(data: bytes, name: str) -> FlkProtocol:
    """Parse one FLK_P file; OmsFileError names what is missing."""
    root = from_bytes(data, name)
    if root.tag != "FLK_P":
        raise OmsFileError(f"{name}: the root is {etree.QName(root).localname!r}, not FLK_P"
                           + (" (a protocol has no namespace)" if etree.QName(root).namespace else ""))

    def text(parent: etree._Element, tag: str) -> str | None:
        value = parent.findtext(tag)
        return value.strip() if value is not None and value.strip() else None

    answered = text(root, "FNAME_I") or text(root, "FNAME_1")
    if answered is None:
        raise OmsFileError(f"{name}: no FNAME_I (or FNAME_1): the protocol does not say which file it answers")
    errors = []
    for i, pr in enumerate(root.iterfind("PR"), start=1):
        values = {tag.lower(): text(pr, tag) for tag in PR_ELEMENTS}
        oshib = values.pop("oshib")
        if oshib is None:
            raise OmsFileError(f"{name}: PR[{i}] has no OSHIB")
        errors.append(FlkError(oshib, **values))
    return FlkProtocol(text(root, "FNAME") or strip_extension(name), answered, tuple(errors))


def read_protocol_file(file_name: str, content: bytes) -> list[FlkProtocol]:
    """The protocols in a file as it came: one XML, or a ZIP of them (H- and L-file protocols together)."""
    if file_name.lower().endswith(".zip"):
        found = [read_flk(data, member) for member, data in sorted(members(content, file_name).items())
                 if member.lower().endswith(".xml")]
        if not found:
            raise OmsFileError(f"{file_name}: no protocol (.xml) inside")
        return found
    return [read_flk(content, file_name)]
