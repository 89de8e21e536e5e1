"""The patient's personal data a service record carries for the L-file, checked at intake.

The insurer's ФЛК refuses a register whose personal data breaks its rules, weeks after
the visit; each rule here refuses the record the day it arrives instead, naming the field
and the rule, never the value (it is patient data: the audit and the log get the message).

Rules and their sources (../shared/research/oms-format.md, docs/service-acts.md):

* the patient's СНИЛС passes its check digits (``gateway.identifiers.snils_valid``);
* the birth date is not after the service and not before 1900-01-01 (the L-file schemas of
  region 75 bound DR by ``minExclusive 1900-01-01``);
* a policy other than the single-format one (PolicyType 1 or 2) needs its number (NPOLIS,
  Q015 003F.00.2170 in [MF]) and a full identity document: type, series, number, issue
  date and issuer (Q015 003F.00.1720, 1730, 1740, 0330, 0340 in [MF]);
* the document type is a code of the federal classifier F011 (Q015 001F.00.0720 in [MF]),
  as the ProMed MIS lists it (code index id 35963626454: 1–18, 21–28, 99); its issue date
  is not before birth nor in the future.
"""
from __future__ import annotations

import datetime as dt

from lxml import etree

from gateway import errors
from gateway.errors import Rejection
from gateway.identifiers import snils_valid

#: F011 codes, as ProMed's person form handles them (see the module docstring).
F011_CODES = frozenset({*range(1, 19), *range(21, 29), 99})
EARLIEST_BIRTH = dt.date(1900, 1, 1)


def check_person(text: TextOf, *, first_service: dt.date, today: dt.date) -> None:
    """Raise the first Rejection; ``text`` reads a path under the ServiceRecord ('' when absent)."""
    snils = text("Patient/Person/SNILS")
    if snils and not snils_valid(snils):
        raise Rejection(errors.SNILS_INVALID, "the patient's СНИЛС fails its check digits", "Patient/Person/SNILS",
                        status=422)
    born = dt.date.fromisoformat(text("Patient/Person/BirthDate"))
    if born > first_service:
        raise Rejection(errors.DATE_INVALID, "the birth date is after the service's DateIn",
                        "Patient/Person/BirthDate", status=422)
    if born < EARLIEST_BIRTH:
        raise Rejection(errors.DATE_INVALID, "the birth date is before 1900-01-01, the register's lower bound",
                        "Patient/Person/BirthDate", status=422)
    if text("Patient/PolicyType") != "3":
        if not text("Patient/PolicyNumber"):
            raise Rejection(errors.FIELD_REQUIRED, "a policy other than the single-format one (PolicyType 1, 2) "
                            "needs its number", "Patient/PolicyNumber", status=422)
        for part in ("Type", "Series", "Number", "IssueDate", "IssuedBy"):
            if not text(f"Patient/Person/IdentityDocument/{part}"):
                raise Rejection(errors.FIELD_REQUIRED, "with PolicyType 1 or 2 the register needs the identity "
                                f"document in full: {part} is missing", f"Patient/Person/IdentityDocument/{part}",
                                status=422)
    doc_type = text("Patient/Person/IdentityDocument/Type")
    if doc_type and int(doc_type) not in F011_CODES:
        raise Rejection(errors.IDENTITY_DOCUMENT_INVALID, f"document type {doc_type} is not a code of the "
                        "classifier F011", "Patient/Person/IdentityDocument/Type", status=422)
    issued = text("Patient/Person/IdentityDocument/IssueDate")
    if issued and not born <= dt.date.fromisoformat(issued) <= today:
        raise Rejection(errors.DATE_INVALID, "the document's issue date is before the birth date or in the future",
                        "Patient/Person/IdentityDocument/IssueDate", status=422)


class TextOf:
    """Reads ``A/B/C`` paths of a payload in one namespace: the trimmed text, '' when absent."""

    def __init__(self, payload: etree._Element, namespace: str) -> None:
        self._payload = payload
        self._ns = "{%s}" % namespace

    def __call__(self, path: str) -> str:
        el = self._payload.find("/".join(self._ns + part for part in path.split("/")))
        return (el.text or "").strip() if el is not None else ""
