"""RFC 3161 timestamps: the request the gateway sends a TSA, and the checks on the token it gets back.

A token is a CMS SignedData whose content is a TSTInfo: the TSA's statement that a
digest (the message imprint) existed at ``genTime``. The signature is verified by
libcrypto (``signing.cms.open_attached``), the same path as every CMS signature here,
so GOST TSAs (CryptoPro's) verify as well as RSA ones; whether the TSA is trusted is
decided by the trust store's rules at ``genTime``, and its certificate must be for
time stamping (extended key usage ``timeStamping``, RFC 3161 §2.3). The ESS
signing-certificate attribute is not checked: the certificate that verifies the
signature is the one whose trust is judged.
"""
from __future__ import annotations

import ctypes
import datetime as dt
import hashlib
from dataclasses import dataclass

from signing import der, errors, libcrypto
from signing.backends import algorithm_for
from signing.cms import open_attached
from signing.errors import SignatureError
from signing.keys import Certificate
from signing.trust import TrustStore
from signing.xmldsig import check_signer

SHA256 = "2.16.840.1.101.3.4.2.1"
SIGNED_DATA = "1.2.840.113549.1.7.2"
TST_INFO = "1.2.840.113549.1.9.16.1.4"
_XKU_TIMESTAMP = 0x40
_NO_EKU = 0xFFFFFFFF  # libcrypto's answer for a certificate without the extension: any use, which RFC 3161 forbids
_STATUS = {0: "granted", 1: "granted with modifications", 2: "rejection", 3: "waiting",
           4: "revocation warning", 5: "revocation notification"}


class TimestampError(SignatureError):
    """A TSA's answer that is not a usable timestamp (refused, malformed, or for another digest)."""


@dataclass(frozen=True)
class Timestamp:
    """What a verified token says, and who said it."""

    gen_time: dt.datetime
    serial: int
    policy: str
    nonce: int | None
    tsa: Certificate


def request(data: bytes, nonce: int) -> bytes:
    """A DER TimeStampReq for SHA-256(``data``), asking for the TSA's certificate in the token."""
    imprint = der.sequence(der.sequence(der.oid(SHA256), der.encode(der.NULL, b"")),
                           der.encode(der.OCTET_STRING, hashlib.sha256(data).digest()))
    return der.sequence(der.integer(1), imprint, der.integer(nonce), der.encode(der.BOOLEAN, b"\xff"))


def token_of(response: bytes) -> bytes:
    """The TimeStampToken of a TimeStampResp; TimestampError with the TSA's status when it granted none."""
    try:
        fields = der.children(der.one(response, der.SEQUENCE).value)
        status = der.as_int(der.children(fields[0].value)[0])
    except (der.DerError, IndexError) as exc:
        raise TimestampError(errors.SIGNATURE_MALFORMED, f"not an RFC 3161 TimeStampResp: {exc}") from None
    if status not in (0, 1):
        raise TimestampError(errors.SIGNATURE_INVALID, f"the TSA refused: status {status} "
                             f"({_STATUS.get(status, 'unknown')})")
    if len(fields) < 2:
        raise TimestampError(errors.SIGNATURE_MALFORMED, "the TSA granted the request but sent no token")
    return fields[1].raw


def verify(token: bytes, data: bytes, *, trust: TrustStore) -> Timestamp:
    """Check a token is a trusted TSA's timestamp over SHA-256(``data``); what it says, or TimestampError."""
    _check_content_type(token)
    try:
        content, tsa = open_attached(token)
    except SignatureError as exc:
        raise TimestampError(exc.code, f"timestamp token: {exc.detail}") from None
    stamp = _tst_info(content, tsa)
    if stamp[1] != hashlib.sha256(data).digest():
        raise TimestampError(errors.SIGNATURE_DIGEST_MISMATCH, "the timestamp is over another digest")
    info = stamp[0]
    if not _for_timestamping(tsa):
        raise TimestampError(errors.CERTIFICATE_UNTRUSTED,
                             f"{tsa.subject!r} is not a time stamping certificate (extended key usage)")
    try:
        alg = algorithm_for(tsa.key_type)
    except ValueError as exc:
        raise TimestampError(errors.SIGNATURE_ALGORITHM_UNSUPPORTED, str(exc)) from None
    try:
        check_signer(tsa, alg, trust=trust, signers=None, at=info.gen_time, method="RFC 3161")
    except SignatureError as exc:
        raise TimestampError(exc.code, f"TSA: {exc.detail}") from None
    return info


def _check_content_type(token: bytes) -> None:
    """A SignedData whose encapsulated content is a TSTInfo, not any signed thing from the same TSA."""
    try:
        info = der.children(der.one(token, der.SEQUENCE).value)
        if der.as_oid(info[0]) != SIGNED_DATA:
            raise TimestampError(errors.SIGNATURE_MALFORMED, "the token is not a CMS SignedData")
        signed = der.children(der.one(info[1].value, der.SEQUENCE).value)
        econtent = der.children(signed[2].value)
        kind = der.as_oid(econtent[0])
    except (der.DerError, IndexError) as exc:
        raise TimestampError(errors.SIGNATURE_MALFORMED, f"not a timestamp token: {exc}") from None
    if kind != TST_INFO:
        raise TimestampError(errors.SIGNATURE_MALFORMED, f"the token signs {kind}, not a TSTInfo")


def _tst_info(content: bytes, tsa: Certificate) -> tuple[Timestamp, bytes]:
    try:
        fields = der.children(der.one(content, der.SEQUENCE).value)
        policy = der.as_oid(fields[1])
        imprint = der.children(fields[2].value)
        algorithm = der.as_oid(der.children(imprint[0].value)[0])
        digest = imprint[1].value
        serial = der.as_int(fields[3])
        gen_time = der.as_time(fields[4])
        nonce = next((der.as_int(f) for f in fields[5:] if f.tag == der.INTEGER), None)
    except (der.DerError, IndexError) as exc:
        raise TimestampError(errors.SIGNATURE_MALFORMED, f"the token's TSTInfo cannot be read: {exc}") from None
    if algorithm != SHA256:
        raise TimestampError(errors.SIGNATURE_ALGORITHM_UNSUPPORTED, f"the imprint is {algorithm}, not SHA-256")
    return Timestamp(gen_time, serial, policy, nonce, tsa), digest


def _for_timestamping(cert: Certificate) -> bool:
    c = libcrypto.lib()
    fn = c.X509_get_extended_key_usage
    fn.restype, fn.argtypes = ctypes.c_uint32, [ctypes.c_void_p]
    usage = int(fn(cert.x509.ptr))
    return usage != _NO_EKU and bool(usage & _XKU_TIMESTAMP)
