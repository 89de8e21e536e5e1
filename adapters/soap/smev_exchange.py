"""The SMEV 3 message exchange: what each operation means, apart from SOAP and spyne.

SendRequest and SendResponse become canonical envelopes and go through the same
intake as REST messages (same checks, journal, outbox and RabbitMQ path): SOAP is an
adapter, not a second pipeline. GetRequest and GetResponse hand out one message at a
time from the caller's pull inbox, Ack confirms it, GetStatus reports what became of
the caller's own messages, GetIncomingQueueStatistics counts what waits for it.

Who calls: SMEV knows the caller by the certificate of CallerInformationSystemSignature.
So does the gateway; a partner without a certificate may instead present its API token
(``Authorization: Bearer``), and where both come the certificate must be the token
owner's. Every refusal is a Rejection with our code, audited, and then turned into the
SMEV fault of the same meaning by the service.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from lxml import etree

from adapters.intake import Intake
from adapters.mapping.lab_json import LAB_REPORT_NS, document_from_xml
from adapters.mapping.lab_service import LabResults
from adapters.soap import smev_mapping as mapping
from adapters.soap.smev_schema import B, T, smev_element, validation_errors
from gateway import errors, schemas
from gateway.config import GatewayConfig, Participant
from gateway.envelope import DSIG_NS, Envelope
from gateway.errors import Rejection
from gateway.journal import MessageRecord, Status
from gateway.journal.inbox import Inbox
from gateway.keyring import KeyRing, explain_for_audit
from gateway.message_ids import check_message_id
from gateway.schemas import known_message_types
from gateway.tls import PeerCertificate
from gateway.xmlsafe import parse_xml
from signing import SignatureError, sign, verify
from signing import errors as sig
from zdravlink.errors import Interrupt

OPERATIONS = ("SendRequest", "SendResponse", "GetRequest", "GetResponse", "Ack", "GetStatus",
              "GetIncomingQueueStatistics")
SMEV_SIGNATURE_ID = "SIGNED_BY_SMEV"
_CALLER_SIGNATURE = f"{T}CallerInformationSystemSignature/{{{DSIG_NS}}}Signature"


class Audited(Interrupt):
    """A Rejection the intake has already written to the audit journal."""

    def __init__(self, rejection: Rejection) -> None:
        super().__init__(str(rejection))
        self.rejection = rejection


@dataclass(frozen=True)
class Caller:
    participant: Participant
    #: What the verified CallerInformationSystemSignature said, for the trail; None when a token identified.
    signature: dict[str, str] | None = None

    @property
    def signed(self) -> bool:
        return self.signature is not None


class SmevExchange:
    def __init__(self, config: GatewayConfig, intake: Intake, inbox: Inbox, keyring: KeyRing,
                 labs: LabResults | None = None, clock: Callable[[], datetime] | None = None) -> None:
        self.labs = labs
        self.config = config
        self.intake = intake
        self.inbox = inbox
        self.keyring = keyring
        self.settings = config.settings.smev
        self.clock = clock or (lambda: datetime.now(UTC))
        self._types = known_message_types()

    # ---- entry ------------------------------------------------------------

    def handle(self, operation: str, request: etree._Element, token: str | None, remote: str | None,
               peer: PeerCertificate | None = None, size: int = 0) -> etree._Element:
        """The response element for ``request`` (the SOAP body's child), or raise Audited.

        ``peer`` is the TLS client certificate of the connection; ``size`` the request's bytes, for the
        sender's rate limit (SendRequest and SendResponse only: polling is not sending).
        """
        caller: Caller | None = None
        try:
            if operation in ("SendRequest", "SendResponse"):
                self._check_message_id(request)
            problems = validation_errors(request)
            if problems:
                raise Rejection(errors.SOAP_REQUEST_INVALID, problems[0][1], etree.QName(request).localname,
                                extra={"validation_errors": problems[:20]})
            caller = self._caller(request, operation, token, peer)
            if operation in ("SendRequest", "SendResponse"):
                try:
                    self.intake.admit(caller.participant, size, source="soap", remote=remote)
                except Rejection as rej:
                    raise Audited(rej) from None  # admit audited it
            return getattr(self, "_" + operation)(request, caller, remote)
        except Audited:
            raise
        except Rejection as rej:
            named = rej.extra.get("participant")
            self.intake.refused(rej, source="soap", remote=remote,
                                caller=caller.participant.mnemonic if caller else named if isinstance(named, str)
                                else None, env=None)
            raise Audited(rej) from None

    # ---- checks -------------------------------------------------------------

    def _check_message_id(self, request: etree._Element) -> None:
        """UUID v1 in lower case, not stale, not from the future; before the XSD, whose pattern is looser."""
        el = next(request.iter(T + "MessageID"), None)
        if el is None:
            return  # the XSD names the missing element
        s = self.settings
        check_message_id((el.text or "").strip(), self.clock(), s.message_id_max_age_hours, s.clock_skew_seconds)

    def _signed_target(self, request: etree._Element, operation: str) -> etree._Element:
        if operation == "SendRequest":
            return request.find(T + "SenderProvidedRequestData")
        if operation == "SendResponse":
            return request.find(T + "SenderProvidedResponseData")
        if operation in ("GetRequest", "GetResponse"):
            return request.find(B + "MessageTypeSelector")
        if operation == "Ack":
            return request.find(B + "AckTargetMessage")
        return request.find(B + "Timestamp")

    def _caller(self, request: etree._Element, operation: str, token: str | None,
                peer: PeerCertificate | None = None) -> Caller:
        """Who calls: the token (with the client certificate its owner must present), else the signature's
        certificate, else the TLS client certificate alone (a participant that has no tokens)."""
        auth = self.intake.pipeline.authenticator
        cert = auth.verified(peer)  # a client certificate the listener does not vouch for ends it here
        by_token = self.intake.pipeline.authenticate(token, peer) if token else None
        signature = request.find(_CALLER_SIGNATURE)
        if signature is None:
            if by_token is None:
                if cert is not None:
                    return Caller(self.intake.pipeline.authenticate(None, peer))
                raise Rejection(sig.SIGNATURE_REQUIRED, "no CallerInformationSystemSignature and no API token: "
                                "the caller cannot be identified", "CallerInformationSystemSignature", status=403)
            return Caller(by_token)
        if self.keyring.trust is None:
            raise Rejection(sig.CERTIFICATE_UNTRUSTED, "the gateway has no trust store configured",
                            "CallerInformationSystemSignature", status=403)
        signers = self.keyring.certificates.get(by_token.mnemonic, []) if by_token else None
        try:
            verified = verify(signature, document=request, trust=self.keyring.trust,
                              expected=self._signed_target(request, operation), signers=signers, at=self.clock())
        except SignatureError as exc:
            explanation = explain_for_audit(signature, request, self.keyring, self._signed_target(request, operation),
                                            signers)
            raise Rejection(exc.code, exc.detail, "CallerInformationSystemSignature", status=403,
                            extra={"explanation": explanation}) from None
        seen = {"subject": verified.certificate.subject, "serial": str(verified.certificate.serial),
                "algorithm": verified.algorithm.name,
                "element": etree.QName(self._signed_target(request, operation)).localname}
        if by_token is not None:
            return Caller(by_token, seen)
        owner = next((self.config.participants[m] for m, certs in self.keyring.certificates.items()
                      if verified.certificate in certs), None)
        if owner is None:
            raise Rejection(errors.UNKNOWN_SENDER, f"the certificate {verified.certificate.subject!r} belongs to no "
                            "registered participant", "CallerInformationSystemSignature", status=403)
        auth.check_certificate(owner, cert)
        return Caller(owner, seen)

    def _refuse_attachments(self, data: etree._Element, request: etree._Element) -> None:
        for tag in (B + "AttachmentHeaderList", B + "RefAttachmentHeaderList"):
            if data.find(tag) is not None:
                raise Rejection(errors.ATTACHMENTS_UNSUPPORTED, "attachments are not supported by this gateway yet",
                                etree.QName(tag).localname, status=422)
        if request.find(B + "AttachmentContentList") is not None:
            raise Rejection(errors.ATTACHMENTS_UNSUPPORTED, "attachments are not supported by this gateway yet",
                            "AttachmentContentList", status=422)

    def _check_eol(self, data: etree._Element) -> None:
        eol = data.findtext(T + "EOL")
        if eol:
            when = datetime.fromisoformat(eol.strip().replace("Z", "+00:00"))
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            if when < self.clock():
                raise Rejection(errors.END_OF_LIFE_REACHED, f"the message's end of life {eol} has passed", "EOL")

    def _accept(self, env: Envelope, caller: Caller, remote: str | None) -> None:
        try:
            accepted = self.intake.receive_envelope(env, caller.participant, source="soap", remote=remote,
                                                    verified_signature=caller.signature)
        except Rejection as rej:
            raise Audited(rej) from None
        if accepted.outcome.duplicate:
            # SMEV's idempotency answer: the message is already in, stop sending it.
            raise Audited(Rejection(errors.MESSAGE_ID_REUSED, f"{env.message_id} was already accepted: stop resending",
                                    "MessageID", status=409))


    # ---- signing of answers -------------------------------------------------

    def _smev_signature(self, target: etree._Element, holder: etree._Element) -> None:
        """Sign ``target`` with the gateway's key into an SMEVSignature element appended to ``holder``."""
        if self.keyring.signer is None:
            return
        etree.SubElement(holder, T + "SMEVSignature").append(
            sign(target, self.keyring.signer, smev=self.keyring.smev_transform))

    # ---- operations -----------------------------------------------------------

    def _SendRequest(self, request: etree._Element, caller: Caller, remote: str | None) -> etree._Element:
        data = request.find(T + "SenderProvidedRequestData")
        self._refuse_attachments(data, request)
        self._check_eol(data)
        payload = mapping.payload_of(data)
        qname = etree.QName(payload)
        if qname.namespace not in self._types:
            raise Rejection(errors.UNKNOWN_MESSAGE_TYPE, f"no message type {qname.namespace!r} is registered",
                            "MessagePrimaryContent", status=422,
                            extra={"root": (qname.localname, qname.namespace or "")})
        if qname.namespace == LAB_REPORT_NS:
            return self._lab_report(data, payload, caller, remote)
        recipient = self._recipient(caller.participant.mnemonic, qname.namespace, payload)
        env = mapping.envelope_from_request_data(data, caller.participant.mnemonic, recipient)
        self._accept(env, caller, remote)
        return self._send_answer("SendRequestResponse", env.message_id, env.sender, env.recipient, "REQUEST")

    def _lab_report(self, data: etree._Element, payload: etree._Element, caller: Caller, remote: str | None
                    ) -> etree._Element:
        """A lab's own results inside SMEV: mapped by its mapping file into a lab result, as over REST."""
        if self.labs is None:
            raise Rejection(errors.UNKNOWN_MESSAGE_TYPE, "lab reports are not taken here", "MessagePrimaryContent",
                            status=422, extra={"root": ("LabReport", LAB_REPORT_NS)})
        schemas.validate_payload(LAB_REPORT_NS, payload)
        message_id = (data.findtext(T + "MessageID") or "").strip()
        try:
            answer = self.labs.submit(document_from_xml(payload), caller.participant, source="soap", remote=remote,
                                      message_id=message_id, verified_signature=caller.signature)
        except Rejection as rej:
            listed = rej.extra.get("errors") or []
            if listed:
                rej.extra["validation_errors"] = [(0, f"{e['field']}: {e['code']}: {e['detail']}") for e in listed]
            raise Audited(rej) from None
        if answer["duplicate"]:
            raise Audited(Rejection(errors.MESSAGE_ID_REUSED, f"{message_id} was already accepted: stop resending",
                                    "MessageID", status=409))
        return self._send_answer("SendRequestResponse", message_id, caller.participant.mnemonic, answer["recipient"],
                                 "REQUEST")

    def _recipient(self, sender: str, message_type: str, payload: etree._Element) -> str:
        """SMEV routes by message type: the first route from this sender for the type whose condition holds."""
        for route in self.config.routes:
            if route.message_type == message_type and route.sender in (sender, "*") and route.matches(payload):
                return route.recipient
        raise Rejection(errors.ROUTE_FORBIDDEN, f"{sender!r} may not send {message_type!r} to anyone",
                        "MessagePrimaryContent", status=403)

    def _SendResponse(self, request: etree._Element, caller: Caller, remote: str | None) -> etree._Element:
        data = request.find(T + "SenderProvidedResponseData")
        payload = mapping.response_payload(data)
        if payload is None:
            kind = etree.QName(data[2]).localname
            raise Rejection(errors.RESPONSE_KIND_UNSUPPORTED, f"a {kind} answer cannot be carried yet; answer with "
                            "MessagePrimaryContent, RequestRejected or RequestStatus", kind, status=422)
        self._refuse_attachments(data, request)
        to = (data.findtext(T + "To") or "").strip()
        original = self.intake.journal.get(to)
        if original is None or original.recipient != caller.participant.mnemonic:
            raise Rejection(errors.REQUEST_NOT_FOUND, f"To {to!r} names no request sent to "
                            f"{caller.participant.mnemonic!r}", "To", status=404)
        ns = etree.QName(payload).namespace
        if ns not in self._types:
            raise Rejection(errors.UNKNOWN_MESSAGE_TYPE, f"no message type {ns!r} is registered",
                            "MessagePrimaryContent", status=422,
                            extra={"root": (etree.QName(payload).localname, ns or "")})
        env = mapping.envelope_from_response_data(data, payload, caller.participant.mnemonic, self._envelope(original))
        self._accept(env, caller, remote)
        return self._send_answer("SendResponseResponse", env.message_id, env.sender, env.recipient, "RESPONSE")

    def _send_answer(self, tag: str, message_id: str, sender: str, recipient: str, kind: str) -> etree._Element:
        answer = etree.Element(T + tag, nsmap={"t": T[1:-1], "b": B[1:-1]})
        md = mapping.metadata(message_id, kind, self.config.participants[sender],
                              self.config.participants[recipient], self.clock(), status="requestIsQueued",
                              element_id=SMEV_SIGNATURE_ID)
        answer.append(md)
        self._smev_signature(md, answer)
        return answer

    @staticmethod
    def _envelope(rec: MessageRecord) -> Envelope:
        return Envelope.from_element(parse_xml(rec.envelope))

    def _selector(self, request: etree._Element) -> tuple[str | None, str | None]:
        selector = request.find(B + "MessageTypeSelector")
        ns = selector.findtext(B + "NamespaceURI")
        local = selector.findtext(B + "RootElementLocalName")
        if ns is not None and ns.strip() not in self._types:
            raise Rejection(errors.UNKNOWN_MESSAGE_TYPE, f"no message type {ns.strip()!r} is registered",
                            "MessageTypeSelector/NamespaceURI", status=422)
        return (ns.strip() if ns else None), (local.strip() if local else None)

    def _GetRequest(self, request: etree._Element, caller: Caller, remote: str | None) -> etree._Element:
        ns, local = self._selector(request)
        taken = self.inbox.take(caller.participant.mnemonic, "request", self.settings.pull_lock_seconds, ns, local)
        if taken is None:
            return smev_element("GetRequestResponse")
        env = self._envelope(taken.record)
        answer = smev_element("GetRequestResponse", env.payload)
        holder = etree.SubElement(answer, T + "RequestMessage")
        req = etree.SubElement(holder, T + "Request", Id=SMEV_SIGNATURE_ID)
        req.append(mapping.request_data(env))
        req.append(mapping.metadata(env.message_id, "REQUEST", self.config.participants[env.sender],
                                    caller.participant, taken.record.created_at, delivered=self.clock(),
                                    status="underProcessing"))
        etree.SubElement(req, T + "ReplyTo").text = env.message_id
        self._smev_signature(req, holder)
        return answer

    def _GetResponse(self, request: etree._Element, caller: Caller, remote: str | None) -> etree._Element:
        ns, local = self._selector(request)
        taken = self.inbox.take(caller.participant.mnemonic, "response", self.settings.pull_lock_seconds, ns, local)
        if taken is None:
            return smev_element("GetResponseResponse")
        env = self._envelope(taken.record)
        answer = smev_element("GetResponseResponse", env.payload)
        holder = etree.SubElement(answer, T + "ResponseMessage")
        resp = etree.SubElement(holder, T + "Response", Id=SMEV_SIGNATURE_ID)
        etree.SubElement(resp, T + "OriginalMessageId").text = env.reference_message_id
        if env.transaction_code:
            etree.SubElement(resp, T + "OriginalTransactionCode").text = env.transaction_code
        resp.append(mapping.response_data(env))
        resp.append(mapping.metadata(env.message_id, "RESPONSE", self.config.participants[env.sender],
                                     caller.participant, taken.record.created_at, delivered=self.clock(),
                                     status="responseIsDelivered"))
        self._smev_signature(resp, holder)
        return answer

    def _Ack(self, request: etree._Element, caller: Caller, remote: str | None) -> etree._Element:
        target = request.find(B + "AckTargetMessage")
        message_id = (target.text or "").strip()
        accepted = target.get("accepted") in ("true", "1")
        who = caller.participant.mnemonic
        outcome = self.inbox.ack(who, message_id, accepted, f"soap:{who}")
        if outcome != "acked":
            why = "was already acknowledged" if outcome == "already" else f"was never handed to {who!r}"
            raise Rejection(errors.TARGET_MESSAGE_NOT_FOUND, f"{message_id} {why}", "AckTargetMessage", status=404)
        return etree.Element(T + "AckResponse", nsmap={"t": T[1:-1]})

    def _GetStatus(self, request: etree._Element, caller: Caller, remote: str | None) -> etree._Element:
        answer = etree.Element(T + "GetStatusResponse", nsmap={"t": T[1:-1], "b": B[1:-1]})
        rec = self.inbox.next_status(caller.participant.mnemonic)
        if rec is None:
            return answer
        holder = etree.SubElement(answer, T + "SmevAsyncProcessingMessage")
        data = etree.SubElement(holder, T + "AsyncProcessingStatusData", Id=SMEV_SIGNATURE_ID)
        status = etree.SubElement(data, T + "AsyncProcessingStatus")
        etree.SubElement(status, T + "OriginalMessageId").text = rec.message_id
        delivered = rec.status == Status.DELIVERED.value
        category = "underProcessing" if delivered else "requestIsRejectedBySmev"
        etree.SubElement(status, T + "StatusCategory").text = category
        etree.SubElement(status, T + "StatusDetails").text = (
            f"delivered to {rec.recipient}" if delivered
            else f"{rec.status}: {rec.last_error or 'not delivered'}")[:500]
        if not delivered:
            fault = etree.SubElement(status, T + "SmevFault")
            etree.SubElement(fault, B + "Code").text = rec.status
            etree.SubElement(fault, B + "Description").text = rec.last_error or "not delivered"
        self._smev_signature(data, holder)
        return answer

    def _GetIncomingQueueStatistics(self, request: etree._Element, caller: Caller, remote: str | None
                                    ) -> etree._Element:
        answer = etree.Element(T + "GetIncomingQueueStatisticsResponse", nsmap={"t": T[1:-1]})
        for (kind, message_type), count in sorted(self.inbox.pending(caller.participant.mnemonic).items()):
            etree.SubElement(answer, T + "QueueStatistics", queueName=f"{kind}:{message_type}"[:200],
                             pendingMessageNumber=str(count))
        return answer

