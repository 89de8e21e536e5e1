"""Building the period's acts and sending them through the spine, once.

For every organisation and insurer with records in the period, the records are read
back from the journal, built into an act (``builder``), and accepted as a message from
the clinic's MIS to the insurer, so the act is signed and delivered like any other
message, with retries, failover and dead letters. A period already sent is not sent
again: building it again only reports whether its records have changed since, and a
correction is an explicit new version that names the act it replaces.
"""
from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Callable

from sqlalchemy import func, insert, select, update

from adapters.acts.builder import ACT_NS, Record, act_digest, build_act, validate_act
from adapters.intake import Intake
from gateway.config import GatewayConfig
from gateway.envelope import Envelope
from gateway.errors import Rejection
from gateway.journal import Journal
from gateway.journal.store import utcnow
from gateway.journal.tables import acts, service_records
from gateway.service_records import SERVICE_RECORD_NS
from gateway.xmlsafe import parse_xml

_S = "{%s}" % SERVICE_RECORD_NS


@dataclass(frozen=True)
class ActOutcome:
    code_mo: str
    insurer: str
    period: str
    state: str  # sent | unchanged | changed | failed
    detail: str
    message_id: str | None = None
    version: int | None = None


def content_digest(records: list[Record]) -> str:
    """The digest of what an act says about its records, whatever its number, date and version."""
    return act_digest(build_act(records, act_number="0", act_date=dt.date(2000, 1, 1)))


class ActRunner:
    def __init__(self, config: GatewayConfig, journal: Journal, intake: Intake,
                 today: Callable[[], dt.date] = dt.date.today) -> None:
        self.config = config
        self.journal = journal
        self.intake = intake
        self.today = today

    def groups(self, period: str, insurer: str | None = None) -> list[tuple[str, str, str]]:
        """(code_mo, insurer, sending MIS) with records in the period."""
        q = select(service_records.c.code_mo, service_records.c.insurer, func.min(service_records.c.sender)) \
            .where(service_records.c.period == period).group_by(service_records.c.code_mo, service_records.c.insurer)
        if insurer is not None:
            q = q.where(service_records.c.insurer == insurer)
        with self.journal.engine.connect() as conn:
            return sorted((r[0], r[1], r[2]) for r in conn.execute(q).all())

    def build(self, period: str, insurer: str | None = None, correction: bool = False,
              progress: Callable[[ActOutcome], None] | None = None) -> list[ActOutcome]:
        outcomes = []
        for code_mo, ins, sender in self.groups(period, insurer):
            try:
                outcome = self._one(period, code_mo, ins, sender, correction)
            except (ValueError, Rejection) as exc:
                outcome = ActOutcome(code_mo, ins, period, "failed", str(exc))
            outcomes.append(outcome)
            if progress is not None:
                progress(outcome)
        return outcomes

    def _records(self, period: str, code_mo: str, insurer: str) -> tuple[list[Record], list[str]]:
        with self.journal.engine.connect() as conn:
            rows = conn.execute(select(service_records.c.record_key, service_records.c.message_id).where(
                service_records.c.period == period, service_records.c.code_mo == code_mo,
                service_records.c.insurer == insurer).order_by(service_records.c.record_key)).all()
        messages = self.journal.get_many([r.message_id for r in rows])
        code = self.config.participants[insurer].oms_code
        if code is None:
            raise ValueError(f"insurer {insurer!r} has no oms_code in participants.yaml (its SMO code, SCHET/PLAT)")
        records = [Record.from_element(Envelope.from_element(parse_xml(messages[r.message_id].envelope)).payload, code)
                   for r in rows]
        return records, [r.record_key for r in rows]

    def _one(self, period: str, code_mo: str, insurer: str, sender: str, correction: bool) -> ActOutcome:
        records, keys = self._records(period, code_mo, insurer)
        with self.journal.engine.connect() as conn:
            last = conn.execute(select(acts).where(acts.c.code_mo == code_mo, acts.c.insurer == insurer,
                                                   acts.c.period == period)
                                .order_by(acts.c.version.desc()).limit(1)).first()
        digest = content_digest(records)
        if last is not None and not correction:
            if digest == last.digest:
                return ActOutcome(code_mo, insurer, period, "unchanged",
                                  f"version {last.version} was sent as {last.message_id}; nothing changed since",
                                  last.message_id, last.version)
            return ActOutcome(code_mo, insurer, period, "changed",
                              f"version {last.version} ({last.records} records) was sent as {last.message_id}; the "
                              f"records have changed since ({len(records)} now): build a correction to send them",
                              last.message_id, last.version)
        version = last.version + 1 if last is not None else 1
        number = f"{period.replace('-', '')}-{code_mo}-{version}"
        act = build_act(records, act_number=number, act_date=self.today(), version=version,
                        replaces=last.message_id if last is not None else None)
        problems = validate_act(act)
        if problems:
            return ActOutcome(code_mo, insurer, period, "failed", "; ".join(problems[:3]))
        env = Envelope(message_id=str(uuid.uuid1()), sender=sender, recipient=insurer, message_type=ACT_NS,
                       payload=act)
        self.intake.receive_envelope(env, self.config.participants[sender], source="acts")
        total = act.findtext(f"{{{ACT_NS}}}SCHET/{{{ACT_NS}}}SUMMAV") or "0"
        now = utcnow()
        with self.journal.engine.begin() as conn:
            conn.execute(insert(acts).values(message_id=env.message_id, code_mo=code_mo, insurer=insurer,
                                             period=period, version=version, act_number=number,
                                             replaces=last.message_id if last is not None else None,
                                             digest=digest, records=len(records), total=total,
                                             created_at=now))
            conn.execute(update(service_records).where(service_records.c.record_key.in_(keys))
                         .values(act_message_id=env.message_id, outcome=None, reason=None, updated_at=now))
        return ActOutcome(code_mo, insurer, period, "sent", f"{len(records)} records, {Decimal(total):.2f} RUB",
                          env.message_id, version)
