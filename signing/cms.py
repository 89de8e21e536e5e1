"""A detached CMS (PKCS#7) signature over a file: the ``.sig`` beside a register archive.

Files that travel on their own — an OMS register archive collected from a directory,
handed over on a stick, attached to a message — are signed the way SMEV 3 signs
attachments and CryptoPro writes ``.sig`` files: a detached CMS SignedData (DER) with the
signer's certificate inside (../shared/research/smev3.md §3, ``SignaturePKCS7``). Anyone
can check it with ``openssl cms -verify`` (with the GOST engine for GOST keys), so the
receiver needs nothing of ours.

It goes through the system libcrypto, as the GOST backend does, because the
``cryptography`` wheel cannot load a GOST key. Trust is decided by the same rules as every
other signature here (``signing.xmldsig.check_signer``), not by OpenSSL's chain building.
"""
from __future__ import annotations

import ctypes
import datetime as dt
from collections.abc import Iterable

from signing import errors, libcrypto
from signing.backends import algorithm_for
from signing.errors import SignatureError
from signing.keys import Certificate
from signing.trust import TrustStore
from signing.xmldsig import Signer, Verified, check_signer

CMS_NO_SIGNER_CERT_VERIFY = 0x20
CMS_DETACHED = 0x40
CMS_BINARY = 0x80
_c_p = ctypes.c_void_p
_bound = False


def _lib() -> ctypes.CDLL:
    """libcrypto with the GOST engine, and the CMS calls bound once."""
    global _bound
    c = libcrypto.gost_engine()
    if not _bound:
        for name, restype, argtypes in (
            ("CMS_sign", _c_p, [_c_p, _c_p, _c_p, _c_p, ctypes.c_uint]),
            ("CMS_verify", ctypes.c_int, [_c_p, _c_p, _c_p, _c_p, _c_p, ctypes.c_uint]),
            ("CMS_get0_signers", _c_p, [_c_p]),
            ("CMS_ContentInfo_free", None, [_c_p]),
            ("i2d_CMS_bio", ctypes.c_int, [_c_p, _c_p]),
            ("d2i_CMS_bio", _c_p, [_c_p, _c_p]),
            ("OPENSSL_sk_num", ctypes.c_int, [_c_p]),
            ("OPENSSL_sk_value", _c_p, [_c_p, ctypes.c_int]),
            ("OPENSSL_sk_free", None, [_c_p]),
            ("X509_up_ref", ctypes.c_int, [_c_p]),
        ):
            fn = getattr(c, name)
            fn.restype, fn.argtypes = restype, argtypes
        _bound = True
    return c


def sign_detached(data: bytes, signer: Signer) -> bytes:
    """The DER CMS SignedData over ``data`` (not included), signed by ``signer``, its certificate inside."""
    c = _lib()
    c.ERR_clear_error()
    with libcrypto._MemBio(data) as bio:
        cms = c.CMS_sign(signer.certificate.x509.ptr, signer.key.pkey.ptr, None, bio, CMS_DETACHED | CMS_BINARY)
    if not cms:
        raise SignatureError(errors.SIGNATURE_INVALID, f"CMS_sign failed: {libcrypto.last_error()}")
    try:
        return libcrypto._write_bio(lambda out: c.i2d_CMS_bio(out, cms))
    finally:
        c.CMS_ContentInfo_free(cms)


def verify_detached(data: bytes, signature: bytes, *, trust: TrustStore, signers: Iterable[Certificate] | None,
                    at: dt.datetime | None = None) -> Verified:
    """Check a detached CMS signature over ``data``; SignatureError with the reason if it does not hold.

    ``signers``, when given, are the certificates the expected signer holds.
    """
    _content, cert = _verified(signature, data)
    try:
        alg = algorithm_for(cert.key_type)
    except ValueError as exc:
        raise SignatureError(errors.SIGNATURE_ALGORITHM_UNSUPPORTED, str(exc)) from None
    trusted = check_signer(cert, alg, trust=trust, signers=signers, at=at, method="CMS")
    return Verified(cert, trusted.anchor, alg, ())


def open_attached(signed: bytes) -> tuple[bytes, Certificate]:
    """The content of a CMS SignedData that carries it (an RFC 3161 token), and its one signer's certificate.

    Only the signature over the content is checked here; whether the signer is to be
    trusted for what it signed is the caller's rule (``signing.timestamps``).
    """
    return _verified(signed, None)


def _verified(signature: bytes, data: bytes | None) -> tuple[bytes, Certificate]:
    """Parse and verify a CMS SignedData (over ``data`` when detached); its content and its signer."""
    c = _lib()
    c.ERR_clear_error()
    with libcrypto._MemBio(signature) as sig_bio:
        cms = c.d2i_CMS_bio(sig_bio, None)
    if not cms:
        raise SignatureError(errors.SIGNATURE_MALFORMED, f"not a DER CMS signature: {libcrypto.last_error()}")
    out = c.BIO_new(c.BIO_s_mem())
    try:
        if data is None:
            ok = c.CMS_verify(cms, None, None, None, out, CMS_NO_SIGNER_CERT_VERIFY | CMS_BINARY)
        else:
            with libcrypto._MemBio(data) as detached:
                ok = c.CMS_verify(cms, None, None, detached, None, CMS_NO_SIGNER_CERT_VERIFY | CMS_BINARY)
        if ok != 1:
            what = "the signed content" if data is None else "the file"
            raise SignatureError(errors.SIGNATURE_INVALID, f"the signature does not verify over {what}: "
                                 + libcrypto.last_error())
        found = c.CMS_get0_signers(cms)  # set by a successful CMS_verify
        try:
            if not found or c.OPENSSL_sk_num(found) != 1:
                raise SignatureError(errors.SIGNATURE_MALFORMED, "the CMS signature must have exactly one signer")
            ptr = c.OPENSSL_sk_value(found, 0)
            c.X509_up_ref(ptr)
            cert = Certificate(libcrypto.X509(ptr), "CMS")
        finally:
            if found:
                c.OPENSSL_sk_free(found)
        content_ptr = ctypes.c_void_p()
        size = int(c.BIO_ctrl(out, libcrypto._BIO_CTRL_INFO, 0, ctypes.byref(content_ptr)))
        content: bytes = ctypes.string_at(content_ptr, size) if size > 0 else b""
    finally:
        c.BIO_free(out)
        c.CMS_ContentInfo_free(cms)
    return content, cert
