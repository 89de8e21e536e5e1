"""The system libcrypto (OpenSSL 3) through ctypes, with the GOST engine loaded.

Why ctypes and the system library: neither python-xmlsec nor the ``cryptography``
wheel can load a GOST key, and OpenSSL's GOST engine (Debian package
``libengine-gost-openssl``) signs at about 17,000/s where pure-Python gostcrypto
manages 34/s (research/feasibility.md §4). The engine plugs into the system
libcrypto only, so the GOST backend, certificate parsing and chain checks all go
through it. Only the handful of calls the signing package needs are bound here;
every handle is freed by its owner object.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import datetime as dt
import threading
from typing import Any

from zdravlink.errors import SigningError

_c_p = ctypes.c_void_p
_size_t = ctypes.c_size_t

GOST_ENGINE_ID = b"gost"
ENGINE_METHOD_ALL = 0xFFFF
NID_RSA = 6
NID_GOST2012_256 = 979
NID_GOST2012_512 = 980
_XN_FLAGS = 0x317 & ~0x4 | (1 << 16) | (1 << 20) | (1 << 24)  # RFC 2253, comma, reversed, UTF-8 kept
_BIO_CTRL_INFO = 3


class CryptoError(SigningError):
    """libcrypto refused an operation; the message carries OpenSSL's own reason."""


class _Tm(ctypes.Structure):
    _fields_ = [("tm_sec", ctypes.c_int), ("tm_min", ctypes.c_int), ("tm_hour", ctypes.c_int),
                ("tm_mday", ctypes.c_int), ("tm_mon", ctypes.c_int), ("tm_year", ctypes.c_int),
                ("tm_wday", ctypes.c_int), ("tm_yday", ctypes.c_int), ("tm_isdst", ctypes.c_int),
                ("tm_gmtoff", ctypes.c_long), ("tm_zone", ctypes.c_char_p)]


def _bind(lib: ctypes.CDLL) -> None:
    sig: dict[str, tuple[Any, list[Any]]] = {
        "ERR_get_error": (ctypes.c_ulong, []),
        "ERR_error_string_n": (None, [ctypes.c_ulong, ctypes.c_char_p, _size_t]),
        "ERR_clear_error": (None, []),
        "ENGINE_by_id": (_c_p, [ctypes.c_char_p]),
        "ENGINE_init": (ctypes.c_int, [_c_p]),
        "ENGINE_set_default": (ctypes.c_int, [_c_p, ctypes.c_uint]),
        "BIO_new_mem_buf": (_c_p, [ctypes.c_char_p, ctypes.c_int]),
        "BIO_new": (_c_p, [_c_p]),
        "BIO_s_mem": (_c_p, []),
        "BIO_ctrl": (ctypes.c_long, [_c_p, ctypes.c_int, ctypes.c_long, _c_p]),
        "BIO_free": (ctypes.c_int, [_c_p]),
        "PEM_read_bio_PrivateKey": (_c_p, [_c_p, _c_p, _c_p, ctypes.c_char_p]),
        "PEM_write_bio_PrivateKey": (ctypes.c_int, [_c_p, _c_p, _c_p, _c_p, ctypes.c_int, _c_p, _c_p]),
        "d2i_AutoPrivateKey": (_c_p, [_c_p, ctypes.POINTER(ctypes.c_char_p), ctypes.c_long]),
        "EVP_PKEY_free": (None, [_c_p]),
        "EVP_PKEY_get_base_id": (ctypes.c_int, [_c_p]),
        "EVP_PKEY_get_bits": (ctypes.c_int, [_c_p]),
        "EVP_PKEY_eq": (ctypes.c_int, [_c_p, _c_p]),
        "PEM_read_bio_X509": (_c_p, [_c_p, _c_p, _c_p, _c_p]),
        "d2i_X509": (_c_p, [_c_p, ctypes.POINTER(ctypes.c_char_p), ctypes.c_long]),
        "i2d_X509": (ctypes.c_int, [_c_p, ctypes.POINTER(_c_p)]),
        "X509_free": (None, [_c_p]),
        "X509_get_pubkey": (_c_p, [_c_p]),
        "X509_verify": (ctypes.c_int, [_c_p, _c_p]),
        "X509_check_issued": (ctypes.c_int, [_c_p, _c_p]),
        "X509_get0_notBefore": (_c_p, [_c_p]),
        "X509_get0_notAfter": (_c_p, [_c_p]),
        "X509_get_subject_name": (_c_p, [_c_p]),
        "X509_get_issuer_name": (_c_p, [_c_p]),
        "X509_get_serialNumber": (_c_p, [_c_p]),
        "X509_NAME_print_ex": (ctypes.c_int, [_c_p, _c_p, ctypes.c_int, ctypes.c_ulong]),
        "X509_NAME_cmp": (ctypes.c_int, [_c_p, _c_p]),
        "i2a_ASN1_INTEGER": (ctypes.c_int, [_c_p, _c_p]),
        "ASN1_TIME_to_tm": (ctypes.c_int, [_c_p, ctypes.POINTER(_Tm)]),
        "PEM_read_bio_X509_CRL": (_c_p, [_c_p, _c_p, _c_p, _c_p]),
        "d2i_X509_CRL": (_c_p, [_c_p, ctypes.POINTER(ctypes.c_char_p), ctypes.c_long]),
        "X509_CRL_free": (None, [_c_p]),
        "X509_CRL_verify": (ctypes.c_int, [_c_p, _c_p]),
        "X509_CRL_get_issuer": (_c_p, [_c_p]),
        "X509_CRL_get0_by_serial": (ctypes.c_int, [_c_p, ctypes.POINTER(_c_p), _c_p]),
        "X509_CRL_get0_nextUpdate": (_c_p, [_c_p]),
        "d2i_PKCS12": (_c_p, [_c_p, ctypes.POINTER(ctypes.c_char_p), ctypes.c_long]),
        "PKCS12_parse": (ctypes.c_int, [_c_p, ctypes.c_char_p, ctypes.POINTER(_c_p), ctypes.POINTER(_c_p),
                                        ctypes.POINTER(_c_p)]),
        "PKCS12_free": (None, [_c_p]),
        "OPENSSL_sk_num": (ctypes.c_int, [_c_p]),
        "OPENSSL_sk_value": (_c_p, [_c_p, ctypes.c_int]),
        "OPENSSL_sk_free": (None, [_c_p]),
        "EVP_get_digestbyname": (_c_p, [ctypes.c_char_p]),
        "EVP_Digest": (ctypes.c_int, [ctypes.c_char_p, _size_t, ctypes.c_char_p, ctypes.POINTER(ctypes.c_uint),
                                      _c_p, _c_p]),
        "EVP_MD_CTX_new": (_c_p, []),
        "EVP_MD_CTX_free": (None, [_c_p]),
        "EVP_DigestSignInit": (ctypes.c_int, [_c_p, _c_p, _c_p, _c_p, _c_p]),
        "EVP_DigestSign": (ctypes.c_int, [_c_p, ctypes.c_char_p, ctypes.POINTER(_size_t), ctypes.c_char_p, _size_t]),
        "EVP_DigestVerifyInit": (ctypes.c_int, [_c_p, _c_p, _c_p, _c_p, _c_p]),
        "EVP_DigestVerify": (ctypes.c_int, [_c_p, ctypes.c_char_p, _size_t, ctypes.c_char_p, _size_t]),
        "EVP_PKEY_CTX_new": (_c_p, [_c_p, _c_p]),
        "EVP_PKEY_CTX_free": (None, [_c_p]),
        "EVP_PKEY_sign_init": (ctypes.c_int, [_c_p]),
        "EVP_PKEY_sign": (ctypes.c_int, [_c_p, ctypes.c_char_p, ctypes.POINTER(_size_t), ctypes.c_char_p, _size_t]),
        "EVP_PKEY_verify_init": (ctypes.c_int, [_c_p]),
        "EVP_PKEY_verify": (ctypes.c_int, [_c_p, ctypes.c_char_p, _size_t, ctypes.c_char_p, _size_t]),
        "EVP_PKEY_CTX_set_signature_md": (ctypes.c_int, [_c_p, _c_p]),
        "d2i_PUBKEY": (_c_p, [_c_p, ctypes.POINTER(ctypes.c_char_p), ctypes.c_long]),
    }
    for name, (restype, argtypes) in sig.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes


_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_gost_ready = False


def lib() -> ctypes.CDLL:
    """The bound libcrypto, loaded once per process."""
    global _lib
    if _lib is None:
        with _lock:
            if _lib is None:
                path = ctypes.util.find_library("crypto")
                if path is None:
                    raise CryptoError("libcrypto not found (Debian package libssl3)")
                handle = ctypes.CDLL(path)
                _bind(handle)
                _lib = handle
    return _lib


def gost_engine() -> ctypes.CDLL:
    """libcrypto with the GOST engine as default for its algorithms; raises if it is not installed."""
    global _gost_ready
    c = lib()
    if not _gost_ready:
        with _lock:
            if not _gost_ready:
                engine = c.ENGINE_by_id(GOST_ENGINE_ID)
                if not engine or c.ENGINE_init(engine) != 1 or c.ENGINE_set_default(engine, ENGINE_METHOD_ALL) != 1:
                    raise CryptoError("OpenSSL GOST engine not available (Debian package libengine-gost-openssl): "
                                      + last_error())
                _gost_ready = True
    return c


def last_error() -> str:
    c = lib()
    reasons = []
    while code := c.ERR_get_error():
        buf = ctypes.create_string_buffer(256)
        c.ERR_error_string_n(code, buf, 256)
        reasons.append(buf.value.decode("ascii", "replace"))
    return "; ".join(reasons) or "no reason given"


def _fail(what: str) -> CryptoError:
    return CryptoError(f"{what}: {last_error()}")


class _MemBio:
    """A read-only memory BIO over ``data``; the bytes object must outlive it, so it keeps one."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        ptr: int | None = gost_engine().BIO_new_mem_buf(data, len(data))
        if not ptr:
            raise _fail("BIO_new_mem_buf")
        self.ptr = ptr

    def __enter__(self) -> int:
        return self.ptr

    def __exit__(self, *exc: object) -> None:
        lib().BIO_free(self.ptr)


def _write_bio(write: Any) -> bytes:
    """Run ``write(bio)`` into a fresh memory BIO and return what it wrote."""
    c = lib()
    bio = c.BIO_new(c.BIO_s_mem())
    try:
        if write(bio) <= 0:
            raise _fail("write to memory BIO")
        data = _c_p()
        n = c.BIO_ctrl(bio, _BIO_CTRL_INFO, 0, ctypes.byref(data))
        return ctypes.string_at(data, n)
    finally:
        c.BIO_free(bio)


def _d2i(fn: Any, der: bytes) -> int | None:
    """Call a ``d2i_*`` parser; a c_void_p result is an int, or None for NULL (nothing parsed)."""
    buf = ctypes.c_char_p(der)
    ptr: int | None = fn(None, ctypes.byref(buf), len(der))
    return ptr


# ---- keys -------------------------------------------------------------------

class Pkey:
    """An EVP_PKEY (private or public) owned by this object."""

    def __init__(self, ptr: int | None) -> None:
        if not ptr:
            raise _fail("no key")
        self.ptr = ptr
        self.nid = lib().EVP_PKEY_get_base_id(ptr)
        self.bits = lib().EVP_PKEY_get_bits(ptr)

    def __del__(self) -> None:
        if getattr(self, "ptr", None) and _lib is not None:
            _lib.EVP_PKEY_free(self.ptr)

    @classmethod
    def private_from_bytes(cls, data: bytes, password: bytes | None = None) -> Pkey:
        c = gost_engine()
        c.ERR_clear_error()
        if b"-----BEGIN" in data:
            with _MemBio(data) as bio:
                ptr = c.PEM_read_bio_PrivateKey(bio, None, None, password or b"")
        else:
            ptr = _d2i(c.d2i_AutoPrivateKey, data)
        if not ptr:
            raise _fail("cannot read the private key (PEM or DER; encrypted PEM needs its password)")
        return cls(ptr)

    @classmethod
    def public_from_der(cls, der: bytes) -> Pkey:
        """A public key from a DER SubjectPublicKeyInfo (used for published test vectors)."""
        c = gost_engine()
        ptr = _d2i(c.d2i_PUBKEY, der)
        if not ptr:
            raise _fail("cannot read the public key")
        return cls(ptr)

    def private_pem(self) -> bytes:
        c = lib()
        return _write_bio(lambda bio: c.PEM_write_bio_PrivateKey(bio, self.ptr, None, None, 0, None, None))

    def same_key(self, other: Pkey) -> bool:
        return int(lib().EVP_PKEY_eq(self.ptr, other.ptr)) == 1


def digest(name: bytes, data: bytes) -> bytes:
    """One-shot digest by OpenSSL name (``md_gost12_256``, ``md_gost12_512``, ``sha256``)."""
    c = gost_engine()
    md = c.EVP_get_digestbyname(name)
    if not md:
        raise _fail(f"digest {name.decode()} unknown")
    out = ctypes.create_string_buffer(64)
    n = ctypes.c_uint(0)
    if c.EVP_Digest(data, len(data), out, ctypes.byref(n), md, None) != 1:
        raise _fail("EVP_Digest")
    return out.raw[: n.value]


def sign_message(key: Pkey, md_name: bytes, data: bytes) -> bytes:
    """Hash ``data`` with ``md_name`` and sign it (EVP_DigestSign)."""
    c = gost_engine()
    md = c.EVP_get_digestbyname(md_name)
    ctx = c.EVP_MD_CTX_new()
    try:
        if not md or c.EVP_DigestSignInit(ctx, None, md, None, key.ptr) != 1:
            raise _fail("EVP_DigestSignInit")
        size = _size_t(0)
        if c.EVP_DigestSign(ctx, None, ctypes.byref(size), data, len(data)) != 1:
            raise _fail("EVP_DigestSign (size)")
        out = ctypes.create_string_buffer(size.value)
        if c.EVP_DigestSign(ctx, out, ctypes.byref(size), data, len(data)) != 1:
            raise _fail("EVP_DigestSign")
        return out.raw[: size.value]
    finally:
        c.EVP_MD_CTX_free(ctx)


def verify_message(key: Pkey, md_name: bytes, data: bytes, signature: bytes) -> bool:
    c = gost_engine()
    md = c.EVP_get_digestbyname(md_name)
    ctx = c.EVP_MD_CTX_new()
    try:
        if not md or c.EVP_DigestVerifyInit(ctx, None, md, None, key.ptr) != 1:
            raise _fail("EVP_DigestVerifyInit")
        ok = int(c.EVP_DigestVerify(ctx, signature, len(signature), data, len(data))) == 1
        c.ERR_clear_error()
        return ok
    finally:
        c.EVP_MD_CTX_free(ctx)


def _pkey_ctx(key: Pkey) -> int:
    c = gost_engine()
    ctx: int | None = c.EVP_PKEY_CTX_new(key.ptr, None)
    if not ctx:
        raise _fail("EVP_PKEY_CTX_new")
    return ctx


def sign_digest(key: Pkey, digest_value: bytes, md_name: bytes | None = None) -> bytes:
    """The raw primitive: sign an already computed digest (EVP_PKEY_sign).

    Used as the benchmark's baseline and for published vectors. For RSA ``md_name``
    names the digest for the PKCS#1 DigestInfo.
    """
    c = gost_engine()
    ctx = _pkey_ctx(key)
    try:
        if c.EVP_PKEY_sign_init(ctx) != 1:
            raise _fail("EVP_PKEY_sign_init")
        if md_name and c.EVP_PKEY_CTX_set_signature_md(ctx, c.EVP_get_digestbyname(md_name)) != 1:
            raise _fail("EVP_PKEY_CTX_set_signature_md")
        size = _size_t(0)
        if c.EVP_PKEY_sign(ctx, None, ctypes.byref(size), digest_value, len(digest_value)) != 1:
            raise _fail("EVP_PKEY_sign (size)")
        out = ctypes.create_string_buffer(size.value)
        if c.EVP_PKEY_sign(ctx, out, ctypes.byref(size), digest_value, len(digest_value)) != 1:
            raise _fail("EVP_PKEY_sign")
        return out.raw[: size.value]
    finally:
        c.EVP_PKEY_CTX_free(ctx)


def verify_digest(key: Pkey, digest_value: bytes, signature: bytes, md_name: bytes | None = None) -> bool:
    c = gost_engine()
    ctx = _pkey_ctx(key)
    try:
        if c.EVP_PKEY_verify_init(ctx) != 1:
            raise _fail("EVP_PKEY_verify_init")
        if md_name and c.EVP_PKEY_CTX_set_signature_md(ctx, c.EVP_get_digestbyname(md_name)) != 1:
            raise _fail("EVP_PKEY_CTX_set_signature_md")
        ok = int(c.EVP_PKEY_verify(ctx, signature, len(signature), digest_value, len(digest_value))) == 1
        c.ERR_clear_error()
        return ok
    finally:
        c.EVP_PKEY_CTX_free(ctx)


# ---- certificates and CRLs ----------------------------------------------------

def _asn1_time(ptr: int) -> dt.datetime:
    tm = _Tm()
    if not ptr or lib().ASN1_TIME_to_tm(ptr, ctypes.byref(tm)) != 1:
        raise _fail("ASN1_TIME_to_tm")
    return dt.datetime(tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                       tzinfo=dt.UTC)


def _name(ptr: int) -> str:
    c = lib()
    return _write_bio(lambda bio: c.X509_NAME_print_ex(bio, ptr, 0, _XN_FLAGS) or 1).decode("utf-8", "replace")


class X509:
    """A parsed X.509 certificate owned by this object, with the fields trust decisions need."""

    def __init__(self, ptr: int | None) -> None:
        if not ptr:
            raise _fail("cannot read the certificate")
        c = lib()
        self.ptr = ptr
        n = c.i2d_X509(ptr, None)
        buf = ctypes.create_string_buffer(max(n, 0))
        cursor = _c_p(ctypes.addressof(buf))
        if n <= 0 or c.i2d_X509(ptr, ctypes.byref(cursor)) != n:
            raise _fail("i2d_X509")
        self.der = buf.raw
        self.subject = _name(c.X509_get_subject_name(ptr))
        self.issuer = _name(c.X509_get_issuer_name(ptr))
        self.serial = _write_bio(lambda bio: c.i2a_ASN1_INTEGER(bio, c.X509_get_serialNumber(ptr))).decode().lower()
        self.not_before = _asn1_time(c.X509_get0_notBefore(ptr))
        self.not_after = _asn1_time(c.X509_get0_notAfter(ptr))
        self.public_key = Pkey(c.X509_get_pubkey(ptr))

    def __del__(self) -> None:
        if getattr(self, "ptr", None) and _lib is not None:
            _lib.X509_free(self.ptr)

    @classmethod
    def from_bytes(cls, data: bytes) -> X509:
        c = gost_engine()
        c.ERR_clear_error()
        if b"-----BEGIN" in data:
            with _MemBio(data) as bio:
                return cls(c.PEM_read_bio_X509(bio, None, None, None))
        return cls(_d2i(c.d2i_X509, data))

    def issued_by(self, issuer: X509) -> bool:
        """Names (and key ids) match and the issuer's key verifies this certificate's signature."""
        c = lib()
        ok = (int(c.X509_check_issued(issuer.ptr, self.ptr)) == 0
              and int(c.X509_verify(self.ptr, issuer.public_key.ptr)) == 1)
        c.ERR_clear_error()
        return ok


class CRL:
    def __init__(self, ptr: int | None) -> None:
        if not ptr:
            raise _fail("cannot read the CRL")
        self.ptr = ptr
        c = lib()
        self.issuer_name_ptr = c.X509_CRL_get_issuer(ptr)
        self.issuer = _name(self.issuer_name_ptr)
        nxt = c.X509_CRL_get0_nextUpdate(ptr)
        self.next_update = _asn1_time(nxt) if nxt else None

    def __del__(self) -> None:
        if getattr(self, "ptr", None) and _lib is not None:
            _lib.X509_CRL_free(self.ptr)

    @classmethod
    def from_bytes(cls, data: bytes) -> CRL:
        c = gost_engine()
        c.ERR_clear_error()
        if b"-----BEGIN" in data:
            with _MemBio(data) as bio:
                return cls(c.PEM_read_bio_X509_CRL(bio, None, None, None))
        return cls(_d2i(c.d2i_X509_CRL, data))

    def issued_by(self, ca: X509) -> bool:
        c = lib()
        ok = (int(c.X509_NAME_cmp(self.issuer_name_ptr, c.X509_get_subject_name(ca.ptr))) == 0
              and int(c.X509_CRL_verify(self.ptr, ca.public_key.ptr)) == 1)
        c.ERR_clear_error()
        return ok

    def revokes(self, cert: X509) -> bool:
        c = lib()
        entry = _c_p()
        return int(c.X509_CRL_get0_by_serial(self.ptr, ctypes.byref(entry), c.X509_get_serialNumber(cert.ptr))) == 1


def read_pkcs12_chain(data: bytes, password: str) -> list[X509]:
    """The other certificates a PKCS#12 file carries beside its own (the CA chain a TLS server must send)."""
    c = gost_engine()
    c.ERR_clear_error()
    p12 = _d2i(c.d2i_PKCS12, data)
    if not p12:
        raise _fail("not a PKCS#12 file")
    try:
        key, cert, stack = _c_p(), _c_p(), _c_p()
        if c.PKCS12_parse(p12, password.encode("utf-8"), ctypes.byref(key), ctypes.byref(cert),
                          ctypes.byref(stack)) != 1:
            raise _fail("cannot open the PKCS#12 file (wrong password?)")
        if key.value:
            Pkey(key.value)  # owned, so freed
        if cert.value:
            X509(cert.value)
        if not stack.value:
            return []
        try:  # each certificate of the stack is ours now: X509 frees it; the stack itself is freed here
            return [X509(c.OPENSSL_sk_value(stack.value, i)) for i in range(c.OPENSSL_sk_num(stack.value))]
        finally:
            c.OPENSSL_sk_free(stack.value)
    finally:
        c.PKCS12_free(p12)


def read_pkcs12(data: bytes, password: str) -> tuple[Pkey | None, X509 | None]:
    """Key and certificate from a PKCS#12 file; a wrong password is an error, not an empty result."""
    c = gost_engine()
    c.ERR_clear_error()
    p12 = _d2i(c.d2i_PKCS12, data)
    if not p12:
        raise _fail("not a PKCS#12 file")
    try:
        key, cert = _c_p(), _c_p()
        if c.PKCS12_parse(p12, password.encode("utf-8"), ctypes.byref(key), ctypes.byref(cert), None) != 1:
            raise _fail("cannot open the PKCS#12 file (wrong password?)")
        return (Pkey(key.value) if key.value else None, X509(cert.value) if cert.value else None)
    finally:
        c.PKCS12_free(p12)
