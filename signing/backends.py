"""Signature algorithms and the backends that compute them, behind one small interface.

A backend signs and verifies bytes (the canonical SignedInfo) with a key or a
certificate; XML-DSig assembly above it does not care which library did the work.
Two backends ship:

* ``GostEngineBackend`` — GOST R 34.10-2012 (256 and 512) with Streebog, through the
  system libcrypto and OpenSSL's GOST engine (about 17,000 signs/s here, where
  pure-Python gostcrypto does 34/s). SignatureValue is the engine's s‖r, each half
  big-endian, which is also what CryptoPro writes; DigestValue is Streebog's output
  bytes as they come (gost-vectors.json, "byte_order_convention").
* ``XmlsecRsaBackend`` — RSA-SHA256 (PKCS#1 v1.5) through python-xmlsec's
  sign_binary/verify_binary. python-xmlsec cannot run the SMEV transform, so it signs
  the SignedInfo octets we produce rather than whole documents.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import xmlsec

from signing import libcrypto
from signing.keys import Certificate, PrivateKey

GOST256_SIGNATURE = "urn:ietf:params:xml:ns:cpxmlsec:algorithms:gostr34102012-gostr34112012-256"
GOST512_SIGNATURE = "urn:ietf:params:xml:ns:cpxmlsec:algorithms:gostr34102012-gostr34112012-512"
GOST256_DIGEST = "urn:ietf:params:xml:ns:cpxmlsec:algorithms:gostr34112012-256"
GOST512_DIGEST = "urn:ietf:params:xml:ns:cpxmlsec:algorithms:gostr34112012-512"
RSA_SHA256_SIGNATURE = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
SHA256_DIGEST = "http://www.w3.org/2001/04/xmlenc#sha256"


class Backend(Protocol):
    """Sign and verify octets; the whole contract every backend keeps."""

    def sign(self, key: PrivateKey, data: bytes) -> bytes: ...

    def verify(self, certificate: Certificate, data: bytes, signature: bytes) -> bool: ...


class GostEngineBackend:
    def __init__(self, md_name: bytes) -> None:
        self.md_name = md_name

    def sign(self, key: PrivateKey, data: bytes) -> bytes:
        return libcrypto.sign_message(key.pkey, self.md_name, data)

    def verify(self, certificate: Certificate, data: bytes, signature: bytes) -> bool:
        return libcrypto.verify_message(certificate.public_key, self.md_name, data, signature)


class XmlsecRsaBackend:
    transform = xmlsec.constants.TransformRsaSha256

    @staticmethod
    def _private(key: PrivateKey) -> xmlsec.Key:
        return xmlsec.Key.from_memory(key.pkey.private_pem(), xmlsec.constants.KeyDataFormatPem)

    def sign(self, key: PrivateKey, data: bytes) -> bytes:
        ctx = xmlsec.SignatureContext()
        ctx.key = key.handle("xmlsec", self._private)
        return ctx.sign_binary(data, self.transform)

    def verify(self, certificate: Certificate, data: bytes, signature: bytes) -> bool:
        ctx = xmlsec.SignatureContext()
        ctx.key = xmlsec.Key.from_memory(certificate.der, xmlsec.constants.KeyDataFormatCertDer)
        try:
            ctx.verify_binary(data, self.transform, signature)
            return True
        except xmlsec.Error:
            return False


@dataclass(frozen=True)
class Algorithm:
    """One signature algorithm as XML-DSig names it, with the key type it needs."""

    name: str
    signature_uri: str
    digest_uri: str
    key_type: str
    backend: Backend


ALGORITHMS: dict[str, Algorithm] = {
    a.name: a for a in (
        Algorithm("gost2012-256", GOST256_SIGNATURE, GOST256_DIGEST, "gost2012-256",
                  GostEngineBackend(b"md_gost12_256")),
        Algorithm("gost2012-512", GOST512_SIGNATURE, GOST512_DIGEST, "gost2012-512",
                  GostEngineBackend(b"md_gost12_512")),
        Algorithm("rsa-sha256", RSA_SHA256_SIGNATURE, SHA256_DIGEST, "rsa", XmlsecRsaBackend()),
    )
}
BY_SIGNATURE_URI = {a.signature_uri: a for a in ALGORITHMS.values()}

DIGESTS: dict[str, Callable[[bytes], bytes]] = {
    GOST256_DIGEST: lambda data: libcrypto.digest(b"md_gost12_256", data),
    GOST512_DIGEST: lambda data: libcrypto.digest(b"md_gost12_512", data),
    SHA256_DIGEST: lambda data: hashlib.sha256(data).digest(),
}


def algorithm_for(key_type: str) -> Algorithm:
    """The algorithm a key of this type signs with by default."""
    for a in ALGORITHMS.values():
        if a.key_type == key_type:
            return a
    raise ValueError(f"no signature algorithm for a {key_type} key (supported: gost2012-256, gost2012-512, rsa)")
