"""The trust store: CA certificates and their revocation lists.

Every certificate in the store is a trust anchor. A signer's certificate is trusted
when it is an anchor itself or an anchor issued it (names match and the anchor's key
verifies it); then both must be inside their validity period and the signer's serial
must not be on a CRL of that anchor. The costly part, the chain signature, is cached
per certificate; dates and revocation are checked on every call, since time moves.
"""
from __future__ import annotations

import datetime as dt
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from signing import errors, libcrypto
from signing.errors import SignatureError
from signing.keys import Certificate, KeyFileError

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)
_PEM_CRL = re.compile(rb"-----BEGIN X509 CRL-----.+?-----END X509 CRL-----", re.S)
CERT_SUFFIXES = (".pem", ".crt", ".cer", ".der")
CRL_SUFFIXES = (".crl",)


@dataclass(frozen=True)
class Trusted:
    certificate: Certificate
    anchor: Certificate


class TrustStore:
    def __init__(self, anchors: list[Certificate], crls: list[libcrypto.CRL] | None = None) -> None:
        self.anchors = anchors
        self._crls: dict[bytes, list[libcrypto.CRL]] = {a.der: [] for a in anchors}
        for crl in crls or []:
            issuer = next((a for a in anchors if crl.issued_by(a.x509)), None)
            if issuer is None:
                raise KeyFileError(f"CRL of {crl.issuer!r}: no CA in the trust store signed it")
            self._crls[issuer.der].append(crl)
        self._anchor_of: dict[bytes, Certificate | None] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_directory(cls, directory: str | Path) -> TrustStore:
        """Every certificate file (PEM bundles too) and every ``.crl`` in ``directory``."""
        base = Path(directory)
        if not base.is_dir():
            raise KeyFileError(f"{base}: the trust store directory does not exist")
        anchors: list[Certificate] = []
        crls: list[libcrypto.CRL] = []
        for path in sorted(base.iterdir()):
            suffix = path.suffix.lower()
            if suffix in CERT_SUFFIXES:
                data = path.read_bytes()
                blocks = _PEM_CERT.findall(data) if b"-----BEGIN" in data else [data]
                anchors.extend(Certificate.from_bytes(b, str(path)) for b in blocks)
            elif suffix in CRL_SUFFIXES:
                data = path.read_bytes()
                blocks = _PEM_CRL.findall(data) if b"-----BEGIN" in data else [data]
                try:
                    crls.extend(libcrypto.CRL.from_bytes(b) for b in blocks)
                except libcrypto.CryptoError as exc:
                    raise KeyFileError(f"{path}: {exc}") from None
        if not anchors:
            raise KeyFileError(f"{base}: no CA certificate found (expected {', '.join(CERT_SUFFIXES)} files)")
        return cls(anchors, crls)

    @property
    def crls(self) -> list[libcrypto.CRL]:
        """Every CRL in the store (for the expiry of their next update)."""
        return [crl for crls in self._crls.values() for crl in crls]

    def _anchor(self, cert: Certificate) -> Certificate | None:
        with self._lock:
            if cert.der not in self._anchor_of:
                self._anchor_of[cert.der] = next(
                    (a for a in self.anchors if a.der == cert.der or cert.x509.issued_by(a.x509)), None)
            return self._anchor_of[cert.der]

    def check(self, cert: Certificate, at: dt.datetime | None = None) -> Trusted:
        """Return the anchor that vouches for ``cert`` at ``at`` (now), or raise with the reason."""
        now = at or dt.datetime.now(dt.UTC)
        anchor = self._anchor(cert)
        if anchor is None:
            raise SignatureError(errors.CERTIFICATE_UNTRUSTED,
                                 f"certificate {cert.subject!r} (issuer {cert.issuer!r}) is not issued by a trusted CA")
        for c, role in ((cert, "certificate"), (anchor, "CA certificate")):
            if now < c.not_before:
                raise SignatureError(errors.CERTIFICATE_NOT_YET_VALID,
                                     f"{role} {c.subject!r} is valid from {c.not_before:%Y-%m-%d %H:%M:%S} UTC")
            if now > c.not_after:
                raise SignatureError(errors.CERTIFICATE_EXPIRED,
                                     f"{role} {c.subject!r} expired on {c.not_after:%Y-%m-%d %H:%M:%S} UTC")
        for crl in self._crls.get(anchor.der, ()):
            if crl.revokes(cert.x509):
                raise SignatureError(errors.CERTIFICATE_REVOKED,
                                     f"certificate {cert.subject!r} serial {cert.serial} is revoked by its CA")
        return Trusted(cert, anchor)
