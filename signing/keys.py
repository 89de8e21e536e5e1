"""Keys and certificates from files: PEM, DER, or PKCS#12 with a password.

Everything is parsed by the system libcrypto with the GOST engine loaded, because
that is the one parser here that understands GOST keys as well as RSA ones.
"""
from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from signing import libcrypto
from signing.libcrypto import CryptoError
from zdravlink.errors import SigningError

KEY_TYPES = {libcrypto.NID_GOST2012_256: "gost2012-256", libcrypto.NID_GOST2012_512: "gost2012-512",
             libcrypto.NID_RSA: "rsa"}


class KeyFileError(SigningError, ValueError):
    """A key or certificate file that cannot be used; the message names the file."""


def _key_type(pkey: libcrypto.Pkey) -> str:
    return KEY_TYPES.get(pkey.nid, f"nid-{pkey.nid}")


def _is_pkcs12(path: Path) -> bool:
    return path.suffix.lower() in (".p12", ".pfx")


@dataclass(eq=False)
class Certificate:
    """An X.509 certificate; equality is by its DER bytes."""

    x509: libcrypto.X509
    source: str = ""

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "") -> Certificate:
        try:
            return cls(libcrypto.X509.from_bytes(data), source)
        except CryptoError as exc:
            raise KeyFileError(f"{source or 'certificate'}: not a PEM or DER certificate ({exc})") from None

    @classmethod
    def load(cls, path: str | Path, password: str | None = None) -> Certificate:
        """PEM or DER; a .p12/.pfx file gives its certificate (``password`` opens it)."""
        p = Path(path)
        data = _read(p)
        if _is_pkcs12(p):
            _, x509 = _pkcs12(p, data, password)
            if x509 is None:
                raise KeyFileError(f"{p}: the PKCS#12 file holds no certificate")
            return cls(x509, str(p))
        return cls.from_bytes(data, str(p))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Certificate) and other.der == self.der

    def __hash__(self) -> int:
        return hash(self.der)

    # The parsed certificate's fields, typed (properties built from lambdas are untyped).
    @property
    def der(self) -> bytes:
        return self.x509.der

    @property
    def subject(self) -> str:
        return self.x509.subject

    @property
    def issuer(self) -> str:
        return self.x509.issuer

    @property
    def serial(self) -> str:
        return self.x509.serial

    @property
    def not_before(self) -> dt.datetime:
        return self.x509.not_before

    @property
    def not_after(self) -> dt.datetime:
        return self.x509.not_after

    @property
    def public_key(self) -> libcrypto.Pkey:
        return self.x509.public_key

    @property
    def key_type(self) -> str:
        return _key_type(self.x509.public_key)

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.der).hexdigest()

    def days_left(self, at: dt.datetime | None = None) -> float:
        return (self.not_after - (at or dt.datetime.now(dt.UTC))).total_seconds() / 86400

    def describe(self) -> str:
        valid = f"{self.not_before:%Y-%m-%d}–{self.not_after:%Y-%m-%d}"
        return f"{self.subject} (serial {self.serial}, {self.key_type}, valid {valid})"


@dataclass(eq=False)
class PrivateKey:
    """A private key, and per-backend handles made from it once (an xmlsec key, say)."""

    pkey: libcrypto.Pkey
    source: str = ""
    _handles: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, path: str | Path, password: str | None = None) -> PrivateKey:
        p = Path(path)
        data = _read(p)
        if _is_pkcs12(p):
            pkey, _ = _pkcs12(p, data, password)
            if pkey is None:
                raise KeyFileError(f"{p}: the PKCS#12 file holds no private key")
            return cls(pkey, str(p))
        try:
            return cls(libcrypto.Pkey.private_from_bytes(data, password.encode() if password else None), str(p))
        except CryptoError as exc:
            raise KeyFileError(f"{p}: {exc}") from None

    @property
    def key_type(self) -> str:
        return _key_type(self.pkey)

    def handle(self, name: str, make: Callable[[PrivateKey], Any]) -> Any:
        if name not in self._handles:
            self._handles[name] = make(self)
        return self._handles[name]

    def matches(self, certificate: Certificate) -> bool:
        return self.pkey.same_key(certificate.public_key)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read ({exc.strerror})") from None


def _pkcs12(path: Path, data: bytes, password: str | None) -> tuple[libcrypto.Pkey | None, libcrypto.X509 | None]:
    try:
        return libcrypto.read_pkcs12(data, password or "")
    except CryptoError as exc:
        raise KeyFileError(f"{path}: {exc}") from None
