"""SMEV faults: a gateway Rejection as the SOAP fault SMEV would send for the same cause.

Every rejection code maps to one fault element of the official faults XSD. Faults of
type ``basic:SmevFault`` carry our stable code in ``Code`` and the field and rule in
``Description``; the ``basic:Void`` ones cannot, so ``faultstring`` always says the
fault, the field and the rule. The caller's mistakes are ``soap:Client``, the gateway's
own failures ``soap:Server`` (real SMEV answers ``soap:Server`` to all; a client that
retries on Server must not retry a message that can never pass).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from lxml import etree

from adapters.soap.smev_schema import SOAP_ENV_NS, B, F
from gateway import errors
from gateway.errors import Rejection
from signing import errors as sig
from zdravlink.errors import RefusedError

#: Fault elements whose type extends basic:SmevFault (Code, Description, then their own children).
_WITH_CODE = {"BusinessDataTypeIsNotSupported", "InvalidContent", "TransactionCodeInvalid",
              "AttachmentSizeLimitExceeded", "QuoteLimitExceeded", "SignatureVerificationFault",
              "DestinationOverflow"}

#: Our rejection code → SMEV fault element (and, for signatures, the SignatureVerificationFault value).
_FAULTS: dict[str, tuple[str, str | None]] = {
    errors.MALFORMED_XML: ("InvalidContent", None),
    errors.XML_DTD_FORBIDDEN: ("InvalidContent", None),
    errors.BODY_TOO_LARGE: ("InvalidContent", None),
    errors.SOAP_REQUEST_INVALID: ("InvalidContent", None),
    errors.ENVELOPE_INVALID: ("InvalidContent", None),
    errors.PAYLOAD_INVALID: ("InvalidContent", None),
    errors.ATTACHMENTS_UNSUPPORTED: ("InvalidContent", None),
    errors.MESSAGE_TYPE_MISMATCH: ("InvalidContent", None),
    errors.UNKNOWN_MESSAGE_TYPE: ("BusinessDataTypeIsNotSupported", None),
    errors.AUTHENTICATION_REQUIRED: ("SenderIsNotRegistered", None),
    errors.INVALID_TOKEN: ("SenderIsNotRegistered", None),
    errors.UNKNOWN_SENDER: ("SenderIsNotRegistered", None),
    errors.SENDER_MISMATCH: ("AccessDenied", None),
    errors.UNKNOWN_RECIPIENT: ("RecipientIsNotFound", None),
    errors.ROUTE_FORBIDDEN: ("AccessDenied", None),
    errors.MESSAGE_ID_REUSED: ("MessageIsAlreadySent", None),
    errors.INVALID_MESSAGE_ID_FORMAT: ("InvalidMessageIdFormat", None),
    errors.STALE_MESSAGE_ID: ("StaleMessageId", None),
    errors.END_OF_LIFE_REACHED: ("EndOfLifeReached", None),
    errors.RESPONSE_KIND_UNSUPPORTED: ("IncorrectResponseContentType", None),
    errors.REQUEST_NOT_FOUND: ("RecipientIsNotFound", None),
    errors.TARGET_MESSAGE_NOT_FOUND: ("TargetMessageIsNotFound", None),
    errors.GATEWAY_FAILURE: ("SMEVFailure", None),
    errors.RATE_LIMITED: ("QuoteLimitExceeded", None),
    errors.TOKEN_EXPIRED: ("SenderIsNotRegistered", None),
    errors.CLIENT_CERTIFICATE_REQUIRED: ("AccessDenied", None),
    errors.CLIENT_CERTIFICATE_MISMATCH: ("AccessDenied", None),
    errors.CLIENT_CERTIFICATE_UNTRUSTED: ("AccessDenied", None),
    errors.CLIENT_CERTIFICATE_EXPIRED: ("AccessDenied", None),
    errors.CLIENT_CERTIFICATE_NOT_YET_VALID: ("AccessDenied", None),
    errors.CLIENT_CERTIFICATE_REVOKED: ("AccessDenied", None),
    sig.SIGNATURE_REQUIRED: ("SignatureVerificationFault", "NoSignatureFound"),
    sig.SIGNATURE_MALFORMED: ("SignatureVerificationFault", "PoorSOAPEnvelopeFormat"),
    sig.SIGNATURE_ALGORITHM_UNSUPPORTED: ("SignatureVerificationFault", "SignatureIsInvalid"),
    sig.SIGNATURE_REFERENCE_MISSING: ("SignatureVerificationFault", "IncorrectSignatureTarget"),
    sig.SIGNATURE_WRAPPING: ("SignatureVerificationFault", "IncorrectSignatureTarget"),
    sig.SIGNATURE_DIGEST_MISMATCH: ("SignatureVerificationFault", "SignatureIsInvalid"),
    sig.SIGNATURE_INVALID: ("SignatureVerificationFault", "SignatureIsInvalid"),
    sig.CERTIFICATE_UNTRUSTED: ("SignatureVerificationFault", "CertificateIsNotFound"),
    sig.CERTIFICATE_REVOKED: ("SignatureVerificationFault", "CertificateIsNotFound"),
    sig.CERTIFICATE_SENDER_MISMATCH: ("SignatureVerificationFault", "CertificateIsNotFound"),
    sig.CERTIFICATE_EXPIRED: ("SignatureVerificationFault", "CertificateIsExpired"),
    sig.CERTIFICATE_NOT_YET_VALID: ("SignatureVerificationFault", "CertificateIsExpired"),
}

#: Where an operation's WSDL does not list the natural fault, the nearest one it does list.
_PER_OPERATION = {
    ("SendResponse", "AccessDenied"): "IncorrectResponseContentType",
    ("SendResponse", "EndOfLifeReached"): "InvalidContent",
    ("GetRequest", "BusinessDataTypeIsNotSupported"): "UnknownMessageType",
    ("GetResponse", "BusinessDataTypeIsNotSupported"): "UnknownMessageType",
    ("GetStatus", "BusinessDataTypeIsNotSupported"): "UnknownMessageType",
}
_NARROW = {"GetRequest", "GetResponse", "GetStatus", "Ack", "GetIncomingQueueStatistics"}
_NARROW_ALLOWED = {"InvalidContent", "SMEVFailure", "SignatureVerificationFault", "SenderIsNotRegistered",
                   "UnknownMessageType", "TargetMessageIsNotFound"}


@dataclass
class SmevFault(RefusedError):
    """A fault ready to send: the fault element's name, our code, the field and the rule."""

    name: str
    code: str
    field: str | None
    detail: str
    signature_fault: str | None = None
    validation_errors: list[tuple[int, str]] = field(default_factory=list)
    #: (local name, namespace URI) of a business root element nobody may send.
    root: tuple[str, str] | None = None

    @classmethod
    def from_rejection(cls, rej: Rejection, operation: str) -> SmevFault:
        name, sig_value = _FAULTS.get(rej.code, ("InvalidContent", None))
        name = _PER_OPERATION.get((operation, name), name)
        if operation in _NARROW and name not in _NARROW_ALLOWED:
            name = "InvalidContent"
        lines = rej.extra.get("validation_errors") or [(0, f"{rej.field}: {rej.detail}" if rej.field else rej.detail)]
        return cls(name, rej.code, rej.field, rej.detail, sig_value, list(lines),  # type: ignore[arg-type]
                   rej.extra.get("root"))  # type: ignore[arg-type]

    @property
    def server(self) -> bool:
        return self.name == "SMEVFailure"

    @property
    def faultstring(self) -> str:
        where = f"{self.field}: " if self.field else ""
        return f"{self.name} [{self.code}] {where}{self.detail}"

    def detail_element(self) -> etree._Element:
        el = etree.Element(F + self.name, nsmap={"f": F[1:-1], "b": B[1:-1]})
        if self.name not in _WITH_CODE:
            return el
        etree.SubElement(el, B + "Code").text = self.code[:50]
        etree.SubElement(el, B + "Description").text = f"{self.field}: {self.detail}" if self.field else self.detail
        if self.name == "InvalidContent":
            for line, message in self.validation_errors:
                etree.SubElement(el, F + "ValidationError", errorPosition=str(line)).text = message
        elif self.name == "SignatureVerificationFault":
            etree.SubElement(el, F + "SignatureVerificationFault").text = self.signature_fault or "SignatureIsInvalid"
        elif self.name == "BusinessDataTypeIsNotSupported":
            local, ns = self.root or ("", "")
            etree.SubElement(el, F + "RootElementLocalName").text = local
            etree.SubElement(el, F + "RootElementNamespaceURI").text = ns
        return el

    def envelope(self) -> etree._Element:
        """The whole SOAP 1.1 envelope carrying this fault."""
        env = etree.Element(f"{{{SOAP_ENV_NS}}}Envelope", nsmap={"soap": SOAP_ENV_NS})
        body = etree.SubElement(env, f"{{{SOAP_ENV_NS}}}Body")
        fault = etree.SubElement(body, f"{{{SOAP_ENV_NS}}}Fault")
        etree.SubElement(fault, "faultcode").text = "soap:Server" if self.server else "soap:Client"
        etree.SubElement(fault, "faultstring").text = self.faultstring
        etree.SubElement(fault, "detail").append(self.detail_element())
        return env
