"""The signature doctor: why a ds:Signature verifies or not, every step laid out.

``verify`` stops at the first thing wrong and names it with a code. An integrator whose
signature the gateway refuses needs more: which reference, which transforms, the digest
they wrote beside the digest the gateway computed, the octets the digest was taken over
(to diff against their own), whether the SignatureValue holds with the key in KeyInfo,
and the chain with the reason at each link. ``explain`` computes all of it without
stopping, then says the cause in one line:

* a digest that matches the content under *another* transform chain (exc-c14n alone,
  inclusive C14N, with or without the SMEV transform) than the one the Reference
  declares: the transform is wrong;
* a digest that matches no chain: the content changed after signing;
* digests right but the SignatureValue false: the key is wrong (and, when another
  known certificate's key verifies it, which one signed);
* all of that right but the chain refused: the trust (untrusted issuer, expired,
  revoked, with the CRL consulted).

The text goes to the terminal (``zdravlink verify --explain``) and, without the octets
and with certificate names quoted so that ``gateway.masking`` masks them, into the audit
record of a refused signature.
"""
from __future__ import annotations

import base64
import binascii
import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field

from lxml import etree

from signing import errors, smev_transform
from signing.backends import BY_SIGNATURE_URI, DIGESTS, Algorithm
from signing.errors import SignatureError
from signing.keys import Certificate, KeyFileError
from signing.trust import TrustStore
from signing.xmldsig import (
    C14N,
    DS_NS,
    EXC_C14N,
    EXC_C14N_COMMENTS,
    SMEV_TRANSFORM,
    _exc_c14n,
    _prefixes,
    _reference_octets,
    _with_id,
    verify,
)

_DS = "{%s}" % DS_NS
#: Transform chains a signer may really have used, tried when the declared one gives another digest.
_CHAINS: list[tuple[str, list[tuple[str, list[str] | None]]]] = [
    ("exc-c14n, then the SMEV transform", [(EXC_C14N, None), (SMEV_TRANSFORM, None)]),
    ("exc-c14n alone", [(EXC_C14N, None)]),
    ("inclusive C14N (no Transforms)", []),
    ("exc-c14n with comments", [(EXC_C14N_COMMENTS, None)]),
]
_SHORT = {EXC_C14N: "exc-c14n", EXC_C14N_COMMENTS: "exc-c14n#WithComments", SMEV_TRANSFORM: "smev-transform",
          C14N: "c14n"}

# Causes, named the same way in the text and for tests and tools.
CAUSE_TRANSFORM = "wrong transform"
CAUSE_CONTENT = "content changed after signing"
CAUSE_KEY = "wrong key"
CAUSE_TRUST = "untrusted certificate"
CAUSE_STRUCTURE = "malformed signature"
CAUSE_NONE = "none: the signature verifies"


@dataclass
class ReferenceCheck:
    uri: str
    target: str
    transforms: list[str]
    digest_method: str
    declared: bytes | None
    computed: bytes | None
    octets: bytes = b""
    c14n_octets: bytes = b""
    matches_chain: str | None = None
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None and self.declared is not None and self.declared == self.computed


@dataclass
class Explanation:
    index: int
    path: str
    code: str | None  # verify's own code; None when it verifies
    detail: str = ""
    cause: str = CAUSE_NONE
    method: str = ""
    canonicalization: str = ""
    references: list[ReferenceCheck] = field(default_factory=list)
    signed_info: bytes = b""
    value_ok: bool | None = None
    value_note: str = ""
    certificate: Certificate | None = None
    chain: list[str] = field(default_factory=list)
    trust_ok: bool | None = None

    def lines(self, *, dump: bool = False, for_audit: bool = False) -> list[str]:
        """The explanation as text; ``for_audit`` leaves out octets and quotes names for masking."""
        def q(name: str) -> str:
            return f"'{name}'" if for_audit else name

        def show(b: bytes | None) -> str:
            if b is None:
                return "(none)"
            return b.hex() if for_audit else base64.b64encode(b).decode("ascii")

        verdict = "verifies" if self.code is None else f"refused: {self.code}"
        out = [f"ds:Signature #{self.index} at {self.path}: {verdict}",
               # the check's own words, except where they would mislead: a digest computed under another
               # transform chain is refused as "content changed", which is what the cause line corrects
               f"  cause: {self.cause}" + (f" ({self.detail})" if self.code and not for_audit
                                          and not self.cause.startswith(CAUSE_TRANSFORM) else ""),
               f"  SignatureMethod {self.method or '(none)'}; "
               f"CanonicalizationMethod {self.canonicalization or '(none)'}"]
        for r in self.references:
            state = "digest matches" if r.ok else (r.problem or "DIGEST MISMATCH")
            out.append(f"  Reference {r.uri} -> {r.target}: {state}")
            chain = " -> ".join(r.transforms) or "(none: inclusive C14N)"
            out.append(f"    transforms: {chain}; digest {r.digest_method}")
            out.append(f"    DigestValue in the signature: {show(r.declared)}")
            out.append(f"    computed by the gateway:      {show(r.computed)}")
            if not r.ok and r.computed is not None:
                out.append(f"    the declared digest matches: {r.matches_chain or 'no transform chain tried'}")
            if dump and not for_audit:
                out.append(f"    octets after exc-c14n ({len(r.c14n_octets)} bytes):")
                out.append("      " + r.c14n_octets.decode("utf-8", "replace"))
                out.append(f"    octets digested, after {' -> '.join(r.transforms) or 'C14N'} ({len(r.octets)} bytes):")
                out.append("      " + r.octets.decode("utf-8", "replace"))
        if dump and not for_audit and self.signed_info:
            out.append(f"  SignedInfo after {self.canonicalization or 'exc-c14n'} ({len(self.signed_info)} bytes):")
            out.append("    " + self.signed_info.decode("utf-8", "replace"))
        value = {True: "verifies with the KeyInfo certificate's key", False: "DOES NOT verify with the KeyInfo "
                 "certificate's key", None: "not checked"}[self.value_ok]
        out.append(f"  SignatureValue: {value}" + (f"; {self.value_note}" if self.value_note else ""))
        if self.certificate is not None:
            c = self.certificate
            out.append(f"  certificate {q(c.subject)} serial {c.serial}, {c.key_type}, valid "
                       f"{c.not_before:%Y-%m-%d}..{c.not_after:%Y-%m-%d}, sha256 {c.fingerprint}")
            out.append(f"    issuer {q(c.issuer)}")
        out += [f"  chain: {link}" for link in self.chain]
        return out

    def text(self, *, dump: bool = False, for_audit: bool = False) -> str:
        return "\n".join(self.lines(dump=dump, for_audit=for_audit))


def _b64(el: etree._Element | None) -> bytes | None:
    if el is None:
        return None
    try:
        return base64.b64decode("".join((el.text or "").split()), validate=True)
    except (binascii.Error, ValueError):
        return None


def _path(el: etree._Element) -> str:
    parts = []
    for node in [el, *el.iterancestors()]:
        parts.append(etree.QName(node).localname)
    return "/" + "/".join(reversed(parts))


def _digest(uri: str, data: bytes) -> bytes | None:
    fn = DIGESTS.get(uri)
    return fn(data) if fn else None


def _check_reference(ref: etree._Element, document: etree._Element) -> ReferenceCheck:
    uri = ref.get("URI") or ""
    transforms = [(t.get("Algorithm") or "", _prefixes(t)) for t in ref.findall(f"{_DS}Transforms/{_DS}Transform")]
    method_el = ref.find(_DS + "DigestMethod")
    method = method_el.get("Algorithm") if method_el is not None else ""
    check = ReferenceCheck(uri, "?", [_SHORT.get(a, a) for a, _ in transforms], method or "(none)",
                           _b64(ref.find(_DS + "DigestValue")), None)
    hits = _with_id(document, uri[1:]) if uri.startswith("#") and len(uri) > 1 else []
    if len(hits) != 1:
        check.problem = ("no element carries this Id" if not hits else f"{len(hits)} elements carry this Id "
                         "(signature wrapping)") if uri.startswith("#") else "only #Id references are accepted"
        return check
    target = hits[0]
    check.target = f"{etree.QName(target).localname} (Id {uri[1:]})"
    if method not in DIGESTS:
        check.problem = f"digest method {method!r} is not supported"
        return check
    try:
        check.c14n_octets = _exc_c14n(target)
        check.octets = _reference_octets(target, transforms)
    except SignatureError as exc:
        check.problem = exc.detail
        return check
    except smev_transform.TransformError as exc:
        check.problem = f"SMEV transform: {exc}"
        return check
    check.computed = _digest(method, check.octets)
    if check.declared is not None and check.declared != check.computed:
        for name, chain in _CHAINS:
            try:
                if _digest(method, _reference_octets(target, chain)) == check.declared:
                    check.matches_chain = name
                    break
            except (SignatureError, smev_transform.TransformError):
                continue
    return check


def _chain(cert: Certificate, trust: TrustStore | None, at: dt.datetime) -> tuple[bool | None, list[str]]:
    if trust is None:
        return None, ["no trust store given"]
    lines = []
    anchor = next((a for a in trust.anchors if a.der == cert.der or cert.x509.issued_by(a.x509)), None)
    if anchor is None:
        known = ", ".join(f"'{a.subject}'" for a in trust.anchors) or "none"
        lines.append(f"issuer '{cert.issuer}' is not in the trust store (it holds {known})")
    else:
        lines.append(f"issued by the trusted CA '{anchor.subject}' (sha256 {anchor.fingerprint}), "
                     f"valid {anchor.not_before:%Y-%m-%d}..{anchor.not_after:%Y-%m-%d}")
        crls = [crl for crl in trust.crls if crl.issued_by(anchor.x509)]
        if not crls:
            lines.append(f"no CRL of '{anchor.subject}' in the trust store: revocation not checked")
        for crl in crls:
            listed = crl.revokes(cert.x509)
            nxt = f"{crl.next_update:%Y-%m-%d %H:%M} UTC" if crl.next_update else "not given"
            late = " (PAST its next update)" if crl.next_update and crl.next_update < at else ""
            lines.append(f"CRL of '{crl.issuer}', next update {nxt}{late}: serial {cert.serial} "
                         f"{'IS REVOKED' if listed else 'not listed'}")
    try:
        trust.check(cert, at)
        lines.append("trusted now")
        return True, lines
    except SignatureError as exc:
        lines.append(f"{exc.code}: {exc.detail}")
        return False, lines


def explain(signature: etree._Element, *, document: etree._Element, trust: TrustStore | None,
            expected: etree._Element | None = None, signers: Iterable[Certificate] | None = None,
            known: Iterable[Certificate] = (), index: int = 1, at: dt.datetime | None = None) -> Explanation:
    """Everything about one signature; ``known`` are other certificates to try the SignatureValue with."""
    now = at or dt.datetime.now(dt.UTC)
    signer_list = list(signers) if signers is not None else None
    result = Explanation(index, _path(signature), None)
    if trust is not None:
        try:
            verify(signature, document=document, trust=trust, expected=expected, signers=signer_list, at=now)
        except SignatureError as exc:
            result.code, result.detail = exc.code, exc.detail
    info = signature.find(_DS + "SignedInfo")
    if info is None:
        result.cause = CAUSE_STRUCTURE
        result.code = result.code or errors.SIGNATURE_MALFORMED
        return result
    c14n = info.find(_DS + "CanonicalizationMethod")
    method_el = info.find(_DS + "SignatureMethod")
    result.canonicalization = _SHORT.get(c14n.get("Algorithm") or "", c14n.get("Algorithm") or "") \
        if c14n is not None else ""
    result.method = method_el.get("Algorithm") or "" if method_el is not None else ""
    result.references = [_check_reference(ref, document) for ref in info.findall(_DS + "Reference")]
    alg: Algorithm | None = BY_SIGNATURE_URI.get(result.method)
    cert_el = signature.find(f"{_DS}KeyInfo/{_DS}X509Data/{_DS}X509Certificate")
    der = _b64(cert_el)
    if der is not None:
        try:
            result.certificate = Certificate.from_bytes(der, "KeyInfo")
        except KeyFileError:
            result.certificate = None
    elif signer_list is not None and len(signer_list) == 1:
        result.certificate = signer_list[0]
    if c14n is not None:
        comments = c14n.get("Algorithm") == EXC_C14N_COMMENTS
        result.signed_info = _exc_c14n(info, _prefixes(c14n), comments=comments)
    value = _b64(signature.find(_DS + "SignatureValue"))
    if alg is not None and value is not None and result.certificate is not None:
        cert = result.certificate
        if cert.key_type != alg.key_type:
            result.value_ok = False
            result.value_note = f"the certificate's key is {cert.key_type}, the method wants {alg.key_type}"
        else:
            result.value_ok = alg.backend.verify(cert, result.signed_info, value)
            if not result.value_ok:
                other = next((c for c in known if c != cert and c.key_type == alg.key_type
                              and alg.backend.verify(c, result.signed_info, value)), None)
                if other is not None:
                    result.value_note = (f"it verifies with the key of '{other.subject}' (sha256 {other.fingerprint}"
                                         "): signed with that key, but KeyInfo carries another certificate")
    if result.certificate is not None:
        result.trust_ok, result.chain = _chain(result.certificate, trust, now)
        if signer_list is not None and result.certificate not in set(signer_list):
            result.chain.append("CERTIFICATE_SENDER_MISMATCH: not one of the claimed sender's certificates")
    result.cause = _cause(result)
    return result


def _cause(r: Explanation) -> str:
    if r.code in (errors.SIGNATURE_MALFORMED, errors.SIGNATURE_ALGORITHM_UNSUPPORTED, errors.SIGNATURE_WRAPPING,
                  errors.SIGNATURE_REFERENCE_MISSING) or r.certificate is None:
        return f"{CAUSE_STRUCTURE}: {r.detail}" if r.detail else CAUSE_STRUCTURE
    bad = [ref for ref in r.references if not ref.ok]
    if bad:
        declared_elsewhere = [ref for ref in bad if ref.matches_chain]
        if declared_elsewhere:
            ref = declared_elsewhere[0]
            return (f"{CAUSE_TRANSFORM}: the DigestValue of {ref.uri} was computed over {ref.matches_chain}, but the "
                    f"Reference declares {' -> '.join(ref.transforms) or 'no transforms'}")
        return (f"{CAUSE_CONTENT}: the digest of {', '.join(ref.uri for ref in bad)} matches the content under no "
                "transform chain: what it covers changed after signing")
    if r.value_ok is False:
        return f"{CAUSE_KEY}: the digests hold, the SignatureValue does not verify with the key of the certificate " \
               "in KeyInfo" + (f" ({r.value_note})" if r.value_note else " (another key signed, or SignedInfo changed)")
    if r.trust_ok is False or r.code in errors.CERTIFICATE_CODES:
        reason = next((line for line in r.chain if line.startswith("CERTIFICATE_")), r.detail)
        return f"{CAUSE_TRUST}: {reason}"
    if r.code is not None:
        return r.detail
    return CAUSE_NONE

