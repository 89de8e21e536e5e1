"""What a registry's record means for the MIS: the verification answer and its verdict.

The MIS asks a yes-or-no question ("may this doctor practise therapy today?", "is this
organisation licensed?"); the registry answers with records. The verdict is decided
here, once, from the records as ФРМР and ФРМО publish them (research/formats.md §4), and
the records travel with it so the MIS can show why.

A worker is ``valid`` when a card is open on the date (at the organisation asked about,
if one was) and a certificate or an accreditation for the specialty (any, if none was
asked) is in force on it; ``revoked`` when the only accreditation in force was excluded;
``expired`` otherwise. An organisation is ``closed`` once deleted from the register,
``revoked`` or ``expired`` by its licence, else ``valid``.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from lxml import etree

WORKER_NS = "urn://zdravlink/types/worker-verification/1.0"
ORGANISATION_NS = "urn://zdravlink/types/organisation-verification/1.0"
_W = "{%s}" % WORKER_NS
_O = "{%s}" % ORGANISATION_NS


def _date(value: Any) -> dt.date | None:
    if value in (None, ""):
        return None
    return value if isinstance(value, dt.date) else dt.date.fromisoformat(str(value)[:10])


def _in_force(start: Any, end: Any, day: dt.date) -> bool:
    begin, finish = _date(start), _date(end)
    return (begin is None or begin <= day) and (finish is None or day <= finish)


def _same(spec: str | None, wanted: str | None) -> bool:
    return wanted is None or (spec or "").strip().lower() == wanted.strip().lower()


def _sub(parent: etree._Element, tag: str, text: Any) -> None:
    if text not in (None, ""):
        etree.SubElement(parent, tag).text = str(text).lower() if isinstance(text, bool) else str(text)


def worker_answer(snils: str, content: Mapping[str, Any] | None, *, specialty: str | None = None,
                  organisation: str | None = None, on: dt.date, checked_at: dt.datetime) -> etree._Element:
    """The WorkerVerificationAnswer for ФРМР's ``content`` (None: not found)."""
    answer = etree.Element(_W + "WorkerVerificationAnswer", nsmap={"wv": WORKER_NS})
    _sub(answer, _W + "SNILS", snils)
    verdict_el = etree.SubElement(answer, _W + "Verdict")
    reason_el = etree.SubElement(answer, _W + "Reason")
    _sub(answer, _W + "CheckedAt", checked_at.isoformat())
    if content is None:
        verdict_el.text, reason_el.text = "not-found", "ФРМР has no medical worker with this СНИЛС"
        return answer
    cards = [c for c in content.get("cards") or [] if organisation is None or c.get("organization") == organisation]
    certs = [c for c in content.get("educationCerts") or [] if _same(c.get("specName"), specialty)]
    procedures = [p for p in ((content.get("accreditation") or {}).get("accreditationProcedures") or [])
                  if _same(p.get("spec"), specialty)]
    for c in cards:
        el = etree.SubElement(answer, _W + "Employment")
        _sub(el, _W + "OrganisationOid", c.get("organization"))
        _sub(el, _W + "Post", c.get("postName"))
        _sub(el, _W + "From", c.get("beginDate"))
        _sub(el, _W + "To", c.get("endDate"))
    for c in certs:
        el = etree.SubElement(answer, _W + "Certificate")
        _sub(el, _W + "Specialty", c.get("specName"))
        _sub(el, _W + "PassDate", c.get("passDate"))
        _sub(el, _W + "ValidTo", c.get("endDate"))
    for p in procedures:
        el = etree.SubElement(answer, _W + "Accreditation")
        _sub(el, _W + "Specialty", p.get("spec"))
        _sub(el, _W + "PassDate", p.get("passDate"))
        _sub(el, _W + "ValidTo", p.get("endDate"))
        _sub(el, _W + "Passed", bool(p.get("passed")))
        _sub(el, _W + "Excluded", bool(p.get("excluded")))
    employed = any(_in_force(c.get("beginDate"), c.get("endDate"), on) for c in cards)
    certified = any(_in_force(c.get("passDate"), c.get("endDate"), on) for c in certs)
    accredited = [p for p in procedures if p.get("passed") and _in_force(p.get("passDate"), p.get("endDate"), on)]
    if not employed:
        verdict, reason = "expired", "no employment in force on the date" + (
            " at the organisation asked about" if organisation else "")
    elif certified or any(not p.get("excluded") for p in accredited):
        verdict, reason = "valid", "employed, with a certificate or accreditation in force"
    elif accredited:
        verdict, reason = "revoked", "the accreditation in force was excluded"
    else:
        verdict, reason = "expired", "no certificate or accreditation in force" + (
            f" for {specialty}" if specialty else "")
    verdict_el.text, reason_el.text = verdict, reason
    return answer


def organisation_answer(mo: Mapping[str, Any] | None, *, on: dt.date, checked_at: dt.datetime) -> etree._Element:
    """The OrganisationVerificationAnswer for ФРМО's record (None: not found)."""
    answer = etree.Element(_O + "OrganisationVerificationAnswer", nsmap={"ov": ORGANISATION_NS})
    verdict_el = etree.SubElement(answer, _O + "Verdict")
    reason_el = etree.SubElement(answer, _O + "Reason")
    _sub(answer, _O + "CheckedAt", checked_at.isoformat())
    if mo is None:
        verdict_el.text, reason_el.text = "not-found", "ФРМО has no organisation with this OID or ОГРН"
        return answer
    org = etree.SubElement(answer, _O + "Organisation")
    for tag, key in (("Oid", "oid"), ("NameFull", "nameFull"), ("OGRN", "ogrn"), ("INN", "inn"),
                     ("DeleteDate", "deleteDate")):
        _sub(org, _O + tag, mo.get(key))
    licence = mo.get("licence")
    if licence:
        el = etree.SubElement(answer, _O + "Licence")
        _sub(el, _O + "Number", licence.get("number"))
        _sub(el, _O + "IssuedAt", licence.get("issuedAt"))
        _sub(el, _O + "ValidTo", licence.get("validTo"))
        _sub(el, _O + "Revoked", bool(licence.get("revoked")))
    if _date(mo.get("deleteDate")) is not None and _date(mo.get("deleteDate")) <= on:
        verdict, reason = "closed", "deleted from the register"
    elif not licence:
        verdict, reason = "expired", "no licence on record"
    elif licence.get("revoked"):
        verdict, reason = "revoked", "the licence was revoked"
    elif not _in_force(licence.get("issuedAt"), licence.get("validTo"), on):
        verdict, reason = "expired", "the licence is not in force on the date"
    else:
        verdict, reason = "valid", "registered, licence in force"
    verdict_el.text, reason_el.text = verdict, reason
    return answer


def timeout_answer(request: etree._Element, reason: str, checked_at: dt.datetime) -> etree._Element:
    """The TIMEOUT answer to a worker or organisation request the registry has not answered in time."""
    ns = etree.QName(request).namespace
    if ns == WORKER_NS:
        answer = etree.Element(_W + "WorkerVerificationAnswer", nsmap={"wv": WORKER_NS})
        _sub(answer, _W + "SNILS", request.findtext(_W + "SNILS"))
    elif ns == ORGANISATION_NS:
        answer = etree.Element(_O + "OrganisationVerificationAnswer", nsmap={"ov": ORGANISATION_NS})
    else:
        raise ValueError(f"not a verification request: {request.tag}")
    q = "{%s}" % ns
    etree.SubElement(answer, q + "Verdict").text = "timeout"
    etree.SubElement(answer, q + "Reason").text = reason
    etree.SubElement(answer, q + "CheckedAt").text = checked_at.isoformat()
    return answer


def from_cache(answer: etree._Element) -> etree._Element:
    """A copy of a cached answer that says so; CheckedAt stays the time the registry was really asked."""
    copy = etree.fromstring(etree.tostring(answer))
    q = "{%s}" % etree.QName(copy).namespace
    old = copy.find(q + "FromCache")
    if old is not None:
        copy.remove(old)
    flag = etree.Element(q + "FromCache")
    flag.text = "true"
    copy.find(q + "CheckedAt").addnext(flag)
    return copy


def verdict_of(answer: etree._Element) -> str:
    return answer.findtext("{%s}Verdict" % etree.QName(answer).namespace) or ""
