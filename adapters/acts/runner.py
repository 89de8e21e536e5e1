"""Building the period's registers and sending them through the spine, once.

For every organisation and insurer with records in the period, the records are read
back from the journal and built into the register pair in the insurer's edition and
region (``builder``), packed into the archive and signed detached (``archive``), and the
archive is accepted as a message from the clinic's MIS to the insurer, so it is also
signed in its envelope and delivered like any other message, with retries, failover and
dead letters; an insurer that collects files finds the archive and its ``.sig`` in its
drop directory too. A period already sent is not sent again: building it again only
reports whether its records have changed since, and a correction is an explicit new
version that names the act it replaces. ``--out`` writes the archives for an operator and
sends nothing.
"""
from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, insert, select, update
from sqlalchemy.engine import Connection

from adapters.acts.archive import RegisterArchive, archive_payload, read_archive_payload, write_files
from adapters.acts.builder import Record, RegisterError, build_register, register_digest
from adapters.intake import Intake
from gateway.config import GatewayConfig
from gateway.envelope import Envelope
from gateway.errors import Rejection
from gateway.journal import Journal
from gateway.journal.tables import acts, service_records
from gateway.masking import mask_text
from gateway.oms import OmsFileError
from gateway.oms.layout import LayoutError
from gateway.oms.profiles import EditionError, ResolvedEdition
from gateway.service_records import REGISTER_NS
from gateway.xmlsafe import parse_xml
from signing.errors import SignatureError
from signing.xmldsig import Signer

_FIXED_DATE = dt.date(2000, 1, 1)


@dataclass(frozen=True)
class ActOutcome:
    code_mo: str
    insurer: str
    period: str
    state: str  # sent | unchanged | changed | written | failed
    detail: str
    message_id: str | None = None
    version: int | None = None
    file_name: str | None = None


class ActRunner:
    def __init__(self, config: GatewayConfig, journal: Journal, intake: Intake,
                 today: Callable[[], dt.date] = dt.date.today) -> None:
        self.config = config
        self.journal = journal
        self.intake = intake
        self.today = today
        self.oms = intake.pipeline.service_records.oms

    def groups(self, period: str, insurer: str | None = None) -> list[tuple[str, str, str]]:
        """(code_mo, insurer, sending MIS) with records in the period."""
        q = select(service_records.c.code_mo, service_records.c.insurer, func.min(service_records.c.sender)) \
            .where(service_records.c.period == period).group_by(service_records.c.code_mo, service_records.c.insurer)
        if insurer is not None:
            q = q.where(service_records.c.insurer == insurer)
        with self.journal.engine.connect() as conn:
            return sorted((r[0], r[1], r[2]) for r in conn.execute(q).all())

    def build(self, period: str, insurer: str | None = None, correction: bool = False,
              progress: Callable[[ActOutcome], None] | None = None, out: Path | None = None) -> list[ActOutcome]:
        outcomes = []
        for code_mo, ins, sender in self.groups(period, insurer):
            try:
                outcome = self._one(period, code_mo, ins, sender, correction, out)
            except (RegisterError, EditionError, LayoutError, OmsFileError, SignatureError, OSError,
                    Rejection) as exc:
                # Messages name records and fields, but a schema's complaint may quote a value: mask it.
                outcome = ActOutcome(code_mo, ins, period, "failed", mask_text(str(exc)))
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
        records = []
        for row in rows:
            try:
                records.append(Record.from_element(
                    Envelope.from_element(parse_xml(messages[row.message_id].envelope)).payload))
            except RegisterError as exc:  # a record kept before the register needed it (Patient/Person)
                raise RegisterError(f"record {row.record_key!r} (message {row.message_id}): {exc}") from None
        return records, [r.record_key for r in rows]

    def _one(self, period: str, code_mo: str, insurer: str, sender: str, correction: bool,
             out: Path | None) -> ActOutcome:
        edition = self.oms.resolve(insurer, period)
        receiver_code = self.config.participants[insurer].oms_code
        if receiver_code is None:
            raise EditionError(f"insurer {insurer!r} has no oms_code in participants.yaml (its code in the file "
                               "name and SCHET/PLAT)")
        records, keys = self._records(period, code_mo, insurer)
        with self.journal.engine.connect() as conn:
            last = conn.execute(select(acts).where(acts.c.code_mo == code_mo, acts.c.insurer == insurer,
                                                   acts.c.period == period)
                                .order_by(acts.c.version.desc()).limit(1)).first()
        digest = register_digest(build_register(records, edition=edition, receiver_code=receiver_code,
                                                act_number="0", act_date=_FIXED_DATE))
        if last is not None and not correction and digest == last.digest and out is not None:
            written = write_files(out, self._sent_archive(last.message_id))
            return ActOutcome(code_mo, insurer, period, "written", f"{written}: version {last.version} as it was sent "
                              f"in {last.message_id}", last.message_id, last.version, last.file_name)
        if last is not None and not correction and out is None:
            if digest == last.digest:
                return ActOutcome(code_mo, insurer, period, "unchanged",
                                  f"version {last.version} was sent as {last.message_id}; nothing changed since",
                                  last.message_id, last.version, last.file_name)
            return ActOutcome(code_mo, insurer, period, "changed",
                              f"version {last.version} ({last.records} records) was sent as {last.message_id}; the "
                              f"records have changed since ({len(records)} now): build a correction to send them",
                              last.message_id, last.version, last.file_name)
        version = last.version + 1 if last is not None else 1
        number = f"{period.replace('-', '')}-{code_mo}-{version}"
        register = build_register(records, edition=edition, receiver_code=receiver_code, act_number=number,
                                  act_date=self.today(), version=version,
                                  replaces=last.message_id if last is not None else None)
        archive = RegisterArchive.make(register, self.today(), self._signer())
        if out is not None:
            return ActOutcome(code_mo, insurer, period, "written", f"{write_files(out, archive)}: version {version}, "
                              "not sent", None, version, str(register.name))
        env = Envelope(message_id=str(uuid.uuid1()), sender=sender, recipient=insurer, message_type=REGISTER_NS,
                       payload=archive_payload(archive))
        replaces = last.message_id if last is not None else None

        def act_row(conn: Connection, now: dt.datetime) -> None:
            """The act and its records' link to it, in the register message's own transaction: committed
            apart, a kill between the two sent a register with no act behind it, whose protocol was then
            refused, and the next run sent version 1 again; a racing build now fails on uq_acts_version
            as a whole instead of sending a second register."""
            conn.execute(insert(acts).values(message_id=env.message_id, code_mo=code_mo, insurer=insurer,
                                             period=period, version=version, act_number=number, replaces=replaces,
                                             digest=digest, records=len(records), total=f"{register.total:.2f}",
                                             file_name=str(register.name), created_at=now))
            conn.execute(update(service_records).where(service_records.c.record_key.in_(keys))
                         .values(act_message_id=env.message_id, outcome=None, reason=None, errors=None,
                                 updated_at=now))

        self.intake.receive_envelope(env, self.config.participants[sender], source="acts", side_writes=[act_row])
        detail = f"{register.name}.zip, {len(records)} records, {register.total:.2f} RUB"
        if edition.binding.drop_directory:
            detail += f"; also in {write_files(self._drop(edition), archive)}"
        return ActOutcome(code_mo, insurer, period, "sent", detail, env.message_id, version, str(register.name))

    def _signer(self) -> Signer:
        signer = self.intake.pipeline.keyring.signer
        if signer is None:
            raise EditionError("the register archive is signed detached with the gateway's key: configure "
                               "signing.key in gateway.yaml")
        return signer

    def _sent_archive(self, message_id: str) -> RegisterArchive:
        record = self.journal.get(message_id)
        if record is None:
            raise OmsFileError(f"act message {message_id} is not in the journal")
        return read_archive_payload(Envelope.from_element(parse_xml(record.envelope)).payload)

    def _drop(self, edition: ResolvedEdition) -> Path:
        folder = Path(edition.binding.drop_directory or "")
        return folder if folder.is_absolute() else self.config.directory / folder
