"""Service records: the business checks at intake, and the record store acts are built from.

An insurer checks every record of an act and refuses the bad ones weeks later; each
check here refuses the record the day the clinic sends it instead, with the field and
the rule: an unknown service code or a price that is not the tariff's, dates in the
future or outside the reporting month, a doctor's СНИЛС that fails its check digits, an
insurer the gateway does not know, and the same record reported twice. An ЕНП that
fails its check digit is only a warning: the algorithm is widely implemented but no
normative text for it was found, and one region switched the check off
(research/formats.md §5.4).
"""
from __future__ import annotations

import datetime as dt
import functools
from decimal import Decimal
from typing import Any

from lxml import etree
from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection

from gateway import errors
from gateway.config import GatewayConfig
from gateway.envelope import Envelope
from gateway.errors import Rejection
from gateway.identifiers import enp_valid, snils_valid
from gateway.journal import Journal
from gateway.journal.store import SideWrite
from gateway.journal.tables import service_records
from gateway.tariffs import TariffTable

SERVICE_RECORD_NS = "urn://zdravlink/types/service-record/1.0"
ACT_PROTOCOL_NS = "urn://zdravlink/types/act-protocol/1.0"
_S = "{%s}" % SERVICE_RECORD_NS
_P = "{%s}" % ACT_PROTOCOL_NS


def record_key(code_mo: str, record_id: str) -> str:
    return f"{code_mo}|{record_id}"


class ServiceRecordRules:
    def __init__(self, config: GatewayConfig, journal: Journal, tariffs: TariffTable,
                 today: Any = None) -> None:
        self.config = config
        self.journal = journal
        self.tariffs = tariffs
        self.today = today or dt.date.today

    def check(self, env: Envelope) -> list[str]:
        """Raise the first Rejection, or return the warnings the record carries into the journal."""
        p = env.payload

        def text(path: str) -> str:
            return _path(p, path)

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
        date_in, date_out = dt.date.fromisoformat(text("Service/DateIn")), dt.date.fromisoformat(text("Service/DateOut"))
        if date_out < date_in:
            raise Rejection(errors.DATE_INVALID, "DateOut is before DateIn", "Service/DateOut", status=422)
        if date_out > self.today():
            raise Rejection(errors.DATE_INVALID, "the service ends in the future", "Service/DateOut", status=422)
        period = text("Period")
        for name, day in (("DateIn", date_in), ("DateOut", date_out)):
            if day.strftime("%Y-%m") != period:
                raise Rejection(errors.DATE_INVALID, f"{name} is outside the reporting period {period}",
                                f"Service/{name}", status=422)
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

    def record_write(self, env: Envelope) -> SideWrite:
        """Remember the record for its act, in the transaction that accepts its message."""
        p = env.payload

        def write(conn: Connection, now: dt.datetime) -> None:
            conn.execute(insert(service_records).values(
                record_key=record_key(_path(p, "Organisation/CodeMO"), _path(p, "RecordId")),
                record_id=_path(p, "RecordId"), code_mo=_path(p, "Organisation/CodeMO"), sender=env.sender,
                insurer=_path(p, "Patient/Insurer"), period=_path(p, "Period"), message_id=env.message_id,
                created_at=now, updated_at=now))

        return write

    def check_protocol(self, env: Envelope) -> None:
        """An insurer's protocol must answer an act sent to it, about that act's records only."""
        act_id = env.payload.findtext(_P + "ActMessageId") or ""
        with self.journal.engine.connect() as conn:
            rows = conn.execute(select(service_records.c.record_id, service_records.c.insurer)
                                .where(service_records.c.act_message_id == act_id)).all()
        if not rows or rows[0].insurer != env.sender:
            raise Rejection(errors.MESSAGE_NOT_FOUND, f"no act {act_id} was sent to {env.sender!r}", "ActMessageId",
                            status=422)
        known = {r.record_id for r in rows}
        for rec in env.payload.iterfind(_P + "Record"):
            record_id = rec.findtext(_P + "RecordId") or ""
            if record_id not in known:
                raise Rejection(errors.SERVICE_RECORD_NOT_FOUND, f"record {record_id!r} is not in act {act_id}",
                                "Record/RecordId", status=422)

    def protocol_write(self, env: Envelope) -> SideWrite:
        """Mark each record of the act with what the insurer said, in the protocol's accept transaction."""
        return functools.partial(self._mark_outcomes, env)

    @staticmethod
    def _mark_outcomes(env: Envelope, conn: Connection, now: dt.datetime) -> None:
        act_id = env.payload.findtext(_P + "ActMessageId") or ""
        for rec in env.payload.iterfind(_P + "Record"):
            reason = rec.find(_P + "Reason")
            text = None if reason is None else \
                f"{reason.findtext(_P + 'Code') or ''}: {reason.findtext(_P + 'Text') or ''}".strip(": ")
            conn.execute(update(service_records)
                         .where(service_records.c.act_message_id == act_id,
                                service_records.c.record_id == (rec.findtext(_P + "RecordId") or ""))
                         .values(outcome=rec.findtext(_P + "Outcome"), reason=text, updated_at=now))

    def state(self, record_id: str, code_mo: str) -> dict[str, Any] | None:
        with self.journal.engine.connect() as conn:
            row = conn.execute(select(service_records)
                               .where(service_records.c.record_key == record_key(code_mo, record_id))).first()
        if row is None:
            return None
        message = self.journal.get(row.message_id)
        return {"recordId": row.record_id, "codeMO": row.code_mo, "sender": row.sender, "insurer": row.insurer,
                "period": row.period, "messageId": row.message_id, "messageStatus": message.status if message else None,
                "actMessageId": row.act_message_id, "outcome": row.outcome or "pending", "reason": row.reason}


def _path(payload: etree._Element, path: str) -> str:
    el = payload.find("/".join(_S + part for part in path.split("/")))
    return (el.text or "").strip() if el is not None else ""
