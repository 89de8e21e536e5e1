"""The services of an H-file as rows (N_ZAP, IDCASE, SL_ID, IDSERV, ID_PAC), and which rows an error names.

A ФЛК error names its record as precisely as its check could: a service (IDSERV), a case
(SL_ID, IDCASE), a whole entry (N_ZAP), a patient (ID_PAC, in an L-file protocol), or
nothing at all (the file). SL_ID is unique only within its Z_SL and IDSERV within its SL,
so an error selects the services whose every given key matches, never one key alone.
"""
from __future__ import annotations

from dataclasses import dataclass

from lxml import etree

from gateway.oms import OmsFileError
from gateway.oms.flk import FlkError

KEYS = ("n_zap", "idcase", "sl_id", "idserv", "id_pac")


@dataclass(frozen=True)
class ServiceRow:
    n_zap: str
    idcase: str
    sl_id: str
    idserv: str
    id_pac: str


def service_rows(h_file: etree._Element) -> list[ServiceRow]:
    """One row per USL, in file order (an SL without USL, allowed by some regions, gives none)."""
    rows: list[ServiceRow] = []
    for zap in h_file.iterfind("ZAP"):
        n_zap, id_pac = zap.findtext("N_ZAP", "").strip(), zap.findtext("PACIENT/ID_PAC", "").strip()
        for z_sl in zap.iterfind("Z_SL"):
            idcase = z_sl.findtext("IDCASE", "").strip()
            for sl in z_sl.iterfind("SL"):
                sl_id = sl.findtext("SL_ID", "").strip()
                rows.extend(ServiceRow(n_zap, idcase, sl_id, usl.findtext("IDSERV", "").strip(), id_pac)
                            for usl in sl.iterfind("USL"))
    return rows


def named_by(error: FlkError, rows: list[ServiceRow]) -> list[ServiceRow]:
    """The rows an error is about; all of them for a file-level error. OmsFileError if it names none."""
    given = {k: getattr(error, k) for k in KEYS if getattr(error, k)}
    found = [r for r in rows if all(getattr(r, k) == v for k, v in given.items())]
    if not found:
        named = ", ".join(f"{k.upper()} {v}" for k, v in given.items())
        raise OmsFileError(f"error {error.oshib} names {named}, which is not in the file")
    return found
