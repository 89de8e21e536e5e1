"""Why a signature was refused, as a stable code a partner can program against.

``signing`` sits below ``gateway`` and cannot use its Rejection; adapters map a
SignatureError onto their own error form (problem+json, SOAP Fault) by its code.
"""
from __future__ import annotations

from zdravlink.errors import SigningError

SIGNATURE_REQUIRED = "SIGNATURE_REQUIRED"
SIGNATURE_MALFORMED = "SIGNATURE_MALFORMED"
SIGNATURE_ALGORITHM_UNSUPPORTED = "SIGNATURE_ALGORITHM_UNSUPPORTED"
SIGNATURE_REFERENCE_MISSING = "SIGNATURE_REFERENCE_MISSING"
SIGNATURE_WRAPPING = "SIGNATURE_WRAPPING"
SIGNATURE_DIGEST_MISMATCH = "SIGNATURE_DIGEST_MISMATCH"
SIGNATURE_INVALID = "SIGNATURE_INVALID"
CERTIFICATE_UNTRUSTED = "CERTIFICATE_UNTRUSTED"
CERTIFICATE_EXPIRED = "CERTIFICATE_EXPIRED"
CERTIFICATE_NOT_YET_VALID = "CERTIFICATE_NOT_YET_VALID"
CERTIFICATE_REVOKED = "CERTIFICATE_REVOKED"
CERTIFICATE_SENDER_MISMATCH = "CERTIFICATE_SENDER_MISMATCH"

#: Codes that say the certificate, not the document, is the problem (HTTP 403 rather than 422).
CERTIFICATE_CODES = frozenset({CERTIFICATE_UNTRUSTED, CERTIFICATE_EXPIRED, CERTIFICATE_NOT_YET_VALID,
                               CERTIFICATE_REVOKED, CERTIFICATE_SENDER_MISMATCH})


class SignatureError(SigningError):
    """A signature that cannot be accepted; ``code`` is one of the constants above."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
