"""From an HL7 v2 message on the wire to a journalled lab result, and the ACK that says so.

The ACK is the lab's only feedback, so it must say exactly what went wrong:
AA once the result is in the journal (never before), with an ERR of severity W for each
thing the result carries a warning about; AE with one ERR per gap when the content or the
mapping is at fault (the lab fixes and resends); AR when the message cannot be taken at
all (unknown sender, wrong message type, unknown charset, no MSH-10, the gateway itself
failing).

A message without a control id (MSH-10) is refused before mapping: its MessageID derives
from MSH-10, so without it a resend could not be recognised and every copy would be
delivered. It is kept (as REJECTED, under an id of its own) like any refused message the
lab may need to see again, and never delivered.

Every refusal is audited like any other adapter's (source ``hl7``), with the
reasons masked, and every mapping gap is counted per lab and code, so an operator
sees a lab's unmapped codes pile up before the lab calls.
"""
from __future__ import annotations

import base64
import dataclasses
import logging
import uuid
from dataclasses import dataclass

import hl7
from lxml import etree

from adapters.hl7v2 import ack as acks
from adapters.hl7v2.ack import AckError
from adapters.hl7v2.hl7_values import field_of, text_of
from adapters.hl7v2.mllp import CONNECTION_PEER
from adapters.hl7v2.oru import LAB_RESULT_NS, Gap, MappingGaps, control_id, map_message, message_id_for
from adapters.intake import Intake
from adapters.mapping.lab_mapping import LabMapping
from gateway import errors
from gateway.envelope import Envelope
from gateway.errors import Rejection
from gateway.journal import MessageRecord
from gateway.journal.results import ResultVersions
from gateway.masking import mask_text
from gateway.xmlsafe import parse_xml
from monitoring import metrics

log = logging.getLogger("zdravlink.hl7")

#: The kept form of a message refused for a gap: the bytes as received, to map again once the mapping is fixed.
KEPT_NS = "urn://zdravlink/internal/inbound-hl7/1.0"

#: Gap codes → HL7 table 0357 error codes for ERR-3.
_ERR_CODES = {"UNMAPPED_TEST_CODE": "103", "AMBIGUOUS_TEST_CODE": "103", "UNMAPPED_UNIT": "103",
              "RECIPIENT_UNKNOWN": "103", "VALUE_TYPE_MISMATCH": "102", "VALUE_INVALID": "102",
              "PATIENT_ID_INVALID": "102", "PATIENT_ID_MISSING": "101", "NO_RESULTS": "101", "VALUE_MISSING": "101",
              "STATUS_MISSING": "101", "CONTROL_ID_MISSING": "101", "SEGMENT_UNPLACED": "100",
              "SEGMENT_UNREADABLE": "100", "SEGMENT_RUN_IN": "100", "SECOND_PATIENT": "100", "STATUS_LOWERED": "0",
              "UNIT_IGNORED": "102", "ORDER_ID_REPEATED": "205"}
#: Pipeline rejections that blame the content (AE); the rest are AR.
_CONTENT_CODES = {errors.PAYLOAD_INVALID, errors.MESSAGE_ID_REUSED, errors.ROUTE_FORBIDDEN,
                  errors.UNKNOWN_RECIPIENT}


@dataclass(frozen=True)
class Outcome:
    """What happened to one message: the ACK code and bytes, and the MessageID when it was accepted."""

    code: str
    ack: bytes
    message_id: str | None = None
    #: The lab the message came from, once its mapping recognised it (its rate limit paces the ACK).
    lab: str | None = None


class LabIntake:
    def __init__(self, intake: Intake, mappings: dict[str, LabMapping]) -> None:
        self.intake = intake
        self.mappings = mappings
        self.versions = ResultVersions(intake.journal)

    def identify(self, message: hl7.Message, peer: str, *, replay: bool = False) -> LabMapping | Rejection:
        """The lab whose mapping matches MSH-4 (and MSH-3) most specifically, by the whole HD."""
        msh = message.segment("MSH")
        facility, application = _hd(field_of(msh, 4)), _hd(field_of(msh, 3))
        scored = sorted(((m.identify.score(facility, application), m) for m in self.mappings.values()),
                        key=lambda pair: -pair[0])
        if not scored or scored[0][0] == 0:
            return Rejection(errors.UNKNOWN_SENDER, f"no mapping file identifies sending facility "
                             f"{'^'.join(facility).rstrip('^')!r} (application {'^'.join(application).rstrip('^')!r})",
                             "MSH-4", status=403)
        best, mapping = scored[0]
        if len(scored) > 1 and scored[1][0] == best:
            return Rejection(errors.UNKNOWN_SENDER, f"MSH-4 and MSH-3 fit the mappings of {mapping.lab!r} and "
                             f"{scored[1][1].lab!r} alike", "MSH-4", status=403)
        host = peer.rsplit(":", 1)[0].strip("[]") if peer.count(":") in (1,) or peer.startswith("[") else peer
        if not replay and host not in mapping.identify.allowed_peers:
            return Rejection(errors.INVALID_TOKEN, f"{peer} is not an allowed peer of {mapping.lab!r}", "MSH-4",
                             status=403)
        if not replay:
            return self._certificate_rule(mapping) or mapping
        return mapping

    def _certificate_rule(self, mapping: LabMapping) -> Rejection | None:
        """A lab that lists client certificates must send over TLS with one of them (checked per message)."""
        auth = self.intake.pipeline.authenticator
        participant = self.intake.pipeline.config.participants.get(mapping.lab)
        if participant is None:
            return None
        try:
            auth.check_certificate(participant, auth.verified(CONNECTION_PEER.get()))
        except Rejection as rej:
            return rej
        return None

    def handle(self, raw: bytes, peer: str, *, replay: bool = False) -> Outcome:
        """One message in, one ACK out; ``replay`` maps a kept message again (no peer to check)."""
        try:
            charset = acks.charset_of(raw)
            message = acks.parse(acks.decode(raw, charset))
        except acks.Hl7Rejected as exc:
            rej = Rejection(errors.HL7_UNREADABLE, exc.error.reason, "MSH-18" if isinstance(exc, acks.UnknownCharset)
                            else "MSH")
            self.intake.refused(rej, source="hl7", remote=peer, caller=None, env=None)
            return Outcome("AR", acks.ack_for_unparseable(raw, exc.error))
        except UnicodeDecodeError as exc:
            error = AckError("MSH", 1, 18, None, "103",
                             f"the message is not in its declared character set: {exc.reason}")
            rej = Rejection(errors.HL7_UNREADABLE, error.reason, "MSH-18")
            self.intake.refused(rej, source="hl7", remote=peer, caller=None, env=None)
            return Outcome("AR", acks.ack_for_unparseable(raw, error))
        msh = message.segment("MSH")
        kind = text_of(field_of(msh, 9), 1, 1) + "^" + text_of(field_of(msh, 9), 1, 2)
        if kind != "ORU^R01":
            rej = Rejection(errors.UNKNOWN_MESSAGE_TYPE, f"message type {kind!r} is not accepted: send ORU^R01",
                            "MSH-9")
            return self._refuse(message, charset, "AR", rej, [AckError("MSH", 1, 9, None, "200", rej.detail)], peer)
        mapping = self.identify(message, "127.0.0.1" if replay else peer, replay=replay)
        if isinstance(mapping, Rejection):
            return self._refuse(message, charset, "AR", mapping,
                                [AckError("MSH", 1, 4, None, "204", f"{mapping.code}: {mapping.detail}")], peer)
        return dataclasses.replace(self._mapped(raw, message, charset, mapping, peer, replay), lab=mapping.lab)

    def _mapped(self, raw: bytes, message: hl7.Message, charset: str, mapping: LabMapping, peer: str,
                replay: bool) -> Outcome:
        """The rest of ``handle``, for a message whose lab is known."""
        control = control_id(message)
        if not control:
            return self._no_control_id(raw, message, charset, mapping, peer)
        try:
            mapped = map_message(message, mapping)
        except MappingGaps as exc:
            return self._gaps(raw, message, charset, mapping, exc.gaps, peer, control)
        participant = self.intake.pipeline.config.participants[mapping.lab]
        orders = link_correction(self.versions, mapped.payload, mapped.message_id)
        env = Envelope(message_id=mapped.message_id, sender=mapping.lab, recipient=mapped.recipient,
                       message_type=LAB_RESULT_NS, payload=mapped.payload)
        try:
            accepted = self.intake.receive_envelope(env, participant, source="hl7-replay" if replay else "hl7",
                                                    remote=peer, side_writes=[self.versions.remember_write(
                                                        env.message_id, orders)])
        except Rejection as rej:
            code = "AE" if rej.code in _CONTENT_CODES or rej.status in (400, 422) else "AR"
            err = "205" if rej.code == errors.MESSAGE_ID_REUSED else "207" if code == "AR" else "102"
            where = ("MSH", 1, 10) if rej.code == errors.MESSAGE_ID_REUSED else ("MSH", 1, 0)
            log.info("hl7 message from %s refused: %s %s", mapping.lab, rej.code, mask_text(rej.detail))
            return Outcome(code, acks.ack_to(message, code, [AckError(*where, None, err, f"{rej.code}: {rej.detail}")],
                                          charset=charset))
        except Exception:
            log.exception("hl7 message from %s could not be journalled", mapping.lab)
            store_failed = AckError("MSH", 1, 0, None, "207", "the gateway could not store the message; resend later")
            return Outcome("AR", acks.ack_to(message, "AR", [store_failed], charset=charset))
        log.info("hl7 result %s from %s accepted for %s%s", accepted.outcome.message_id, mapping.lab,
                 mapped.recipient, " (repeat)" if accepted.outcome.duplicate else "")
        warnings = [_ack_error(w) for w in mapped.warnings]
        return Outcome("AA", acks.ack_to(message, "AA", warnings, charset=charset), accepted.outcome.message_id)

    def _no_control_id(self, raw: bytes, message: hl7.Message, charset: str, mapping: LabMapping, peer: str
                       ) -> Outcome:
        reason = ("MSH-10 (message control id) is empty: a resend could not be told from a new message, so the "
                  "message is not taken; send it again with a control id of its own")
        rej = Rejection("CONTROL_ID_MISSING", reason, "MSH-10", status=422)
        kept = kept_envelope(raw, mapping, str(uuid.uuid1()))
        self.intake.refused(rej, source="hl7", remote=peer, caller=mapping.lab, env=kept)
        metrics.MAPPING_GAPS.labels(mapping.lab, rej.code, "").inc()
        log.info("hl7 message from %s refused: no MSH-10 (kept as %s)", mapping.lab, kept.message_id)
        return Outcome("AR", acks.ack_to(message, "AR", [AckError("MSH", 1, 10, None, "101", f"{rej.code}: {reason}")],
                                        charset=charset))

    def _gaps(self, raw: bytes, message: hl7.Message, charset: str, mapping: LabMapping, gaps: list[Gap], peer: str,
              control: str) -> Outcome:
        for g in gaps:
            metrics.MAPPING_GAPS.labels(mapping.lab, g.code, (g.lab_code or "")[:64]).inc()
        first = gaps[0]
        rej = Rejection(first.code, "; ".join(f"{g.where}: {g.reason}" for g in gaps), first.where, status=422)
        # Kept as REJECTED under the MessageID the mapped result will have: `zdravlink replay` maps it
        # again after the mapping is fixed, and a resend by the lab replaces it the same way.
        kept = kept_envelope(raw, mapping, message_id_for(mapping.lab, control)) if control else None
        self.intake.refused(rej, source="hl7", remote=peer, caller=mapping.lab, env=kept)
        log.info("hl7 message from %s has %d mapping gap(s): %s", mapping.lab, len(gaps), mask_text(rej.detail))
        return Outcome("AE", acks.ack_to(message, "AE", [_ack_error(g) for g in gaps], charset=charset))

    def _refuse(self, message: hl7.Message, charset: str, code: str, rej: Rejection, errs: list[AckError], peer: str
                ) -> Outcome:
        self.intake.refused(rej, source="hl7", remote=peer, caller=None, env=None)
        log.info("hl7 message refused (%s): %s %s", code, rej.code, mask_text(rej.detail))
        return Outcome(code, acks.ack_to(message, code, errs, charset=charset))


def _hd(fld: object) -> tuple[str, str, str]:
    return tuple(text_of(fld, 1, c).strip() for c in (1, 2, 3))  # type: ignore[return-value]


def _ack_error(g: Gap) -> AckError:
    severity = "W" if g.severity == "W" else "E"
    code = _ERR_CODES.get(g.code, "207")
    return AckError(g.segment, g.sequence, g.field, g.component, code, f"{g.code}: {g.reason}", severity)


def link_correction(versions: ResultVersions, payload: etree._Element, message_id: str) -> list[tuple[str, str]]:
    """Each order's (OrderId, Status). An order the gateway has carried before (a correction, a
    final after a preliminary) names the message that carried its newest earlier version, in
    Replaces right after its Status: the MIS swaps exactly that order."""
    ns = f"{{{LAB_RESULT_NS}}}"
    orders = []
    for order in payload.iterfind(ns + "Order"):
        order_id, status = order.findtext(ns + "OrderId") or "", order.findtext(ns + "Status") or ""
        previous = versions.latest(order_id, other_than=message_id)
        if previous is not None and order.find(ns + "Replaces") is None:
            replaces = etree.Element(ns + "Replaces")
            replaces.text = previous
            order.find(ns + "Status").addnext(replaces)
        orders.append((order_id, status))
    return orders


def kept_envelope(raw: bytes, mapping: LabMapping, message_id: str) -> Envelope:
    payload = parse_xml(f'<h:Hl7Message xmlns:h="{KEPT_NS}"/>'.encode())
    payload.text = base64.b64encode(raw).decode("ascii")
    return Envelope(message_id=message_id, sender=mapping.lab, recipient=mapping.recipient.fixed or mapping.lab,
                    message_type=KEPT_NS, payload=payload)


def kept_message(rec: MessageRecord) -> bytes | None:
    """The HL7 bytes of a message kept after a gap, or None if the record is not one."""
    if rec.message_type != KEPT_NS:
        return None
    return base64.b64decode(Envelope.from_element(parse_xml(rec.envelope)).payload.text or "")


def replay_kept(labs: LabIntake, records: list[MessageRecord]) -> list[tuple[str, Outcome]]:
    """Map kept messages again with the current mapping files; each AA is now a lab result in the spine."""
    results = []
    for rec in records:
        raw = kept_message(rec)
        if raw is not None and rec.status == "REJECTED":
            results.append((rec.message_id, labs.handle(raw, "replay", replay=True)))
    return results


def parse_for_cli(raw: bytes) -> hl7.Message:
    """Decode and parse as the listener does (for ``zdravlink map``)."""
    return acks.parse(acks.decode(raw, acks.charset_of(raw)))
