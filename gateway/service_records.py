"""Service records: the business checks at intake, the record store acts are built from, and protocols.

An insurer checks every record of an act and refuses the bad ones weeks later; each
check here refuses the record the day the clinic sends it instead, with the field and
the rule: an unknown service code or a price that is not the tariff's, dates in the
future or outside the reporting month, a doctor's СНИЛС that fails its check digits, an
insurer the gateway does not know, the same record reported twice, the patient's
personal data the L-file needs (``gateway.patient_data``), and what the insurer's region
requires of a record (``gateway.oms.profiles``: a subdivision code, a residence code) or
a period whose register edition Zdravlink does not write. An ЕНП that fails its check
digit is only a warning: the algorithm is widely implemented but no normative text for it
was found, and one region switched the check off (research/formats.md §5.4).
"""
from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection

from gateway import errors
from gateway.act_protocols import (
    ACT_PROTOCOL_NS,
    FLK_PROTOCOL_NS,
    PROTOCOL_TYPES,
    REGISTER_NS,
    ActProtocols,
    errors_json,
)
from gateway.config import ConfigError, ConfigProblem, GatewayConfig
from gateway.envelope import Envelope
from gateway.errors import Rejection
from gateway.identifiers import enp_valid, snils_valid
from gateway.journal import Journal, SideWrite
from gateway.journal.tables import service_records
from gateway.oms.profiles import EditionError, OmsConfig, load_oms_config
from gateway.patient_data import TextOf, check_person
from gateway.tariffs import TariffTable

SERVICE_RECORD_NS = "urn://zdravlink/types/service-record/1.0"

__all__ = ["ACT_PROTOCOL_NS", "FLK_PROTOCOL_NS", "PROTOCOL_TYPES", "REGISTER_NS", "SERVICE_RECORD_NS",
           "ServiceRecordRules", "record_key"]


def record_key(code_mo: str, record_id: str) -> str:
    return f"{code_mo}|{record_id}"


class ServiceRecordRules:
    def __init__(self, config: GatewayConfig, journal: Journal, tariffs: TariffTable,
                 today: Any = None) -> None:
        self.config = config
        self.journal = journal
        self.tariffs = tariffs
        self.today = today or dt.date.today
        problems: list[ConfigProblem] = []
        self.oms: OmsConfig = load_oms_config(config, problems)
        if problems:
            raise ConfigError(problems)
        self.protocols = ActProtocols(journal)

    def check(self, env: Envelope) -> list[str]:
        """Raise the first Rejection, or return the warnings the record carries into the journal."""
        text = TextOf(env.payload, SERVICE_RECORD_NS)
        warnings: list[str] = []
        if not enp_valid(text("Patient/ENP")):
            warnings.append("Patient/ENP: the ЕНП fails its check digit (accepted: the check is not normative)")
        if not snils_valid(text("Doctor/SNILS")):
            raise Rejection(errors.SNILS_INVALID, "the doctor's СНИЛС fails its check digits", "Doctor/SNILS",
                            status=422)
        insurer = self.config.participants.get(text("Patient/Insurer"))
        if insurer is None or insurer.kind != "insurer":
            raise Rejection(errors.UNKNOWN_INSURER, f"{text('Patient/Insurer')!r} is not an insurer known to the "
                            "gateway", "Patient/Insurer", status=422)
        date_in = dt.date.fromisoformat(text("Service/DateIn"))
        date_out = dt.date.fromisoformat(text("Service/DateOut"))
        if date_out < date_in:
            raise Rejection(errors.DATE_INVALID, "DateOut is before DateIn", "Service/DateOut", status=422)
        if date_out > self.today():
            raise Rejection(errors.DATE_INVALID, "the service ends in the future", "Service/DateOut", status=422)
        period = text("Period")
        for name, day in (("DateIn", date_in), ("DateOut", date_out)):
            if day.strftime("%Y-%m") != period:
                raise Rejection(errors.DATE_INVALID, f"{name} is outside the reporting period {period}",
                                f"Service/{name}", status=422)
        check_person(text, first_service=date_in, today=self.today())
        warnings.extend(self._check_region(text, insurer.mnemonic, period))
        code = text("Service/Code")
        tariff = self.tariffs.on(code, date_in)
        if tariff is None:
            known = "has no tariff on that date" if self.tariffs.knows(code) else "is not in the tariff table"
            raise Rejection(errors.SERVICE_CODE_UNKNOWN, f"service code {code!r} {known}", "Service/Code", status=422)
        price = Decimal(text("Service/Tariff"))
        if price != tariff.price:
            raise Rejection(errors.TARIFF_MISMATCH, f"the tariff of {code!r} on {date_in} is {tariff.price}, not "
                            f"{price}", "Service/Tariff", status=422)
        key = record_key(text("Organisation/CodeMO"), text("RecordId"))
        with self.journal.engine.connect() as conn:
            earlier = conn.execute(select(service_records.c.message_id)
                                   .where(service_records.c.record_key == key)).scalar()
        if earlier is not None and earlier != env.message_id:
            raise Rejection(errors.SERVICE_RECORD_DUPLICATE, f"record {text('RecordId')!r} of organisation "
                            f"{text('Organisation/CodeMO')} was already reported in message {earlier}", "RecordId",
                            status=409)
        return warnings

    def _check_region(self, text: TextOf, insurer: str, period: str) -> list[str]:
        """What the insurer's register edition for the period needs of a record; a warning if none is configured."""
        if insurer not in self.oms.insurers:
            return [f"Patient/Insurer: no register profile is configured for {insurer!r} (oms/insurers.yaml): "
                    "its act cannot be built until one is"]
        try:
            edition = self.oms.resolve(insurer, period)
        except EditionError as exc:
            raise Rejection(errors.REGISTER_EDITION_UNSUPPORTED, str(exc), "Period", status=422) from None
        for field in sorted(edition.required_fields()):
            if not text(field):
                raise Rejection(errors.FIELD_REQUIRED, f"{insurer!r} takes the register of {edition.profile.title} "
                                f"(H {edition.h_version}, L {edition.l_version}), whose schema requires what "
                                f"{field} fills", field, status=422)
        return []

    def record_write(self, env: Envelope) -> SideWrite:
        """Remember the record for its act, in the transaction that accepts its message."""
        text = TextOf(env.payload, SERVICE_RECORD_NS)

        def write(conn: Connection, now: dt.datetime) -> None:
            conn.execute(insert(service_records).values(
                record_key=record_key(text("Organisation/CodeMO"), text("RecordId")),
                record_id=text("RecordId"), code_mo=text("Organisation/CodeMO"), sender=env.sender,
                insurer=text("Patient/Insurer"), period=text("Period"), message_id=env.message_id,
                created_at=now, updated_at=now))

        return write

    def check_protocol(self, env: Envelope) -> None:
        """An insurer's protocol must answer an act sent to it, about that act's records only."""
        self.protocols.verdicts(env)

    def protocol_write(self, env: Envelope) -> SideWrite:
        """Mark each record of the act with what the insurer said, in the protocol's accept transaction."""
        act_id, verdicts = self.protocols.verdicts(env)

        def write(conn: Connection, now: dt.datetime) -> None:
            for record_id, verdict in verdicts.items():
                conn.execute(update(service_records)
                             .where(service_records.c.act_message_id == act_id,
                                    service_records.c.record_id == record_id)
                             .values(outcome=verdict.outcome, reason=verdict.reason, errors=errors_json(verdict),
                                     updated_at=now))

        return write

    def state(self, record_id: str, code_mo: str) -> dict[str, Any] | None:
        with self.journal.engine.connect() as conn:
            row = conn.execute(select(service_records)
                               .where(service_records.c.record_key == record_key(code_mo, record_id))).first()
        if row is None:
            return None
        message = self.journal.get(row.message_id)
        return {"recordId": row.record_id, "codeMO": row.code_mo, "sender": row.sender, "insurer": row.insurer,
                "period": row.period, "messageId": row.message_id, "messageStatus": message.status if message else None,
                "actMessageId": row.act_message_id, "outcome": row.outcome or "pending", "reason": row.reason,
                "errors": json.loads(row.errors) if row.errors else []}
