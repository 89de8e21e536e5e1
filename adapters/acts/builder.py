"""The service act: one organisation's service records for one insurer and one month, as an OMS register.

The act is the register of bills (H-file, version 3.1) in the layout of
``schemas_xsd/oms/service-act-3.1.xsd``, which is derived from a real TFOMS schema (its header
lists the deviations). Its root is in the namespace ``urn://zdravlink/types/service-act/1.0``
so the act can travel as a payload; the file delivered to an insurer drops the namespace.

Structure, and why:

* One ZAP per completed case (Z_SL), one Z_SL per patient (ЕНП) and diagnosis, one SL in it
  holding one USL per service record. The federal format allows exactly one Z_SL per ZAP,
  so a patient treated for two diagnoses in the month has two ZAPs with the same PACIENT;
  an outpatient completed case (обращение) is about one disease, so the services for one
  diagnosis are one case.
* Sums: SUMV_USL = KOL_USL × TARIF is rounded once, to kopecks, half up, because that is
  the figure an insurer recomputes for each service; SL/SUM_M, Z_SL/SUMV and SCHET/SUMMAV
  are exact sums of already rounded amounts.
* Determinism: records are sorted by patient, dates and record id, and nothing depends on
  the clock, so the same records, number and date give the same bytes and the same
  ``act_digest``; a second build of an act that was already sent is recognised by it.
* Codes the records do not carry (conditions, kind and form of care, result, outcome,
  payment method, profile) come from ``CaseDefaults``: a region's rules may require others.
* Identifiers: ID_PAC and NPOLIS are the ЕНП (the only policy number a record carries);
  IDSERV is the record id, which with CODE_MO identifies a record for good; IDDOKT and
  CODE_MD are the doctor's СНИЛС written ``XXX-XXX-XXX YY``, as regions that key doctors
  by СНИЛС expect.
* SCHET/CODE (N8, unique per bill within the organisation) has no counter behind it in the
  gateway: it is derived from what makes an act unique (organisation, insurer, period,
  version, number) by hashing, so it is stable across rebuilds.
* FILENAME follows research/formats.md §3.4: ``HM{CODE_MO}S{insurer code}_{YYMM}{version}``
  (H-file, to an insurance company).
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from decimal import ROUND_HALF_UP, Context, Decimal, Inexact

from lxml import etree

from gateway.schemas import compiled, schemas_dir

ACT_NS = "urn://zdravlink/types/service-act/1.0"
SERVICE_RECORD_NS = "urn://zdravlink/types/service-record/1.0"
FORMAT_VERSION = "3.1"

_A = "{%s}" % ACT_NS
_S = "{%s}" % SERVICE_RECORD_NS
_CENT = Decimal("0.01")
# Products and sums must never be rounded by the context: an Inexact result is a bug, not a kopeck.
_EXACT = Context(prec=60, traps=[Inexact])
_PERIOD = re.compile(r"[0-9]{4}-(0[1-9]|1[0-2])")


@dataclass(frozen=True)
class Record:
    """One service record as the act needs it (payload ``urn://zdravlink/types/service-record/1.0``)."""

    record_id: str
    period: str
    org_oid: str
    code_mo: str
    enp: str
    policy_type: str
    insurer: str
    insurer_code: str
    service_code: str
    date_in: date
    date_out: date
    quantity: Decimal
    tariff: Decimal
    diagnosis: str | None
    doctor_snils: str
    specialty: str

    @classmethod
    def from_element(cls, el: etree._Element, insurer_code: str) -> Record:
        """Read a ServiceRecord payload; the insurer's SMO code comes from the gateway's configuration."""
        if el.tag != _S + "ServiceRecord":
            raise ValueError(f"expected a ServiceRecord in {SERVICE_RECORD_NS}, got {el.tag}")
        diagnosis = el.find(f"{_S}Service/{_S}Diagnosis")
        return cls(
            record_id=_text(el, "RecordId"),
            period=_text(el, "Period"),
            org_oid=_text(el, "Organisation/Oid"),
            code_mo=_text(el, "Organisation/CodeMO"),
            enp=_text(el, "Patient/ENP"),
            policy_type=_text(el, "Patient/PolicyType"),
            insurer=_text(el, "Patient/Insurer"),
            insurer_code=insurer_code,
            service_code=_text(el, "Service/Code"),
            date_in=date.fromisoformat(_text(el, "Service/DateIn")),
            date_out=date.fromisoformat(_text(el, "Service/DateOut")),
            quantity=Decimal(_text(el, "Service/Quantity")),
            tariff=Decimal(_text(el, "Service/Tariff")),
            diagnosis=None if diagnosis is None else (diagnosis.text or "").strip() or None,
            doctor_snils=_text(el, "Doctor/SNILS"),
            specialty=_text(el, "Doctor/Specialty"),
        )


@dataclass(frozen=True)
class CaseDefaults:
    """Case codes a service record does not carry, filled the same way for every case.

    The defaults describe what the gateway's records are: outpatient services paid per
    service. Each is a code of an FFOMS directory; a region's filling rules (Q018 and its
    own) may demand other values, and then the region's values go here. The V002, V008,
    V009 and V010 codes were checked against the directory loads in AshurkovAV/SQL_T
    (МТР/updateBase @ eb3f998), V012 against a ProMed outpatient form; V006 and V014 are
    as commonly cited, not checked against a source.
    """

    usl_ok: int = 3  # V006 conditions of care: outpatient (амбулаторно)
    vidpom: int = 13  # V008 kind of care: primary specialised (первичная специализированная м.-с. помощь)
    for_pom: int = 3  # V014 form of care: planned (плановая)
    rslt: int = 304  # V009 outpatient result: treatment continues — the gateway cannot know it ended
    ishod: int = 304  # V012 outpatient outcome: no change (без перемен), the neutral one
    idsp: int = 28  # V010 payment method: per medical service (за медицинскую услугу)
    profil: int = 97  # V002 care profile: therapy (терапии)
    det: int = 0  # adult profile: a record carries no birth date
    vers_spec: str = "V021"  # the directory the records' specialty codes (PRVS) come from


def build_act(records: Sequence[Record], *, act_number: str, act_date: date, version: int = 1,
              replaces: str | None = None, defaults: CaseDefaults = CaseDefaults()) -> etree._Element:
    """The act (ZL_LIST) for records of one organisation, insurer and period.

    ``version`` > 1 is a correction: every ZAP says so (PR_NOV 1) and SCHET/COMENTS names the
    act it ``replaces``, which a correction must give and a first version cannot.
    Raises ValueError naming the first record that does not fit: another organisation,
    insurer or period, a repeated record id, no diagnosis (DS1 is required), an amount
    with more than two decimals, or a patient whose policy type differs between records.
    """
    if not records:
        raise ValueError("an act needs at least one record")
    if version < 1:
        raise ValueError(f"act version must be 1 or more, not {version}")
    if (version > 1) != (replaces is not None):
        raise ValueError("a correction (version > 1) must name the act it replaces, and only a correction can")
    _check(records)
    head = records[0]
    ordered = sorted(records, key=lambda r: (r.enp, r.date_in, r.date_out, r.record_id))
    cases: dict[tuple[str, str], list[Record]] = {}
    for r in ordered:
        cases.setdefault((r.enp, r.diagnosis or ""), []).append(r)
    amounts = {r.record_id: _cents(_EXACT.multiply(r.quantity, r.tariff)) for r in ordered}
    case_sums = [_total(amounts[r.record_id] for r in rs) for rs in cases.values()]

    root = etree.Element(_A + "ZL_LIST", nsmap={None: ACT_NS})
    year, month = head.period.split("-")
    zglv = _sub(root, "ZGLV")
    _sub(zglv, "VERSION", FORMAT_VERSION)
    _sub(zglv, "DATA", act_date.isoformat())
    _sub(zglv, "FILENAME", f"HM{head.code_mo}S{head.insurer_code}_{year[2:]}{month}{version}")
    _sub(zglv, "SD_Z", str(len(cases)))

    schet = _sub(root, "SCHET")
    _sub(schet, "CODE", _bill_code(head, version, act_number))
    _sub(schet, "CODE_MO", head.code_mo)
    _sub(schet, "YEAR", year)
    _sub(schet, "MONTH", str(int(month)))
    _sub(schet, "NSCHET", act_number)
    _sub(schet, "DSCHET", act_date.isoformat())
    _sub(schet, "PLAT", head.insurer_code)
    _sub(schet, "SUMMAV", _money(_total(case_sums)))
    if replaces is not None:
        _sub(schet, "COMENTS", f"Исправленный акт взамен акта № {replaces}")

    for n, ((_, diagnosis), rs) in enumerate(cases.items(), start=1):
        first, last = rs[0], rs[-1]
        zap = _sub(root, "ZAP")
        _sub(zap, "N_ZAP", str(n))
        _sub(zap, "PR_NOV", "1" if version > 1 else "0")
        pacient = _sub(zap, "PACIENT")
        _sub(pacient, "ID_PAC", first.enp)
        _sub(pacient, "VPOLIS", first.policy_type)
        _sub(pacient, "NPOLIS", first.enp)
        _sub(pacient, "ENP", first.enp)
        _sub(pacient, "SMO", first.insurer_code)
        _sub(pacient, "NOVOR", "0")

        date_1 = min(r.date_in for r in rs).isoformat()
        date_2 = max(r.date_out for r in rs).isoformat()
        z_sl = _sub(zap, "Z_SL")
        _sub(z_sl, "IDCASE", str(n))
        _sub(z_sl, "USL_OK", str(defaults.usl_ok))
        _sub(z_sl, "VIDPOM", str(defaults.vidpom))
        _sub(z_sl, "FOR_POM", str(defaults.for_pom))
        _sub(z_sl, "LPU", head.code_mo)
        _sub(z_sl, "DATE_Z_1", date_1)
        _sub(z_sl, "DATE_Z_2", date_2)
        _sub(z_sl, "RSLT", str(defaults.rslt))
        _sub(z_sl, "ISHOD", str(defaults.ishod))
        _sub(z_sl, "IDSP", str(defaults.idsp))
        _sub(z_sl, "SUMV", _money(case_sums[n - 1]))

        # The case's doctor is the one of its last service: the visit that closed it for the month.
        sl = _sub(z_sl, "SL")
        _sub(sl, "SL_ID", str(n))
        _sub(sl, "LPU_1", head.code_mo)
        _sub(sl, "PROFIL", str(defaults.profil))
        _sub(sl, "DET", str(defaults.det))
        _sub(sl, "NHISTORY", first.record_id)
        _sub(sl, "DATE_1", date_1)
        _sub(sl, "DATE_2", date_2)
        _sub(sl, "DS1", diagnosis)
        _sub(sl, "PRVS", last.specialty)
        _sub(sl, "VERS_SPEC", defaults.vers_spec)
        _sub(sl, "IDDOKT", _snils(last.doctor_snils))
        _sub(sl, "SUM_M", _money(case_sums[n - 1]))
        for r in rs:
            usl = _sub(sl, "USL")
            _sub(usl, "IDSERV", r.record_id)
            _sub(usl, "LPU", r.code_mo)
            _sub(usl, "PROFIL", str(defaults.profil))
            _sub(usl, "DET", str(defaults.det))
            _sub(usl, "DATE_IN", r.date_in.isoformat())
            _sub(usl, "DATE_OUT", r.date_out.isoformat())
            _sub(usl, "DS", diagnosis)
            _sub(usl, "CODE_USL", r.service_code)
            _sub(usl, "KOL_USL", _money(r.quantity))
            _sub(usl, "TARIF", _money(r.tariff))
            _sub(usl, "SUMV_USL", _money(amounts[r.record_id]))
            _sub(usl, "PRVS", r.specialty)
            _sub(usl, "CODE_MD", _snils(r.doctor_snils))
    return root


def validate_act(el: etree._Element) -> list[str]:
    """Every complaint of the act's schema, empty when the act is valid.

    Each names its element by a path such as ``ZL_LIST/ZAP[3]/Z_SL/SL/USL[2]``: libxml2's own
    (``/*/*[3]/*/*/*[14]``) means nothing to whoever must fix the records.
    """
    schema = _schema()
    if schema.validate(el):
        return []
    return [f"{_where(el, e.path)}: {e.message.replace(_A, '')}" for e in schema.error_log]


def act_digest(el: etree._Element) -> str:
    """sha256 (hex) of the act's exclusive C14N: the same act gives the same digest wherever it is embedded."""
    return hashlib.sha256(etree.tostring(el, method="c14n", exclusive=True, with_comments=False)).hexdigest()


def _check(records: Sequence[Record]) -> None:
    head = records[0]
    if not _PERIOD.fullmatch(head.period):
        raise ValueError(f"record {head.record_id!r}: period {head.period!r} is not YYYY-MM")
    seen: set[str] = set()
    policies: dict[str, str] = {}
    for r in records:
        for field in ("code_mo", "insurer", "insurer_code", "period"):
            if getattr(r, field) != getattr(head, field):
                raise ValueError(f"record {r.record_id!r}: {field} {getattr(r, field)!r} differs from the act's "
                                 f"{getattr(head, field)!r} (record {head.record_id!r})")
        if r.record_id in seen:
            raise ValueError(f"record {r.record_id!r} appears twice")
        seen.add(r.record_id)
        if not r.diagnosis:
            raise ValueError(f"record {r.record_id!r} has no diagnosis; the register requires one (SL/DS1, USL/DS)")
        if policies.setdefault(r.enp, r.policy_type) != r.policy_type:
            raise ValueError(f"record {r.record_id!r}: policy type {r.policy_type} differs from another record "
                             f"of patient {r.enp} ({policies[r.enp]})")
        for name, value in (("quantity", r.quantity), ("tariff", r.tariff)):
            if value.quantize(_CENT) != value:
                raise ValueError(f"record {r.record_id!r}: {name} {value} has more than two decimal places")


def _where(act: etree._Element, path: str | None) -> str:
    """libxml2 reports paths from the validated element, which it writes ``/*``."""
    rest = re.sub(r"^/\*(\[1\])?", "", path or "", count=1)
    found = act.xpath("." + rest) if path and rest != path else []
    if not found:
        return path or "?"
    names: list[str] = []
    node = found[0]
    while node is not act:
        parent = node.getparent()
        same = [s for s in parent if s.tag == node.tag]
        names.append(etree.QName(node).localname + (f"[{same.index(node) + 1}]" if len(same) > 1 else ""))
        node = parent
    names.append(etree.QName(act).localname)
    return "/".join(reversed(names))


def _text(el: etree._Element, path: str) -> str:
    found = el.find("/".join(_S + part for part in path.split("/")))
    if found is None or not (found.text or "").strip():
        raise ValueError(f"ServiceRecord has no {path}")
    return found.text.strip()


def _sub(parent: etree._Element, name: str, text: str | None = None) -> etree._Element:
    el = etree.SubElement(parent, _A + name)
    el.text = text
    return el


def _cents(value: Decimal) -> Decimal:
    return value.quantize(_CENT, rounding=ROUND_HALF_UP)


def _total(amounts: Iterable[Decimal]) -> Decimal:
    total = Decimal(0)
    for amount in amounts:
        total = _EXACT.add(total, amount)
    return total


def _money(value: Decimal) -> str:
    """Always two decimals, so 1.5 and 1.50 from different sources give the same act bytes."""
    return format(value.quantize(_CENT), "f")


def _snils(digits: str) -> str:
    return f"{digits[0:3]}-{digits[3:6]}-{digits[6:9]} {digits[9:11]}"


def _bill_code(head: Record, version: int, act_number: str) -> str:
    key = f"{head.code_mo}|{head.insurer_code}|{head.period}|{version}|{act_number}".encode()
    return str(int.from_bytes(hashlib.sha256(key).digest()[:8], "big") % 10**8)



def _schema() -> etree.XMLSchema:
    return compiled(schemas_dir() / "oms" / "service-act-3.1.xsd")
