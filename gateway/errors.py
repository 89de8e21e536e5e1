"""Rejections: one exception type that every adapter turns into its own error form.

A rejection carries a stable machine code, the offending field and a human detail, so
REST can answer problem+json, SOAP a Fault and HL7 a NAK from the same object.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from zdravlink.errors import RefusedError


@dataclass
class Rejection(RefusedError):
    """Input the gateway refuses; never a crash, always a code and a field."""

    code: str
    detail: str
    field: str | None = None
    status: int = 400
    extra: dict[str, object] = dataclasses.field(default_factory=dict)

    def __str__(self) -> str:
        where = f" [{self.field}]" if self.field else ""
        return f"{self.code}{where}: {self.detail}"


# Stable error codes. Partners program against these; never rename one.
MALFORMED_JSON = "MALFORMED_JSON"
MALFORMED_XML = "MALFORMED_XML"
XML_DTD_FORBIDDEN = "XML_DTD_FORBIDDEN"
BODY_TOO_LARGE = "BODY_TOO_LARGE"
UNSUPPORTED_MEDIA_TYPE = "UNSUPPORTED_MEDIA_TYPE"
ENVELOPE_INVALID = "ENVELOPE_INVALID"
PAYLOAD_INVALID = "PAYLOAD_INVALID"
UNKNOWN_MESSAGE_TYPE = "UNKNOWN_MESSAGE_TYPE"
MESSAGE_TYPE_MISMATCH = "MESSAGE_TYPE_MISMATCH"
AUTHENTICATION_REQUIRED = "AUTHENTICATION_REQUIRED"
INVALID_TOKEN = "INVALID_TOKEN"
#: A token that was valid until its ``expires`` (participants.yaml): the partner must use its successor (401).
TOKEN_EXPIRED = "TOKEN_EXPIRED"
#: TLS client certificates (gateway.credentials, gateway.tls), all 403: none where the participant needs one,
#: one that is not the participant's (or nobody's), one the listener's CA store does not vouch for.
CLIENT_CERTIFICATE_REQUIRED = "CLIENT_CERTIFICATE_REQUIRED"
CLIENT_CERTIFICATE_MISMATCH = "CLIENT_CERTIFICATE_MISMATCH"
CLIENT_CERTIFICATE_UNTRUSTED = "CLIENT_CERTIFICATE_UNTRUSTED"
CLIENT_CERTIFICATE_EXPIRED = "CLIENT_CERTIFICATE_EXPIRED"
CLIENT_CERTIFICATE_NOT_YET_VALID = "CLIENT_CERTIFICATE_NOT_YET_VALID"
CLIENT_CERTIFICATE_REVOKED = "CLIENT_CERTIFICATE_REVOKED"
#: Over the participant's rate limit (gateway.ratelimit): 429 with Retry-After; nothing was accepted.
RATE_LIMITED = "RATE_LIMITED"
UNKNOWN_SENDER = "UNKNOWN_SENDER"
SENDER_MISMATCH = "SENDER_MISMATCH"
UNKNOWN_RECIPIENT = "UNKNOWN_RECIPIENT"
ROUTE_FORBIDDEN = "ROUTE_FORBIDDEN"
MESSAGE_ID_REUSED = "MESSAGE_ID_REUSED"
MESSAGE_NOT_FOUND = "MESSAGE_NOT_FOUND"
#: JSON the gateway will not read: nested deeper than it allows, a key twice in one object, or a
#: string with a NUL or a lone surrogate (neither can travel in XML or UTF-8).
JSON_TOO_DEEP = "JSON_TOO_DEEP"
JSON_DUPLICATE_KEY = "JSON_DUPLICATE_KEY"
INVALID_CHARACTER = "INVALID_CHARACTER"
#: Another message accepted at the same moment took what this one needs (e.g. the same service
#: record); nothing of this one was kept, and sending it again gets a definite answer.
ACCEPT_CONFLICT = "ACCEPT_CONFLICT"
#: The journal cannot be reached: nothing was accepted; send again after Retry-After (503).
JOURNAL_UNAVAILABLE = "JOURNAL_UNAVAILABLE"
#: /metrics asked for from another host with no scrape token or metrics port configured.
METRICS_FORBIDDEN = "METRICS_FORBIDDEN"
#: An unexpected failure inside the gateway (500); the incident id is in the log and the audit table.
INTERNAL_ERROR = "INTERNAL_ERROR"
# SMEV 3 protocol (adapters/soap); each maps to the SMEV fault of the same meaning.
INVALID_MESSAGE_ID_FORMAT = "INVALID_MESSAGE_ID_FORMAT"
STALE_MESSAGE_ID = "STALE_MESSAGE_ID"
END_OF_LIFE_REACHED = "END_OF_LIFE_REACHED"
ATTACHMENTS_UNSUPPORTED = "ATTACHMENTS_UNSUPPORTED"
RESPONSE_KIND_UNSUPPORTED = "RESPONSE_KIND_UNSUPPORTED"
REQUEST_NOT_FOUND = "REQUEST_NOT_FOUND"
TARGET_MESSAGE_NOT_FOUND = "TARGET_MESSAGE_NOT_FOUND"
SOAP_REQUEST_INVALID = "SOAP_REQUEST_INVALID"
GATEWAY_FAILURE = "GATEWAY_FAILURE"
# HL7 v2 (adapters/hl7v2); mapping gaps carry their own codes (UNMAPPED_TEST_CODE …, see docs/onboarding-a-lab.md).
HL7_UNREADABLE = "HL7_UNREADABLE"
# Service records (gateway/service_records.py)
SERVICE_CODE_UNKNOWN = "SERVICE_CODE_UNKNOWN"
TARIFF_MISMATCH = "TARIFF_MISMATCH"
DATE_INVALID = "DATE_INVALID"
SNILS_INVALID = "SNILS_INVALID"
UNKNOWN_INSURER = "UNKNOWN_INSURER"
SERVICE_RECORD_DUPLICATE = "SERVICE_RECORD_DUPLICATE"
SERVICE_RECORD_NOT_FOUND = "SERVICE_RECORD_NOT_FOUND"
FIELD_REQUIRED = "FIELD_REQUIRED"
IDENTITY_DOCUMENT_INVALID = "IDENTITY_DOCUMENT_INVALID"
REGISTER_EDITION_UNSUPPORTED = "REGISTER_EDITION_UNSUPPORTED"
PROTOCOL_INVALID = "PROTOCOL_INVALID"
# Registry requests (gateway/accept.py)
OGRN_INVALID = "OGRN_INVALID"
