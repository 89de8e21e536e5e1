"""A detached signature over raw octets, carried in HTTP headers beside a JSON body.

JSON has no canonical form the two ends could agree on, so the signature covers the
body's bytes exactly as sent, the way JWS with detached content does (RFC 7797). The
algorithms are named by the XML-DSig URIs this package already knows, not JOSE's
names, because JOSE has none for GOST R 34.10-2012::

    X-Signature-Algorithm:   urn:ietf:params:xml:ns:cpxmlsec:algorithms:gostr34102012-gostr34112012-256
    X-Signature:             base64 of the signature value (GOST: s‖r, as in XML-DSig here)
    X-Signature-Certificate: base64 of the signer's certificate, DER

The checks and their order are those of ``signing.xmldsig.verify``, so a refused
signature carries the same SignatureError code whichever form it came in.
"""
from __future__ import annotations

import base64
import binascii
import datetime as dt
from collections.abc import Iterable, Mapping

from signing import errors
from signing.backends import BY_SIGNATURE_URI
from signing.errors import SignatureError
from signing.keys import Certificate, KeyFileError
from signing.trust import TrustStore
from signing.xmldsig import Signer, Verified, check_signer

ALGORITHM_HEADER = "X-Signature-Algorithm"
SIGNATURE_HEADER = "X-Signature"
CERTIFICATE_HEADER = "X-Signature-Certificate"


def sign_octets(data: bytes, signer: Signer) -> dict[str, str]:
    """The three headers that sign ``data``; the body must then travel byte for byte as given."""
    alg = signer.algorithm
    return {
        ALGORITHM_HEADER: alg.signature_uri,
        SIGNATURE_HEADER: base64.b64encode(alg.backend.sign(signer.key, data)).decode("ascii"),
        CERTIFICATE_HEADER: base64.b64encode(signer.certificate.der).decode("ascii"),
    }


def _b64(value: str, what: str) -> bytes:
    try:
        return base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError(errors.SIGNATURE_MALFORMED, f"{what} is not base64") from None


def verify_octets(data: bytes, headers: Mapping[str, str], *, trust: TrustStore,
                  signers: Iterable[Certificate] | None, at: dt.datetime | None = None) -> Verified:
    """Verify the signature ``headers`` carry over ``data``; raise SignatureError with the reason.

    ``headers`` is looked up by the exact names above, so pass something that ignores
    case (httpx.Headers) for headers off the wire. No ``X-Signature`` at all is
    SIGNATURE_REQUIRED; one without its algorithm or certificate is malformed.
    ``signers``, when given, are the certificates the expected sender holds.
    """
    value = headers.get(SIGNATURE_HEADER)
    if not value:
        raise SignatureError(errors.SIGNATURE_REQUIRED, f"no {SIGNATURE_HEADER} header")
    uri, cert_b64 = headers.get(ALGORITHM_HEADER), headers.get(CERTIFICATE_HEADER)
    if not uri or not cert_b64:
        missing = ALGORITHM_HEADER if not uri else CERTIFICATE_HEADER
        raise SignatureError(errors.SIGNATURE_MALFORMED, f"{SIGNATURE_HEADER} without {missing}")
    alg = BY_SIGNATURE_URI.get(uri.strip())
    if alg is None:
        raise SignatureError(errors.SIGNATURE_ALGORITHM_UNSUPPORTED,
                             f"{ALGORITHM_HEADER} {uri!r} (supported: {', '.join(BY_SIGNATURE_URI)})")
    signature = _b64(value, SIGNATURE_HEADER)
    try:
        cert = Certificate.from_bytes(_b64(cert_b64, CERTIFICATE_HEADER), CERTIFICATE_HEADER)
    except KeyFileError as exc:
        raise SignatureError(errors.SIGNATURE_MALFORMED, str(exc)) from None

    trusted = check_signer(cert, alg, trust=trust, signers=signers, at=at, method=ALGORITHM_HEADER)
    if not alg.backend.verify(cert, data, signature):
        raise SignatureError(errors.SIGNATURE_INVALID,
                             f"the signature does not verify over the body with the key of {cert.subject!r}")
    return Verified(cert, trusted.anchor, alg, ())
