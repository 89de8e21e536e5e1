"""The register of one organisation's service records for one insurer and one month: the H-file and its L-file.

What an insurer loads is a pair: the H-file (ZL_LIST: cases and services) and the L-file
(PERS_LIST: the patients' personal data) linked by ID_PAC, without a namespace, in the
edition the period requires and the layout of the insurer's region
(``gateway.oms.profiles``). This module decides the *values*; the region's schema decides
the order (``gateway.oms.layout``), and the ФЛК-side checks run on the result before
anything leaves (``gateway.oms.checks``).

Structure, and why:

* One ZAP per completed case (Z_SL), one Z_SL per patient (ЕНП) and diagnosis, one SL in it
  holding one USL per service record. The federal format allows exactly one Z_SL per ZAP,
  so a patient treated for two diagnoses in the month has two ZAPs with the same PACIENT;
  an outpatient completed case (обращение) is about one disease, so the services for one
  diagnosis are one case. One PERS per patient, in order of first appearance.
* Sums: SUMV_USL = KOL_USL × TARIF is rounded once, to kopecks, half up, because that is
  the figure an insurer recomputes for each service; SL/SUM_M, Z_SL/SUMV and SCHET/SUMMAV
  are exact sums of already rounded amounts.
* Determinism: records are sorted by patient, dates and record id, and nothing depends on
  the clock, so the same records, number and date give the same bytes.
* Editions: 3.2 writes PACIENT/ENP and leaves NPOLIS out for the single-format policy
  (VPOLIS 3), as region 75's valid 3.2 file and the Q015 rule 003F.00.2170 do; it writes
  the service's doctor as USL/MR_USL_N (MR_N 1) instead of USL/PRVS and CODE_MD; the L-file
  3.2 adds DOCDATE and DOCORG.
* Identifiers: ID_PAC is the ЕНП; IDSERV is the record id, which with CODE_MO identifies a
  record for good and comes back in the insurer's protocol; IDDOKT and CODE_MD are the
  doctor's СНИЛС written ``XXX-XXX-XXX YY``, as region 75 keys doctors. A name part the
  patient lacks is left out and DOST says so (1 no patronymic, 2 no surname, 3 no given
  name: Q015 003F.00.1530–1640 in [MF]).
* Codes the records do not carry (conditions, kind and form of care, result, outcome,
  payment method, profile) come from ``CaseDefaults``.
* SCHET/CODE (N8, unique per bill within the organisation) has no counter behind it in the
  gateway: it is derived from what makes an act unique by hashing, so it is stable.
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from datetime import date
from decimal import ROUND_HALF_UP, Context, Decimal, Inexact

from lxml import etree

from gateway.oms.checks import check_register
from gateway.oms.layout import Values, render
from gateway.oms.names import RegisterName
from gateway.oms.profiles import ResolvedEdition
from gateway.service_records import SERVICE_RECORD_NS
from zdravlink.errors import ConfigurationError

_S = "{%s}" % SERVICE_RECORD_NS
_CENT = Decimal("0.01")
# Products and sums must never be rounded by the context: an Inexact result is a bug, not a kopeck.
_EXACT = Context(prec=60, traps=[Inexact])
_PERIOD = re.compile(r"[0-9]{4}-(0[1-9]|1[0-2])")


class RegisterError(ConfigurationError, ValueError):
    """The records cannot make a register; the message names the record and never a patient's data."""


@dataclass(frozen=True)
class Person:
    """The patient's personal data for the L-file (payload ``Patient/Person``)."""

    family_name: str | None
    given_name: str | None
    patronymic: str | None
    sex: str
    birth_date: date
    birth_place: str | None = None
    doc_type: str | None = None
    doc_series: str | None = None
    doc_number: str | None = None
    doc_date: date | None = None
    doc_issuer: str | None = None
    snils: str | None = None
    residence_okato: str | None = None
    stay_okato: str | None = None


@dataclass(frozen=True)
class Record:
    """One service record as the register needs it (payload ``urn://zdravlink/types/service-record/1.0``)."""

    record_id: str
    period: str
    org_oid: str
    code_mo: str
    enp: str
    policy_type: str
    insurer: str
    service_code: str
    date_in: date
    date_out: date
    quantity: Decimal
    tariff: Decimal
    diagnosis: str | None
    doctor_snils: str
    specialty: str
    person: Person
    policy_series: str | None = None
    policy_number: str | None = None
    department: str | None = None

    @classmethod
    def from_element(cls, el: etree._Element) -> Record:
        if el.tag != _S + "ServiceRecord":
            raise RegisterError(f"expected a ServiceRecord in {SERVICE_RECORD_NS}, got {el.tag}")
        p = "Patient/Person/"
        doc_date = _optional(el, p + "IdentityDocument/IssueDate")
        return cls(
            record_id=_text(el, "RecordId"), period=_text(el, "Period"), org_oid=_text(el, "Organisation/Oid"),
            code_mo=_text(el, "Organisation/CodeMO"), enp=_text(el, "Patient/ENP"),
            policy_type=_text(el, "Patient/PolicyType"), insurer=_text(el, "Patient/Insurer"),
            service_code=_text(el, "Service/Code"), date_in=date.fromisoformat(_text(el, "Service/DateIn")),
            date_out=date.fromisoformat(_text(el, "Service/DateOut")),
            quantity=Decimal(_text(el, "Service/Quantity")), tariff=Decimal(_text(el, "Service/Tariff")),
            diagnosis=_optional(el, "Service/Diagnosis"), doctor_snils=_text(el, "Doctor/SNILS"),
            specialty=_text(el, "Doctor/Specialty"),
            person=Person(
                family_name=_optional(el, p + "FamilyName"), given_name=_optional(el, p + "GivenName"),
                patronymic=_optional(el, p + "Patronymic"), sex=_text(el, p + "Sex"),
                birth_date=date.fromisoformat(_text(el, p + "BirthDate")), birth_place=_optional(el, p + "BirthPlace"),
                doc_type=_optional(el, p + "IdentityDocument/Type"),
                doc_series=_optional(el, p + "IdentityDocument/Series"),
                doc_number=_optional(el, p + "IdentityDocument/Number"),
                doc_date=date.fromisoformat(doc_date) if doc_date else None,
                doc_issuer=_optional(el, p + "IdentityDocument/IssuedBy"), snils=_optional(el, p + "SNILS"),
                residence_okato=_optional(el, p + "ResidenceOKATO"), stay_okato=_optional(el, p + "StayOKATO")),
            policy_series=_optional(el, "Patient/PolicySeries"), policy_number=_optional(el, "Patient/PolicyNumber"),
            department=_optional(el, "Service/Department"),
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
    det: int = 0  # not a children's profile of care
    vers_spec: str = "V021"  # the directory the records' specialty codes (PRVS) come from


@dataclass(frozen=True)
class Register:
    """The pair as built: its H-file name, both files (no namespace), and what it bills."""

    name: RegisterName
    h_file: etree._Element
    l_file: etree._Element
    total: Decimal
    records: int


def build_register(records: Sequence[Record], *, edition: ResolvedEdition, receiver_code: str, act_number: str,
                   act_date: date, version: int = 1, replaces: str | None = None,
                   defaults: CaseDefaults = CaseDefaults()) -> Register:
    """The H-file and L-file for records of one organisation, insurer and period, checked.

    ``version`` is the pack number of the file name; > 1 is a correction: every ZAP says so
    (PR_NOV 1) and SCHET/COMENTS names the act it ``replaces``. Raises RegisterError naming
    the first record that does not fit, or the first finding of the ФЛК-side checks.
    """
    if not records:
        raise RegisterError("an act needs at least one record")
    if version < 1:
        raise RegisterError(f"act version must be 1 or more, not {version}")
    if (version > 1) != (replaces is not None):
        raise RegisterError("a correction (version > 1) must name the act it replaces, and only a correction can")
    _check(records)
    head = records[0]
    year, month = (int(p) for p in head.period.split("-"))
    binding = edition.binding
    name = RegisterName("H", "M", head.code_mo, binding.receiver, receiver_code, year, month, version)
    ordered = sorted(records, key=lambda r: (r.enp, r.date_in, r.date_out, r.record_id))
    cases: dict[tuple[str, str], list[Record]] = {}
    for r in ordered:
        cases.setdefault((r.enp, r.diagnosis or ""), []).append(r)
    amounts = {r.record_id: _cents(_EXACT.multiply(r.quantity, r.tariff)) for r in ordered}
    case_sums = [_total(amounts[r.record_id] for r in rs) for rs in cases.values()]
    total = _total(case_sums)
    writer = _Writer(edition, defaults, amounts, receiver_code)

    schet: dict[str, object] = {
        "CODE": _bill_code(head, receiver_code, version, act_number), "CODE_MO": head.code_mo, "YEAR": str(year),
        "MONTH": str(month), "NSCHET": act_number, "DSCHET": act_date.isoformat(), "PLAT": receiver_code,
        "SUMMAV": _money(total), "COMENTS": f"Исправленный акт взамен акта № {replaces}" if replaces else None,
        **writer.regional("ZL_LIST/SCHET")}
    zaps = [writer.zap(n, rs, case_sums[n - 1], version) for n, rs in enumerate(cases.values(), start=1)]
    h_values: Values = {"ZGLV": {"VERSION": edition.h_version, "DATA": act_date.isoformat(), "FILENAME": str(name),
                                 "SD_Z": str(len(zaps))},
                        "SCHET": schet, "ZAP": zaps}
    patients = {r.enp: r for r in ordered}
    l_values: Values = {"ZGLV": {"VERSION": edition.l_version, "DATA": act_date.isoformat(),
                                 "FILENAME": str(name.paired("L")), "FILENAME1": str(name)},
                        "PERS": [writer.pers(r) for r in patients.values()]}
    h_file, l_file = render(edition.h_layout, h_values), render(edition.l_layout, l_values)
    findings = check_register(h_file, l_file, h_schema=edition.h_layout.source, l_schema=edition.l_layout.source).all
    if findings:
        first = findings[0]
        where = ", ".join(f"{k.upper()} {v}" for k, v in (("n_zap", first.n_zap), ("idserv", first.idserv),
                                                          ("id_pac", first.id_pac)) if v)
        raise RegisterError(f"the register fails its checks ({len(findings)} findings), first: {first.oshib} "
                            f"{first.element or ''} {where}: {first.comment}")
    return Register(name, h_file, l_file, total, len(records))


def register_digest(register: Register) -> str:
    """sha256 (hex) of both files' exclusive C14N: the same records give the same digest."""
    h = hashlib.sha256()
    for el in (register.h_file, register.l_file):
        h.update(etree.tostring(el, method="c14n", exclusive=True, with_comments=False))
    return h.hexdigest()


class _Writer:
    """Values of ZAP and PERS for one edition and profile; regional elements by their profile source."""

    def __init__(self, edition: ResolvedEdition, defaults: CaseDefaults, amounts: dict[str, Decimal],
                 receiver_code: str) -> None:
        self.edition = edition
        # PACIENT/SMO is the insurer's code in a file to the insurer; to a ТФОМС the patient's insurer is unknown.
        self.smo = receiver_code if edition.binding.receiver == "S" else None
        self.v32 = edition.h_version == "3.2"
        self.d = defaults
        self.amounts = amounts

    def regional(self, parent: str, *, case: Sequence[Record] = (), record: Record | None = None,
                 case_sum: Decimal | None = None) -> dict[str, str | None]:
        """The profile's elements under ``parent``, each from its source (None when the record lacks it)."""
        found: dict[str, str | None] = {}
        for path, source in self.edition.profile.regional.items():
            folder, _, element = path.rpartition("/")
            if folder != parent:
                continue
            last = record or (case[-1] if case else None)
            person = last.person if last is not None else None
            values = {
                "binding": self.edition.binding.values.get(path),
                "department": last.department if last is not None else None,
                "specialty": last.specialty if last is not None else None,
                "case_sum": _money(case_sum) if case_sum is not None else None,
                "service_tariff": _money(record.tariff) if record is not None else None,
                "residence_okato": person.residence_okato if person is not None else None,
                "stay_okato": person.stay_okato if person is not None else None,
            }
            found[element] = values[source]
        return found

    def zap(self, n: int, rs: Sequence[Record], case_sum: Decimal, version: int) -> Values:
        first, last = rs[0], rs[-1]
        date_1 = min(r.date_in for r in rs).isoformat()
        date_2 = max(r.date_out for r in rs).isoformat()
        if first.policy_type != "3":
            npolis = first.policy_number
        else:  # the single-format policy's number is the ЕНП: NPOLIS in 3.1, ENP alone in 3.2
            npolis = None if self.v32 else first.enp
        pacient = {"ID_PAC": first.enp, "VPOLIS": first.policy_type, "SPOLIS": first.policy_series, "NPOLIS": npolis,
                   "ENP": first.enp if self.v32 else None, "SMO": self.smo, "NOVOR": "0"}
        # The case's doctor is the one of its last service: the visit that closed it for the month.
        sl: dict[str, object] = {
            "SL_ID": str(n), "LPU_1": last.department, "PROFIL": str(self.d.profil), "DET": str(self.d.det),
            "NHISTORY": first.record_id, "DATE_1": date_1, "DATE_2": date_2, "DS1": first.diagnosis,
            "PRVS": last.specialty, "VERS_SPEC": self.d.vers_spec, "IDDOKT": _snils(last.doctor_snils),
            "SUM_M": _money(case_sum), "USL": [self.usl(r) for r in rs],
            **self.regional("ZL_LIST/ZAP/Z_SL/SL", case=rs, case_sum=case_sum)}
        return {"N_ZAP": str(n), "PR_NOV": "1" if version > 1 else "0", "PACIENT": pacient,
                "Z_SL": {"IDCASE": str(n), "USL_OK": str(self.d.usl_ok), "VIDPOM": str(self.d.vidpom),
                         "FOR_POM": str(self.d.for_pom), "LPU": first.code_mo, "DATE_Z_1": date_1, "DATE_Z_2": date_2,
                         "RSLT": str(self.d.rslt), "ISHOD": str(self.d.ishod), "SL": [sl], "IDSP": str(self.d.idsp),
                         "SUMV": _money(case_sum)}}

    def usl(self, r: Record) -> Values:
        doctor = {"PRVS": r.specialty, "CODE_MD": _snils(r.doctor_snils)}
        return {"IDSERV": r.record_id, "LPU": r.code_mo, "LPU_1": r.department, "PROFIL": str(self.d.profil),
                "DET": str(self.d.det), "DATE_IN": r.date_in.isoformat(), "DATE_OUT": r.date_out.isoformat(),
                "DS": r.diagnosis, "CODE_USL": r.service_code, "KOL_USL": _money(r.quantity),
                "TARIF": _money(r.tariff), "SUMV_USL": _money(self.amounts[r.record_id]),
                **({"MR_USL_N": {"MR_N": "1", **doctor}} if self.v32 else doctor),
                **self.regional("ZL_LIST/ZAP/Z_SL/SL/USL", record=r)}

    def pers(self, r: Record) -> Values:
        p = r.person
        dost = [code for code, part in (("1", p.patronymic), ("2", p.family_name), ("3", p.given_name)) if not part]
        l32 = self.edition.l_version == "3.2"
        snils = p.snils if p.snils is None or self.edition.profile.snils == "digits" else _snils(p.snils)
        return {"ID_PAC": r.enp, "FAM": p.family_name, "IM": p.given_name, "OT": p.patronymic, "W": p.sex,
                "DR": p.birth_date.isoformat(), "DOST": dost, "MR": p.birth_place, "DOCTYPE": p.doc_type,
                "DOCSER": p.doc_series, "DOCNUM": p.doc_number,
                "DOCDATE": p.doc_date.isoformat() if l32 and p.doc_date else None,
                "DOCORG": p.doc_issuer if l32 else None, "SNILS": snils,
                **self.regional("PERS_LIST/PERS", record=r)}


def _check(records: Sequence[Record]) -> None:
    head = records[0]
    if not _PERIOD.fullmatch(head.period):
        raise RegisterError(f"record {head.record_id!r}: period {head.period!r} is not YYYY-MM")
    seen: set[str] = set()
    patients: dict[str, Record] = {}
    for r in records:
        for name in ("code_mo", "insurer", "period"):
            if getattr(r, name) != getattr(head, name):
                raise RegisterError(f"record {r.record_id!r}: {name} {getattr(r, name)!r} differs from the act's "
                                    f"{getattr(head, name)!r} (record {head.record_id!r})")
        if r.record_id in seen:
            raise RegisterError(f"record {r.record_id!r} appears twice")
        seen.add(r.record_id)
        if not r.diagnosis:
            raise RegisterError(f"record {r.record_id!r} has no diagnosis; the register requires one (SL/DS1, USL/DS)")
        earlier = patients.setdefault(r.enp, r)
        for name in ("policy_type", "policy_series", "policy_number"):
            if getattr(r, name) != getattr(earlier, name):
                raise RegisterError(f"record {r.record_id!r}: the patient's {name} differs from record "
                                    f"{earlier.record_id!r} (one PACIENT per patient)")
        differing = [f.name for f in fields(Person) if getattr(r.person, f.name) != getattr(earlier.person, f.name)]
        if differing:
            raise RegisterError(f"record {r.record_id!r}: the patient's personal data ({', '.join(differing)}) "
                                f"differs from record {earlier.record_id!r}: one PERS per patient")
        for name, value in (("quantity", r.quantity), ("tariff", r.tariff)):
            if value.quantize(_CENT) != value:
                raise RegisterError(f"record {r.record_id!r}: {name} {value} has more than two decimal places")


def _text(el: etree._Element, path: str) -> str:
    value = _optional(el, path)
    if value is None:
        raise RegisterError(f"ServiceRecord has no {path}")
    return value


def _optional(el: etree._Element, path: str) -> str | None:
    found = el.find("/".join(_S + part for part in path.split("/")))
    return found.text.strip() if found is not None and (found.text or "").strip() else None


def _cents(value: Decimal) -> Decimal:
    return value.quantize(_CENT, rounding=ROUND_HALF_UP)


def _total(amounts: Iterable[Decimal]) -> Decimal:
    total = Decimal(0)
    for amount in amounts:
        total = _EXACT.add(total, amount)
    return total


def _money(value: Decimal) -> str:
    """Always two decimals, so 1.5 and 1.50 from different sources give the same bytes."""
    return format(value.quantize(_CENT), "f")


def _snils(digits: str) -> str:
    return f"{digits[0:3]}-{digits[3:6]}-{digits[6:9]} {digits[9:11]}"


def _bill_code(head: Record, receiver_code: str, version: int, act_number: str) -> str:
    key = f"{head.code_mo}|{receiver_code}|{head.period}|{version}|{act_number}".encode()
    return str(int.from_bytes(hashlib.sha256(key).digest()[:8], "big") % 10**8)
