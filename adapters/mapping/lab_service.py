"""A laboratory's results as a document (JSON over REST, XML inside SMEV), mapped by its mapping file.

The same mapping file as for its HL7 messages, and the same gaps: each is listed with
its place in the document (``orders[0].results[1].unit``), the refusal is audited and
counted like an HL7 NAK, each order that was carried before names the message it
replaces, and what the result carries a warning about is listed in the answer.
"""
from __future__ import annotations

from typing import Any

from adapters.hl7v2.lab_intake import link_correction
from adapters.hl7v2.oru import LAB_RESULT_NS, Gap, MappingGaps, map_message, message_id_for
from adapters.intake import Intake
from adapters.mapping.lab_json import LabResultsDocument, for_json, json_place, to_oru
from adapters.mapping.lab_mapping import LabMapping
from gateway import errors
from gateway.config import Participant
from gateway.envelope import Envelope
from gateway.errors import Rejection
from gateway.journal.results import ResultVersions
from monitoring import metrics


class LabResults:
    def __init__(self, intake: Intake, mappings: dict[str, LabMapping]) -> None:
        self.intake = intake
        self.mappings = mappings
        self.versions = ResultVersions(intake.journal)

    def mapping_for(self, lab: str) -> LabMapping:
        mapping = self.mappings.get(lab)
        if mapping is None:
            raise Rejection(errors.UNKNOWN_SENDER, f"no mapping file for {lab!r}: config/mappings/{lab}.yaml",
                            "lab", status=404)
        return mapping

    def submit(self, doc: LabResultsDocument, caller: Participant, *, source: str, remote: str | None,
               message_id: str | None = None, verified_signature: dict[str, str] | None = None) -> dict[str, Any]:
        """Map and accept; the MessageID is derived from the lab's own id unless the transport has one (SMEV).

        A Rejection comes out audited.
        """
        places: dict[tuple[str, int], str] = {}
        try:
            mapping = self.mapping_for(caller.mnemonic)
            message, places = to_oru(doc, mapping)
            mapped = map_message(message, for_json(mapping))
            for el in mapped.payload.iter():  # sources name segments of the ORU built here, not the lab's
                el.attrib.pop("source", None)
        except MappingGaps as exc:
            for g in exc.gaps:
                metrics.MAPPING_GAPS.labels(caller.mnemonic, g.code, (g.lab_code or "")[:64]).inc()
            listed = [_listed(g, places) for g in exc.gaps]
            rej = Rejection(exc.gaps[0].code, "; ".join(f"{e['field']}: {e['detail']}" for e in listed),
                            listed[0]["field"], status=422, extra={"errors": listed})
            self.intake.refused(rej, source=source, remote=remote, caller=caller.mnemonic, env=None)
            raise rej from None
        except Rejection as rej:
            self.intake.refused(rej, source=source, remote=remote, caller=caller.mnemonic, env=None)
            raise
        message_id = message_id or message_id_for(caller.mnemonic, doc.messageId)
        orders = link_correction(self.versions, mapped.payload, message_id)
        env = Envelope(message_id=message_id, sender=caller.mnemonic, recipient=mapped.recipient,
                       message_type=LAB_RESULT_NS, payload=mapped.payload)
        accepted = self.intake.receive_envelope(env, caller, source=source, remote=remote,
                                                verified_signature=verified_signature,
                                                side_writes=[self.versions.remember_write(message_id, orders)])
        answer = {"messageId": message_id, "status": accepted.outcome.status, "duplicate": accepted.outcome.duplicate,
                  "recipient": mapped.recipient, "statusUrl": f"/api/v1/messages/{message_id}"}
        if mapped.warnings:
            answer["warnings"] = [_listed(w, places) for w in mapped.warnings]
        return answer


def _listed(g: Gap, places: dict[tuple[str, int], str]) -> dict[str, str]:
    return {"code": g.code, "field": json_place(places, g.segment, g.sequence, g.field), "detail": g.reason}
