"""TLS for the gateway's listeners and outbound channels: the settings, the SSL contexts, the client's certificate.

Everything here runs on the system OpenSSL that Python's ``ssl`` module is linked with,
the same libcrypto ``signing.libcrypto`` loads the GOST engine into. So once the engine
is loaded (``ensure_engine``), ``ssl`` can read GOST keys, verify certificates signed by
a GOST CA, and speak GOST TLS 1.2 (RFC 9189: GOST2012-KUZNYECHIK-KUZNYECHIKOMAC and
GOST2012-MAGMA-MAGMAOMAC) beside ordinary TLS 1.2/1.3 on the same port: a listener
given a second, GOST, certificate serves it to clients that offer the GOST suites, and
its RSA/ECDSA one to everyone else (docs/transport-security.md).

Client certificates (mTLS) are checked by the gateway, not inside the handshake. The
handshake asks for one and accepts whatever the client proves it holds the key of; then
``check_client_certificate`` decides, with the reasons the signature checks give
(untrusted, expired, not yet valid, revoked), and the adapter refuses with that code
and audits it. Refused inside the handshake, a partner would see a bare TLS alert and
the operator nothing; here both see why. Python's ``ssl`` has no verification callback
for this, so ``_accept_any_certificate`` installs one on the SSL_CTX through libssl; it
checks first that it has the right object and falls back to OpenSSL's own verification
(refusals in the handshake, logged but not audited) if it has not.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import datetime as dt
import hashlib
import ipaddress
import logging
import os
import re
import ssl
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway import errors as codes
from signing import Certificate, KeyFileError, PrivateKey, TrustStore, errors, libcrypto
from signing.errors import SignatureError
from signing.trust import CERT_SUFFIXES, CRL_SUFFIXES
from zdravlink.errors import ConfigurationError, ExchangeError

log = logging.getLogger(__name__)

ENV_VAR = r"^[A-Z_][A-Z0-9_]*$"
SHA256_HEX = r"^[0-9a-f]{64}$"
#: The GOST TLS 1.2 suites OpenSSL's GOST engine provides (RFC 9189), strongest first.
GOST_CIPHERS = "GOST2012-KUZNYECHIK-KUZNYECHIKOMAC:GOST2012-MAGMA-MAGMAOMAC"
#: TLS 1.2 suites for RSA and ECDSA certificates: forward secrecy and AEAD only (TLS 1.3 picks its own).
MODERN_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:!aNULL:!eNULL:!MD5:!SHA1"
_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


class TlsConfigError(ConfigurationError):
    """A TLS file or setting that cannot be used; the message names the key and the file."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KeyPair(_Model):
    """A certificate with its key: PEM files (the certificate file may carry the chain after it), or PKCS#12.

    A password (of an encrypted PEM key or of the PKCS#12 file) comes from the environment
    variable ``password_env``, never from the file.
    """

    certificate: str | None = None
    key: str | None = None
    pkcs12: str | None = None
    password_env: str | None = Field(None, pattern=ENV_VAR)

    @model_validator(mode="after")
    def _one_source(self) -> KeyPair:
        if self.pkcs12 and (self.key or self.certificate):
            raise ValueError("give either pkcs12 or certificate and key, not both")
        if bool(self.key) != bool(self.certificate):
            raise ValueError("certificate and key go together")
        return self

    @property
    def given(self) -> bool:
        return bool(self.pkcs12 or self.certificate)


class ServerTls(KeyPair):
    """TLS on a listener (``api.tls``, ``hl7.tls``)."""

    #: A second certificate with a GOST R 34.10-2012 key: GOST TLS 1.2 for clients that offer its suites.
    gost: KeyPair | None = None
    min_version: Literal["1.2", "1.3"] = "1.2"
    #: CA certificates (a directory, with .crl files, or one PEM file) that participants' client certificates
    #: must chain to. Set, the listener asks every client for a certificate (participants.yaml says whose
    #: must present one: credentials.client_certificates).
    client_ca: str | None = None

    @model_validator(mode="after")
    def _has_certificate(self) -> ServerTls:
        if not self.given:
            raise ValueError("a TLS listener needs its certificate and key (or pkcs12)")
        if self.gost is not None and not self.gost.given:
            raise ValueError("gost needs its certificate and key (or pkcs12)")
        return self


class ClientTls(KeyPair):
    """TLS of an outbound channel (``tls`` of a channel in participants.yaml or routes.yaml).

    The recipient's certificate is always verified, its name against the URL's host
    included; there is no switch to turn that off.
    """

    #: CA certificates to trust besides (or, with system_ca false, instead of) the system's: files or
    #: directories, PEM (bundles too) or DER, e.g. the Russian Trusted Root CA and its Sub CA.
    ca: list[str] = []
    system_ca: bool = True
    #: SHA-256 fingerprints (hex, of the DER) of the recipient's certificate: one must match. Keep the next
    #: certificate's pin beside the current one before the recipient renews.
    pin_sha256: list[str] = []
    #: Speak GOST TLS 1.2 (RFC 9189 suites) to this recipient instead of ordinary TLS.
    gost: bool = False
    min_version: Literal["1.2", "1.3"] = "1.2"

    @field_validator("pin_sha256")
    @classmethod
    def _hex(cls, values: list[str]) -> list[str]:
        for v in values:
            if not re.fullmatch(SHA256_HEX, v):
                raise ValueError("each pin must be 64 lower-case hex digits (sha256 of the certificate's DER)")
        return values

    @model_validator(mode="after")
    def _trusts_something(self) -> ClientTls:
        if not self.system_ca and not self.ca:
            raise ValueError("with system_ca false, list the CA files to trust in ca")
        if self.gost and self.min_version == "1.3":
            raise ValueError("GOST TLS is TLS 1.2 here (OpenSSL 3.0 has no GOST TLS 1.3 suites)")
        return self


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def listener_rule(host: str, tls: ServerTls | None, plain: bool) -> str | None:
    """Why a listener's transport settings are not acceptable, or None.

    A listener reachable from other hosts serves TLS, or says ``plain: true`` (a TLS-terminating
    proxy in front of it); a loopback listener may stay plain without saying so.
    """
    if tls is not None and plain:
        return "give tls or plain: true, not both"
    if tls is None and not plain and not is_loopback(host):
        return (f"listening on {host} without TLS: configure tls (certificate and key), or say plain: true "
                "when a TLS-terminating proxy stands in front")
    return None


def transport_label(tls: ServerTls | None, plain: bool) -> str:
    """What the banner says about a listener."""
    if tls is None:
        return "plain (explicit: TLS ends at a proxy in front)" if plain else "plain (loopback only)"
    parts = [f"TLS {tls.min_version}+"]
    if tls.gost is not None:
        parts.append("GOST TLS 1.2")
    if tls.client_ca:
        parts.append("client certificates")
    return ", ".join(parts)


# ---------------------------------------------------------------- files

def resolve(base: Path, path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else base / p


def ensure_engine() -> None:
    """Load OpenSSL's GOST engine into this process's libcrypto (and so into ``ssl``) before any context is made."""
    try:
        libcrypto.gost_engine()
    except libcrypto.CryptoError as exc:
        log.warning("GOST engine not loaded, TLS without GOST: %s", exc)


def _password(var: str | None) -> str | None:
    if var is None:
        return None
    if var not in os.environ:
        raise TlsConfigError(f"environment variable {var} is not set")
    return os.environ[var]


def _load_pair(ctx: ssl.SSLContext, pair: KeyPair, base: Path) -> Certificate:
    """Load a certificate and its key into ``ctx``; returns the (first) certificate."""
    password = _password(pair.password_env)
    if pair.pkcs12:
        path = resolve(base, pair.pkcs12)
        try:
            key, cert = PrivateKey.load(path, password), Certificate.load(path, password)
            chain = libcrypto.read_pkcs12_chain(path.read_bytes(), password or "")
        except (KeyFileError, libcrypto.CryptoError) as exc:
            raise TlsConfigError(f"{path}: {exc}" if isinstance(exc, libcrypto.CryptoError) else str(exc)) from None
        # the certificate, then the CA certificates the file carries: a server sends its chain in the handshake
        ders = [cert.der, *(x.der for x in chain if x.der != cert.der)]
        pem = "".join(ssl.DER_cert_to_PEM_cert(der) for der in ders)
        _load_pem(ctx, pem.encode(), key.pkey.private_pem())
        return cert
    assert pair.certificate and pair.key
    cert_path, key_path = resolve(base, pair.certificate), resolve(base, pair.key)
    try:
        ctx.load_cert_chain(cert_path, key_path, password=(lambda: password or "") if password else None)
    except (OSError, ssl.SSLError) as exc:
        raise TlsConfigError(f"{cert_path} with {key_path}: {_reason(exc)}") from None
    try:
        return Certificate.load(cert_path)
    except KeyFileError as exc:
        raise TlsConfigError(str(exc)) from None


def _load_pem(ctx: ssl.SSLContext, cert_pem: bytes, key_pem: bytes) -> None:
    """``ssl`` reads keys from files only: a PKCS#12's are written to a private temporary file, read, removed."""
    with tempfile.TemporaryDirectory(prefix="zl-tls-") as tmp:
        os.chmod(tmp, 0o700)
        path = Path(tmp) / "pair.pem"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(cert_pem + key_pem)
        try:
            ctx.load_cert_chain(path)
        except ssl.SSLError as exc:
            raise TlsConfigError(f"the PKCS#12 key and certificate: {_reason(exc)}") from None


def _reason(exc: BaseException) -> str:
    return getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)


def load_certificates(path: Path) -> list[Certificate]:
    """Every certificate in a file (PEM bundle or DER) or in a directory's certificate files."""
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in CERT_SUFFIXES) if path.is_dir() else [path]
    if not path.exists():
        raise TlsConfigError(f"{path}: no such file or directory")
    certs: list[Certificate] = []
    for file in files:
        data = file.read_bytes()
        blocks = re.findall(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", data, re.S) \
            if b"-----BEGIN" in data else [data]
        try:
            certs.extend(Certificate.from_bytes(b, str(file)) for b in blocks)
        except KeyFileError as exc:
            raise TlsConfigError(str(exc)) from None
    if not certs:
        raise TlsConfigError(f"{path}: no certificate found")
    return certs


def client_trust(base: Path, client_ca: str) -> TrustStore:
    """The store client certificates are checked against: a directory (CA certificates and .crl files) or a file."""
    path = resolve(base, client_ca)
    try:
        if path.is_dir():
            return TrustStore.from_directory(path)
        return TrustStore(load_certificates(path))
    except (KeyFileError, libcrypto.CryptoError) as exc:
        raise TlsConfigError(str(exc)) from None


def crl_files(base: Path, client_ca: str) -> list[Path]:
    path = resolve(base, client_ca)
    return sorted(p for p in path.iterdir() if p.suffix.lower() in CRL_SUFFIXES) if path.is_dir() else []


# ---------------------------------------------------------------- listeners

@dataclass
class ServerContext:
    """A listener's SSL context with what the gateway checks itself: the client CA store."""

    context: ssl.SSLContext
    certificates: list[Certificate]
    client_trust: TrustStore | None
    #: True when client certificates are checked by the gateway (audited); False: inside the handshake.
    audited: bool


def server_context(tls: ServerTls, base: Path) -> ServerContext:
    """The SSL context of a listener; raises TlsConfigError naming the file that cannot be used."""
    ensure_engine()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _VERSIONS[tls.min_version]
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    certs = [_load_pair(ctx, tls, base)]
    ciphers = MODERN_CIPHERS
    if tls.gost is not None:
        if tls.min_version == "1.3":
            raise TlsConfigError("gost: GOST TLS is TLS 1.2, and min_version is 1.3")
        certs.append(_load_pair(ctx, tls.gost, base))
        ciphers = GOST_CIPHERS + ":" + MODERN_CIPHERS
    ctx.set_ciphers(ciphers)
    trust = None
    audited = False
    if tls.client_ca:
        trust = client_trust(base, tls.client_ca)
        for anchor in trust.anchors:
            ctx.load_verify_locations(cadata=anchor.der)
        ctx.verify_mode = ssl.CERT_OPTIONAL
        audited = _accept_any_certificate(ctx)
        if not audited:
            log.warning("client certificates are verified inside the TLS handshake: a refused one is not audited")
    return ServerContext(ctx, certs, trust, audited)


# The verification callback: OpenSSL asks it about each certificate of the client's chain; it says yes,
# because the gateway decides afterwards (check_client_certificate). The client still has to prove
# it holds the certificate's key (CertificateVerify), which OpenSSL checks regardless.
_VERIFY_CB = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p)
_SSL_VERIFY_PEER = 0x01
_libssl: ctypes.CDLL | None = None
_libssl_lock = threading.Lock()


def _yes(preverify_ok: int, store: int | None) -> int:
    return 1


_accept = _VERIFY_CB(_yes)  # module-level: the C pointer must outlive every context


def _ssl_library() -> ctypes.CDLL | None:
    global _libssl
    with _libssl_lock:
        if _libssl is None:
            name = ctypes.util.find_library("ssl")
            if name is None:
                return None
            lib = ctypes.CDLL(name)
            lib.OpenSSL_version_num.restype = ctypes.c_ulong
            lib.SSL_CTX_get_options.argtypes = [ctypes.c_void_p]
            lib.SSL_CTX_get_options.restype = ctypes.c_uint64
            lib.SSL_CTX_get_verify_mode.argtypes = [ctypes.c_void_p]
            lib.SSL_CTX_get_verify_mode.restype = ctypes.c_int
            lib.SSL_CTX_get_verify_callback.argtypes = [ctypes.c_void_p]
            lib.SSL_CTX_get_verify_callback.restype = ctypes.c_void_p
            lib.SSL_CTX_set_verify.argtypes = [ctypes.c_void_p, ctypes.c_int, _VERIFY_CB]
            lib.SSL_CTX_set_verify.restype = None
            _libssl = lib
        return _libssl


def _ssl_ctx_pointer(ctx: ssl.SSLContext, lib: ctypes.CDLL) -> int | None:
    """The SSL_CTX* of a Python SSLContext: CPython keeps it first after the object header.

    Trusted only if libssl is the library ``ssl`` runs on and the pointer answers with this
    context's own options and verify mode (both set distinctively by the caller).
    """
    if lib.OpenSSL_version_num() != ssl.OPENSSL_VERSION_NUMBER:
        return None
    header = ctypes.sizeof(ctypes.c_ssize_t) + ctypes.sizeof(ctypes.c_void_p)  # ob_refcnt, ob_type
    ptr = ctypes.c_void_p.from_address(id(ctx) + header).value
    if not ptr:
        return None
    if lib.SSL_CTX_get_options(ptr) != int(ctx.options) or lib.SSL_CTX_get_verify_mode(ptr) != _SSL_VERIFY_PEER:
        return None
    return int(ptr)


def _accept_any_certificate(ctx: ssl.SSLContext) -> bool:
    """Let the handshake accept any client certificate whose key the client holds; False if it cannot be done."""
    if os.environ.get("ZL_TLS_VERIFY_IN_HANDSHAKE") == "1":  # the fallback, on purpose (and for its test)
        return False
    lib = _ssl_library()
    ptr = _ssl_ctx_pointer(ctx, lib) if lib is not None else None
    if lib is None or ptr is None:
        return False
    lib.SSL_CTX_set_verify(ptr, _SSL_VERIFY_PEER, _accept)
    installed = lib.SSL_CTX_get_verify_callback(ptr) == ctypes.cast(_accept, ctypes.c_void_p).value
    return bool(installed) and ctx.verify_mode == ssl.CERT_OPTIONAL


# ---------------------------------------------------------------- the client's certificate

#: Why a client certificate is refused, in the stable codes partners program against (gateway.errors).
_FROM_SIGNATURE_CODES = {
    errors.CERTIFICATE_UNTRUSTED: codes.CLIENT_CERTIFICATE_UNTRUSTED,
    errors.CERTIFICATE_EXPIRED: codes.CLIENT_CERTIFICATE_EXPIRED,
    errors.CERTIFICATE_NOT_YET_VALID: codes.CLIENT_CERTIFICATE_NOT_YET_VALID,
    errors.CERTIFICATE_REVOKED: codes.CLIENT_CERTIFICATE_REVOKED,
}


class PeerRefused(SignatureError):
    """A client certificate the listener's CA store does not vouch for; ``code`` is a CLIENT_CERTIFICATE_* code."""


@dataclass(frozen=True)
class PeerCertificate:
    """The certificate a client presented on a TLS connection, and the store of the listener it came to."""

    der: bytes
    trust: TrustStore | None

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.der).hexdigest()


_parsed: dict[bytes, Certificate] = {}
_parsed_lock = threading.Lock()


def parse_peer(der: bytes) -> Certificate:
    """The parsed certificate, cached: a client sends the same one on every connection."""
    with _parsed_lock:
        cert = _parsed.get(der)
    if cert is None:
        cert = Certificate.from_bytes(der, "TLS client certificate")
        with _parsed_lock:
            if len(_parsed) > 4096:
                _parsed.clear()
            _parsed[der] = cert
    return cert


def check_client_certificate(peer: PeerCertificate, at: dt.datetime | None = None) -> Certificate:
    """The client's certificate if the listener's CA store vouches for it now; PeerRefused with the reason if not."""
    try:
        cert = parse_peer(peer.der)
    except KeyFileError as exc:
        raise PeerRefused(codes.CLIENT_CERTIFICATE_UNTRUSTED, str(exc)) from None
    if peer.trust is None:
        raise PeerRefused(codes.CLIENT_CERTIFICATE_UNTRUSTED,
                          "this listener has no client_ca to check certificates against")
    try:
        peer.trust.check(cert, at)
    except SignatureError as exc:
        raise PeerRefused(_FROM_SIGNATURE_CODES.get(exc.code, codes.CLIENT_CERTIFICATE_UNTRUSTED),
                          exc.detail.replace("certificate ", "client certificate ", 1)) from None
    return cert


def self_probe_context(tls: ServerTls, base: Path) -> ssl.SSLContext:
    """For the gateway's own readiness probe on 127.0.0.1: trusts exactly the listener's own certificates.

    The certificate names the public host, not 127.0.0.1, so the name is not checked; the
    certificate itself is the only trust anchor (partial chain), which is stricter.
    """
    ensure_engine()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    for pair in [tls, *([tls.gost] if tls.gost else [])]:
        for cert in certificates_of(pair, base):
            ctx.load_verify_locations(cadata=cert.der)
    return ctx


# ---------------------------------------------------------------- outbound

class PinnedSocket(ssl.SSLSocket):
    """An SSLSocket that, right after the handshake and before a byte of the request, checks the pins."""

    def do_handshake(self, block: bool = False) -> None:
        super().do_handshake(block)
        check_pins(self.context, self.getpeercert(binary_form=True))


class PinnedObject(ssl.SSLObject):
    """The same check for asyncio's memory-BIO TLS."""

    def do_handshake(self) -> None:
        super().do_handshake()
        check_pins(self.context, self.getpeercert(binary_form=True))


class PinMismatch(ssl.SSLCertVerificationError, ExchangeError):
    """The recipient's certificate verified, but is not one of the pinned ones (an SSL error, so every HTTP
    client reports it as the failed connection it is)."""


def check_pins(ctx: ssl.SSLContext, der: bytes | None) -> None:
    pins: frozenset[str] = getattr(ctx, "zl_pins", frozenset())
    if not pins:
        return
    seen = hashlib.sha256(der or b"").hexdigest()
    if seen not in pins:
        raise PinMismatch(f"certificate pinning: the recipient's certificate (sha256 {seen}) is not pinned")


def client_context(tls: ClientTls | None, base: Path) -> ssl.SSLContext:
    """The SSL context of an outbound channel; hostname verification is always on.

    Without ``tls`` settings: the system's CAs, TLS 1.2+, no client certificate.
    """
    ensure_engine()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname
    tls = tls or ClientTls()
    ctx.minimum_version = _VERSIONS[tls.min_version]
    if tls.gost:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_ciphers(GOST_CIPHERS)
    if tls.system_ca:
        ctx.load_default_certs()
    for entry in tls.ca:
        for cert in load_certificates(resolve(base, entry)):
            ctx.load_verify_locations(cadata=cert.der)
    if tls.given:
        _load_pair(ctx, tls, base)
    if tls.pin_sha256:
        ctx.zl_pins = frozenset(tls.pin_sha256)  # type: ignore[attr-defined]
        ctx.sslsocket_class = PinnedSocket
        ctx.sslobject_class = PinnedObject
    return ctx


class ClientContexts:
    """One SSL context per distinct channel TLS setting, built on first use and kept (a context is costly)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self._made: dict[str, ssl.SSLContext] = {}
        self._lock = threading.Lock()

    def key(self, tls: ClientTls | None) -> str:
        return tls.model_dump_json() if tls is not None else ""

    def get(self, tls: ClientTls | None) -> ssl.SSLContext:
        key = self.key(tls)
        with self._lock:
            ctx = self._made.get(key)
            if ctx is None:
                ctx = self._made[key] = client_context(tls, self.base)
            return ctx


def certificates_of(tls: KeyPair, base: Path) -> list[Certificate]:
    """The certificate(s) a key pair setting names, for the expiry metric and check-config."""
    try:
        if tls.pkcs12:
            return [Certificate.load(resolve(base, tls.pkcs12), _password(tls.password_env))]
        if tls.certificate:
            return load_certificates(resolve(base, tls.certificate))[:1]
    except KeyFileError as exc:
        raise TlsConfigError(str(exc)) from None
    return []

