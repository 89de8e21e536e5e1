"""An insurer's answer to an act, read into a verdict per service record.

Two forms come back. ``act-protocol`` is Zdravlink's own: a line per record with its
outcome. The ФЛК protocol (``oms-protocol``, FLK_P) is what insurers really write: only the
errors, each naming an element and the record as precisely as its check could. A record
named by an error is rejected with every error about it (code, element, comment); the
act's other records passed the check and are accepted. An error about the whole file
rejects every record.

Either form must answer an act that was sent to its sender, and name only what is in that
act: a protocol that names something else is refused whole, with the reason, before
anything is marked, because marking half of it would leave the MIS with a state that no
one wrote.
"""
from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field

from sqlalchemy import select

from gateway import errors
from gateway.envelope import Envelope
from gateway.errors import Rejection
from gateway.journal import Journal
from gateway.journal.tables import acts, service_records
from gateway.oms import OmsFileError
from gateway.oms.archive import unpack_register
from gateway.oms.flk import FlkError, read_protocol_file
from gateway.oms.services import named_by, service_rows
from gateway.xmlsafe import parse_xml

ACT_PROTOCOL_NS = "urn://zdravlink/types/act-protocol/1.0"
FLK_PROTOCOL_NS = "urn://zdravlink/types/oms-protocol/1.0"
REGISTER_NS = "urn://zdravlink/types/oms-register/1.0"
PROTOCOL_TYPES = (ACT_PROTOCOL_NS, FLK_PROTOCOL_NS)
_P, _F, _R = "{%s}" % ACT_PROTOCOL_NS, "{%s}" % FLK_PROTOCOL_NS, "{%s}" % REGISTER_NS


@dataclass
class Verdict:
    outcome: str  # accepted | rejected
    reason: str | None = None
    errors: list[dict[str, str]] = field(default_factory=list)


class ActProtocols:
    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    def verdicts(self, env: Envelope) -> tuple[str, dict[str, Verdict]]:
        """The act the protocol answers and a verdict per record id; Rejection if it does not fit that act."""
        if env.message_type == ACT_PROTOCOL_NS:
            return self._act_protocol(env)
        return self._flk_protocol(env)

    def _act_records(self, act_id: str, insurer: str, field_name: str) -> list[str]:
        with self.journal.engine.connect() as conn:
            rows = conn.execute(select(service_records.c.record_id, service_records.c.insurer)
                                .where(service_records.c.act_message_id == act_id)).all()
        if not rows or rows[0].insurer != insurer:
            raise Rejection(errors.MESSAGE_NOT_FOUND, f"no act {act_id} was sent to {insurer!r}", field_name,
                            status=422)
        return [r.record_id for r in rows]

    def _act_protocol(self, env: Envelope) -> tuple[str, dict[str, Verdict]]:
        act_id = env.payload.findtext(_P + "ActMessageId") or ""
        known = set(self._act_records(act_id, env.sender, "ActMessageId"))
        verdicts = {}
        for rec in env.payload.iterfind(_P + "Record"):
            record_id = rec.findtext(_P + "RecordId") or ""
            if record_id not in known:
                raise Rejection(errors.SERVICE_RECORD_NOT_FOUND, f"record {record_id!r} is not in act {act_id}",
                                "Record/RecordId", status=422)
            reason = rec.find(_P + "Reason")
            text = None if reason is None else \
                f"{reason.findtext(_P + 'Code') or ''}: {reason.findtext(_P + 'Text') or ''}".strip(": ")
            verdicts[record_id] = Verdict(rec.findtext(_P + "Outcome") or "", text)
        return act_id, verdicts

    def _flk_protocol(self, env: Envelope) -> tuple[str, dict[str, Verdict]]:
        act_id = env.reference_message_id
        if not act_id:
            raise Rejection(errors.PROTOCOL_INVALID, "a ФЛК protocol refers to its register: ReferenceMessageID is "
                            "the register's MessageID", "ReferenceMessageID", status=422)
        known = self._act_records(act_id, env.sender, "ReferenceMessageID")
        with self.journal.engine.connect() as conn:
            file_name = conn.execute(select(acts.c.file_name).where(acts.c.message_id == act_id)).scalar()
        record = self.journal.get(act_id)
        if file_name is None or record is None:
            raise Rejection(errors.MESSAGE_NOT_FOUND, f"message {act_id} is not a register archive",
                            "ReferenceMessageID", status=422)
        archive = Envelope.from_element(parse_xml(record.envelope)).payload
        name = env.payload.findtext(_F + "FileName") or ""
        try:
            pair = unpack_register(_b64(archive.findtext(_R + "Content")), archive.findtext(_R + "FileName") or "")
            protocols = read_protocol_file(name, _b64(env.payload.findtext(_F + "Content")))
            rows = service_rows(pair.h_file)
            files = {str(pair.name).upper(), str(pair.name.paired("L")).upper()}
            per_record: dict[str, list[FlkError]] = {}
            for protocol in protocols:
                if protocol.answers.upper() not in files:
                    raise OmsFileError(f"{name} answers {protocol.fname_i}, not {pair.name} or its L-file")
                for error in protocol.errors:
                    for row in named_by(error, rows):
                        per_record.setdefault(row.idserv, []).append(error)
        except OmsFileError as exc:
            raise Rejection(errors.PROTOCOL_INVALID, str(exc), "ProtocolFile", status=422) from None
        strays = sorted(set(per_record) - set(known))
        if strays:
            raise Rejection(errors.SERVICE_RECORD_NOT_FOUND, f"IDSERV {strays[0]!r} is not a record of act {act_id}",
                            "ProtocolFile", status=422)
        verdicts = {}
        for record_id in known:
            found = per_record.get(record_id, [])
            listed = [{k: v for k, v in (("code", e.oshib), ("element", e.element), ("comment", e.comment)) if v}
                      for e in found]
            reason = "; ".join(f"{e.oshib} {e.element or ''}".strip() + (f": {e.comment}" if e.comment else "")
                               for e in found) or None
            verdicts[record_id] = Verdict("rejected" if found else "accepted", reason, listed)
        return act_id, verdicts


def _b64(text: str | None) -> bytes:
    try:
        return base64.b64decode("".join((text or "").split()), validate=True)
    except (binascii.Error, ValueError):
        raise OmsFileError("Content is not base64") from None


def errors_json(verdict: Verdict) -> str | None:
    return json.dumps(verdict.errors, ensure_ascii=False) if verdict.errors else None
