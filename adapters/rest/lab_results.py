"""``POST /api/v1/labs/{lab}/results``: a laboratory's results as JSON, mapped by its mapping file.

The same mapping file as for its HL7 messages, and the same gaps: a 422
problem+json lists every one with its place in the JSON (``results[1].unit``), and
the refusal is audited and counted like an HL7 NAK.
"""
from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from adapters.hl7v2.lab_intake import link_correction
from adapters.hl7v2.oru import LAB_RESULT_NS, MappingGaps, map_message, message_id_for
from adapters.intake import Intake
from adapters.mapping.lab_json import LabResultsDocument, for_json, json_place, to_oru
from adapters.mapping.lab_mapping import LabMapping
from gateway import errors
from gateway.config import Participant
from gateway.envelope import Envelope
from gateway.errors import Rejection
from gateway.journal.results import ResultVersions
from monitoring import metrics


class LabResultsApi:
    def __init__(self, intake: Intake, mappings: dict[str, LabMapping]) -> None:
        self.intake = intake
        self.mappings = mappings
        self.versions = ResultVersions(intake.journal)

    def submit(self, lab: str, caller: Participant, body: bytes, remote: str | None) -> dict[str, Any]:
        try:
            return self._submit(lab, caller, body)
        except Rejection as rej:
            if not rej.extra.get("audited"):
                self.intake.refused(rej, source="rest-lab", remote=remote, caller=caller.mnemonic, env=None)
            raise

    def _submit(self, lab: str, caller: Participant, body: bytes) -> dict[str, Any]:
        if caller.mnemonic != lab:
            raise Rejection(errors.SENDER_MISMATCH, f"the token belongs to {caller.mnemonic!r}, not {lab!r}", "lab",
                            status=403)
        mapping = self.mappings.get(lab)
        if mapping is None:
            raise Rejection(errors.UNKNOWN_SENDER, f"no mapping file for {lab!r}: config/mappings/{lab}.yaml",
                            "lab", status=404)
        try:
            doc = LabResultsDocument.model_validate(json.loads(body))
        except (ValueError, UnicodeDecodeError) as exc:
            if isinstance(exc, ValidationError):
                first = exc.errors()[0]
                raise Rejection(errors.ENVELOPE_INVALID, first["msg"], ".".join(map(str, first["loc"])) or "body",
                                status=422) from None
            raise Rejection(errors.MALFORMED_JSON, f"not valid JSON: {exc}", "body") from None
        try:
            mapped = map_message(to_oru(doc, mapping), for_json(mapping))
        except MappingGaps as exc:
            for g in exc.gaps:
                metrics.MAPPING_GAPS.labels(lab, g.code, (g.lab_code or "")[:64]).inc()
            listed = [{"code": g.code, "field": json_place(g.segment, g.sequence, g.field), "detail": g.reason}
                      for g in exc.gaps]
            raise Rejection(exc.gaps[0].code, "; ".join(f"{e['field']}: {e['detail']}" for e in listed),
                            listed[0]["field"], status=422, extra={"errors": listed}) from None
        message_id = message_id_for(lab, doc.messageId)
        result_id, status = link_correction(self.versions, mapped.payload, message_id)
        env = Envelope(message_id=message_id, sender=lab, recipient=mapped.recipient, message_type=LAB_RESULT_NS,
                       payload=mapped.payload)
        try:
            accepted = self.intake.receive_envelope(env, caller, source="rest-lab")
        except Rejection as rej:
            rej.extra["audited"] = True
            raise
        self.versions.remember(result_id, message_id, status)
        return {"messageId": message_id, "status": accepted.outcome.status, "duplicate": accepted.outcome.duplicate,
                "recipient": mapped.recipient, "statusUrl": f"/api/v1/messages/{message_id}"}
