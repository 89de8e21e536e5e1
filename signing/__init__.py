"""XML signatures (XML-DSig with the SMEV transform, GOST R 34.10-2012, RSA) and key and trust stores.

The public API a recipient needs to check what the gateway sent::

    from lxml import etree
    from signing import Certificate, TrustStore, verify

    doc = etree.fromstring(body)                       # the delivered zl:Envelope
    ns = {"zl": "urn://zdravlink/envelope/1.0", "ds": "http://www.w3.org/2000/09/xmldsig#"}
    verified = verify(doc.find("zl:GatewaySignature/ds:Signature", ns), document=doc,
                      expected=doc.find("zl:SenderProvidedData", ns),
                      trust=TrustStore.from_directory("trust/"),
                      signers=[Certificate.load("zdravlink-gateway.pem")])
    print(verified.certificate.subject, verified.algorithm.name)

``verify`` raises SignatureError, whose ``code`` says why (see signing.errors).
``sign_octets``/``verify_octets`` do the same for raw bytes (a JSON body) with the
signature in HTTP headers (see signing.detached).
"""
from signing.backends import ALGORITHMS, Algorithm, Backend
from signing.detached import sign_octets, verify_octets
from signing.errors import SignatureError
from signing.keys import Certificate, KeyFileError, PrivateKey
from signing.smev_transform import TransformError, transform
from signing.trust import TrustStore
from signing.xmldsig import Signer, Verified, sign, verify

__all__ = ["ALGORITHMS", "Algorithm", "Backend", "Certificate", "KeyFileError", "PrivateKey", "SignatureError",
           "Signer", "TransformError", "TrustStore", "Verified", "sign", "sign_octets", "transform", "verify",
           "verify_octets"]
