"""Detached XML-DSig over an element referenced by its Id, as SMEV 3 signs.

The signature never sits inside what it signs: SMEV puts it beside the signed data
(CallerInformationSystemSignature next to SenderProvidedRequestData), and so does the
Zdravlink envelope (SenderSignature, GatewaySignature). The reference is digested
after exc-c14n and then the SMEV transform, which renames prefixes and drops
whitespace-only text, so a message rebuilt by another XML library still verifies.

Verification is strict where XML-DSig is known to be attacked: the referenced Id must
exist exactly once in the document (two elements with one Id is signature wrapping),
and, when the caller names the element it will act on, every reference must cover
that element: a valid signature over some other part of the document is refused.
"""
from __future__ import annotations

import base64
import binascii
import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from lxml import etree

from signing import errors, smev_transform
from signing.backends import ALGORITHMS, BY_SIGNATURE_URI, DIGESTS, Algorithm, algorithm_for
from signing.errors import SignatureError
from signing.keys import Certificate, KeyFileError, PrivateKey
from signing.trust import Trusted, TrustStore

DS_NS = "http://www.w3.org/2000/09/xmldsig#"
EXC_C14N = "http://www.w3.org/2001/10/xml-exc-c14n#"
EXC_C14N_COMMENTS = "http://www.w3.org/2001/10/xml-exc-c14n#WithComments"
C14N = "http://www.w3.org/TR/2001/REC-xml-c14n-20010315"
SMEV_TRANSFORM = smev_transform.ALGORITHM
ID_ATTRIBUTES = ("Id", "ID", "id", "{http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd}Id")
_DS = "{%s}" % DS_NS
_ID_XPATH = etree.XPath("//*[@Id=$v or @ID=$v or @id=$v or @wsu:Id=$v]", namespaces={
    "wsu": "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"})
_INCLUSIVE = "{%s}InclusiveNamespaces" % EXC_C14N


@dataclass(frozen=True)
class Signer:
    """A private key with its certificate and the algorithm it signs with."""

    key: PrivateKey
    certificate: Certificate
    algorithm: Algorithm

    @classmethod
    def create(cls, key: PrivateKey, certificate: Certificate, algorithm: str | None = None) -> Signer:
        if not key.matches(certificate):
            raise KeyFileError(f"{key.source}: this key does not belong to certificate {certificate.subject!r}")
        alg = ALGORITHMS[algorithm] if algorithm else algorithm_for(certificate.key_type)
        if alg.key_type != certificate.key_type:
            raise KeyFileError(f"algorithm {alg.name} needs a {alg.key_type} key, not {certificate.key_type}")
        return cls(key, certificate, alg)


@dataclass(frozen=True)
class Verified:
    """What a successful verification established."""

    certificate: Certificate
    anchor: Certificate
    algorithm: Algorithm
    references: tuple[str, ...]


def _exc_c14n(element: etree._Element, prefixes: list[str] | None = None, comments: bool = False) -> bytes:
    return etree.tostring(element, method="c14n", exclusive=True, with_comments=comments,
                          inclusive_ns_prefixes=prefixes or None)


def _reference_octets(target: etree._Element, transforms: list[tuple[str, list[str] | None]]) -> bytes:
    """Apply a reference's transforms to the element; an empty list means inclusive C14N (XML-DSig §4.3.3.2).

    exc-c14n followed by the SMEV transform is computed as the SMEV transform of the
    element itself: the transform re-serialises the element's infoset, which exc-c14n
    does not change (a test checks the two agree).
    """
    algorithms = [a for a, _ in transforms]
    if algorithms and algorithms[-1] == SMEV_TRANSFORM:
        if any(a != EXC_C14N for a in algorithms[:-1]):
            raise SignatureError(errors.SIGNATURE_MALFORMED,
                                 f"unsupported transform chain {algorithms} (use exc-c14n, then the SMEV transform)")
        try:
            return smev_transform.transform(target)
        except smev_transform.TransformError as exc:
            raise SignatureError(errors.SIGNATURE_MALFORMED, f"SMEV transform: {exc}") from None
    if not algorithms:
        return etree.tostring(target, method="c14n", exclusive=False, with_comments=False)
    if len(algorithms) == 1 and algorithms[0] in (EXC_C14N, EXC_C14N_COMMENTS):
        return _exc_c14n(target, transforms[0][1], comments=algorithms[0] == EXC_C14N_COMMENTS)
    raise SignatureError(errors.SIGNATURE_MALFORMED,
                         f"unsupported transform chain {algorithms}: detached signatures here use exc-c14n, "
                         f"optionally followed by {SMEV_TRANSFORM}")


def sign(target: etree._Element, signer: Signer, *, smev: bool = True) -> etree._Element:
    """A ds:Signature over ``target`` (which must carry an ``Id``), for the caller to place beside it."""
    ref_id = next((target.get(a) for a in ID_ATTRIBUTES if target.get(a)), None)
    if not ref_id:
        raise ValueError(f"element {target.tag} has no Id attribute to reference")
    alg = signer.algorithm
    transforms: list[tuple[str, list[str] | None]] = [(EXC_C14N, None)]
    if smev:
        transforms.append((SMEV_TRANSFORM, None))
    digest_value = DIGESTS[alg.digest_uri](_reference_octets(target, transforms))

    sig = etree.Element(_DS + "Signature", nsmap={"ds": DS_NS})
    info = etree.SubElement(sig, _DS + "SignedInfo")
    etree.SubElement(info, _DS + "CanonicalizationMethod", Algorithm=EXC_C14N)
    etree.SubElement(info, _DS + "SignatureMethod", Algorithm=alg.signature_uri)
    ref = etree.SubElement(info, _DS + "Reference", URI="#" + ref_id)
    tr = etree.SubElement(ref, _DS + "Transforms")
    for uri, _ in transforms:
        etree.SubElement(tr, _DS + "Transform", Algorithm=uri)
    etree.SubElement(ref, _DS + "DigestMethod", Algorithm=alg.digest_uri)
    etree.SubElement(ref, _DS + "DigestValue").text = base64.b64encode(digest_value).decode("ascii")
    value = alg.backend.sign(signer.key, _exc_c14n(info))
    etree.SubElement(sig, _DS + "SignatureValue").text = base64.b64encode(value).decode("ascii")
    data = etree.SubElement(etree.SubElement(sig, _DS + "KeyInfo"), _DS + "X509Data")
    etree.SubElement(data, _DS + "X509Certificate").text = base64.b64encode(signer.certificate.der).decode("ascii")
    return sig


def _required(parent: etree._Element, tag: str) -> etree._Element:
    el = parent.find(_DS + tag)
    if el is None:
        raise SignatureError(errors.SIGNATURE_MALFORMED, f"ds:{tag} is missing in ds:{etree.QName(parent).localname}")
    return el


def _b64(el: etree._Element, what: str) -> bytes:
    try:
        return base64.b64decode("".join((el.text or "").split()), validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError(errors.SIGNATURE_MALFORMED, f"{what} is not base64") from None


def _prefixes(method: etree._Element) -> list[str] | None:
    inc = method.find(_INCLUSIVE)
    return (inc.get("PrefixList") or "").split() if inc is not None else None


def _with_id(document: etree._Element, value: str) -> list[etree._Element]:
    """Every element carrying ``value`` as an Id (``//*`` selects elements only; the checks tell the type)."""
    hits = _ID_XPATH(document, v=value)
    return [h for h in hits if isinstance(h, etree._Element)] if isinstance(hits, list) else []


def _covers(target: etree._Element, expected: etree._Element) -> bool:
    return target is expected or any(a is target for a in expected.iterancestors())


def verify(signature: etree._Element, *, document: etree._Element, trust: TrustStore,
           expected: etree._Element | None = None, signers: Iterable[Certificate] | None = None,
           at: dt.datetime | None = None) -> Verified:
    """Verify a detached ds:Signature whose references resolve inside ``document``.

    ``expected`` is the element the caller will act on: every reference must cover it.
    ``signers``, when given, are the certificates the claimed sender holds; a trusted
    certificate of anyone else is refused. Raises SignatureError with the reason.
    """
    if signature.tag != _DS + "Signature":
        raise SignatureError(errors.SIGNATURE_MALFORMED, f"expected ds:Signature, found {signature.tag}")
    info = _required(signature, "SignedInfo")
    c14n = _required(info, "CanonicalizationMethod")
    if c14n.get("Algorithm") not in (EXC_C14N, EXC_C14N_COMMENTS):
        raise SignatureError(errors.SIGNATURE_ALGORITHM_UNSUPPORTED,
                             f"CanonicalizationMethod {c14n.get('Algorithm')!r} (use {EXC_C14N})")
    method_uri = _required(info, "SignatureMethod").get("Algorithm")
    alg = BY_SIGNATURE_URI.get(method_uri or "")
    if alg is None:
        raise SignatureError(errors.SIGNATURE_ALGORITHM_UNSUPPORTED,
                             f"SignatureMethod {method_uri!r} (supported: {', '.join(BY_SIGNATURE_URI)})")
    refs = info.findall(_DS + "Reference")
    if not refs:
        raise SignatureError(errors.SIGNATURE_MALFORMED, "ds:SignedInfo has no ds:Reference")

    resolved: list[tuple[etree._Element, etree._Element, str]] = []
    for ref in refs:
        uri = ref.get("URI") or ""
        if not uri.startswith("#") or len(uri) < 2:
            raise SignatureError(errors.SIGNATURE_MALFORMED,
                                 f"Reference URI {uri!r}: only same-document references by Id (#id) are accepted")
        hits = _with_id(document, uri[1:])
        if not hits:
            raise SignatureError(errors.SIGNATURE_REFERENCE_MISSING, f"no element with Id {uri[1:]!r} in the document")
        if len(hits) > 1:
            raise SignatureError(errors.SIGNATURE_WRAPPING, f"{len(hits)} elements carry Id {uri[1:]!r}")
        if expected is not None and not _covers(hits[0], expected):
            raise SignatureError(errors.SIGNATURE_WRAPPING,
                                 f"Reference {uri!r} resolves to {etree.QName(hits[0]).localname}, outside the "
                                 f"signed element {etree.QName(expected).localname}")
        resolved.append((ref, hits[0], uri))

    cert = _certificate(signature, signers)
    trusted = check_signer(cert, alg, trust=trust, signers=signers, at=at, method="SignatureMethod")

    for ref, target, uri in resolved:
        transforms = [(t.get("Algorithm") or "", _prefixes(t)) for t in ref.findall(f"{_DS}Transforms/{_DS}Transform")]
        digest_uri = _required(ref, "DigestMethod").get("Algorithm") or ""
        if digest_uri not in DIGESTS:
            raise SignatureError(errors.SIGNATURE_ALGORITHM_UNSUPPORTED, f"DigestMethod {digest_uri!r}")
        claimed = _b64(_required(ref, "DigestValue"), "DigestValue")
        if DIGESTS[digest_uri](_reference_octets(target, transforms)) != claimed:
            raise SignatureError(errors.SIGNATURE_DIGEST_MISMATCH,
                                 f"the content referenced by {uri!r} has changed since it was signed")

    value = _b64(_required(signature, "SignatureValue"), "SignatureValue")
    octets = _exc_c14n(info, _prefixes(c14n), comments=c14n.get("Algorithm") == EXC_C14N_COMMENTS)
    if not alg.backend.verify(cert, octets, value):
        raise SignatureError(errors.SIGNATURE_INVALID,
                             f"the SignatureValue does not verify with the key of {cert.subject!r}")
    return Verified(cert, trusted.anchor, alg, tuple(u for _, _, u in resolved))


def check_signer(cert: Certificate, alg: Algorithm, *, trust: TrustStore, signers: Iterable[Certificate] | None,
                 at: dt.datetime | None, method: str) -> Trusted:
    """The rules every signature's certificate must meet, whatever carries the signature.

    It chains to the trust store (and is not revoked), it is one of the claimed sender's
    certificates when those are known, and its key fits the algorithm named by ``method``.
    """
    trusted = trust.check(cert, at)
    if signers is not None and cert not in set(signers):
        raise SignatureError(errors.CERTIFICATE_SENDER_MISMATCH,
                             f"certificate {cert.subject!r} is trusted but is not one of the sender's certificates")
    if cert.key_type != alg.key_type:
        raise SignatureError(errors.SIGNATURE_INVALID,
                             f"{method} {alg.name} does not fit the certificate's {cert.key_type} key")
    return trusted


def _certificate(signature: etree._Element, signers: Iterable[Certificate] | None) -> Certificate:
    """The signer's certificate from KeyInfo, or the sender's only certificate when KeyInfo has none."""
    el = signature.find(f"{_DS}KeyInfo/{_DS}X509Data/{_DS}X509Certificate")
    if el is not None:
        try:
            return Certificate.from_bytes(_b64(el, "X509Certificate"), "KeyInfo")
        except KeyFileError as exc:
            raise SignatureError(errors.SIGNATURE_MALFORMED, str(exc)) from None
    known = list(signers or [])
    if len(known) == 1:
        return known[0]
    raise SignatureError(errors.CERTIFICATE_UNTRUSTED,
                         "ds:KeyInfo carries no X509Certificate and the signer cannot be told from configuration")
