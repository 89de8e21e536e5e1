"""The signing package: GOST primitives against published vectors, XML-DSig round trips,
every refusal code from a realistic attack, the SMEV-transform shortcut, PKCS#12, and the
public-API example.

Certificates come from the session ``demo_keys`` fixture (a real GOST demo CA); expired,
not-yet-valid, revoked and rogue certificates are issued for real by ``DemoCA`` or the
openssl command, never mocked.
"""
from __future__ import annotations

import base64
import copy
import datetime as dt
import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

import signing
from demo.ca import DemoCA
from signing import (
    Certificate,
    KeyFileError,
    PrivateKey,
    SignatureError,
    Signer,
    TrustStore,
    errors,
    libcrypto,
    sign,
    smev_transform,
    transform,
    verify,
)
from signing.backends import DIGESTS

DATA = Path(__file__).resolve().parents[1] / "data"
# A copy of /work/shared/reference/gost-vectors.json, so that a clone elsewhere (no ../shared) tests too.
GOST_VECTORS_FILE = DATA / "signing" / "gost-vectors.json"
SHARED_GOST_VECTORS = Path("/work/shared/reference/gost-vectors.json")
GOST_VECTORS = json.loads(GOST_VECTORS_FILE.read_text(encoding="utf-8"))
SMEV_VECTORS = DATA / "smev-transform-vectors"
SMEV_CASES = json.loads((SMEV_VECTORS / "vectors.json").read_text(encoding="utf-8"))["vectors"]

DS = "http://www.w3.org/2000/09/xmldsig#"
ZL = "urn://zdravlink/envelope/1.0"
NS = {"ds": DS, "zl": ZL}
SMEV = "urn://smev-gov-ru/xmldsig/transform"
EXC_C14N = "http://www.w3.org/2001/10/xml-exc-c14n#"
ALGORITHMS = ("gost2012-256", "gost2012-512", "rsa-sha256")
KEY_TYPE = {"gost2012-256": "gost2012-256", "gost2012-512": "gost2012-512", "rsa-sha256": "rsa"}
# Written out rather than imported, so a changed URI in signing/backends.py is caught here.
SIGNATURE_URI = {
    "gost2012-256": "urn:ietf:params:xml:ns:cpxmlsec:algorithms:gostr34102012-gostr34112012-256",
    "gost2012-512": "urn:ietf:params:xml:ns:cpxmlsec:algorithms:gostr34102012-gostr34112012-512",
    "rsa-sha256": "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256",
}
DIGEST_URI = {
    "gost2012-256": "urn:ietf:params:xml:ns:cpxmlsec:algorithms:gostr34112012-256",
    "gost2012-512": "urn:ietf:params:xml:ns:cpxmlsec:algorithms:gostr34112012-512",
    "rsa-sha256": "http://www.w3.org/2001/04/xmlenc#sha256",
}
CA_RDNS = {"CN=Zdravlink Demo CA", "O=Zdravlink demo"}

# Cyrillic, & < > and quotes in text and attributes, several namespaces (one declared only
# on an inner element, one default), whitespace-only text and a comment.
ENVELOPE = """\
<zl:Envelope xmlns:zl="urn://zdravlink/envelope/1.0" xmlns:lab="urn://zdravlink/lab/1.0">
  <zl:Header><zl:Sender>lab</zl:Sender></zl:Header>
  <zl:SenderProvidedData Id="SPD-1">
    <lab:Result xmlns:m="urn://zdravlink/meta/1.0" m:source="ЛИС &quot;Гемотест&quot; &amp; Ко" code="a&amp;b&lt;c">
      <lab:Patient>Иванов Иван Иванович</lab:Patient>
      <!-- not signed content -->
      <lab:Value unit="ммоль/л">5.4 &lt; 6.1 &amp; "норма" 'в пределах' &gt; 0</lab:Value>
      <m:Note xml:lang="ru"> гемоглобин в норме </m:Note>
      <Extra xmlns="urn://zdravlink/extra"><Item n="1">Ёжик</Item></Extra>
    </lab:Result>
  </zl:SenderProvidedData>
  <zl:GatewaySignature/>
</zl:Envelope>"""


# ---- helpers -------------------------------------------------------------------

def key_files(keys: Path, name: str, algorithm: str) -> tuple[Path, Path]:
    t = KEY_TYPE[algorithm]
    return keys / f"{name}-{t}.key", keys / f"{name}-{t}.pem"


def make_signer(keys: Path, name: str = "gateway", algorithm: str = "gost2012-256") -> Signer:
    key, cert = key_files(keys, name, algorithm)
    return Signer.create(PrivateKey.load(key), Certificate.load(cert))


def signed_envelope(signer: Signer, *, smev: bool = True, xml: str = ENVELOPE) -> etree._Element:
    """The envelope with a signature over SenderProvidedData in GatewaySignature, serialised and parsed again."""
    doc = etree.fromstring(xml)
    doc.find("zl:GatewaySignature", NS).append(sign(doc.find("zl:SenderProvidedData", NS), signer, smev=smev))
    return reparse(doc)


def rdns(subject: str) -> set[str]:
    """The RDNs of an RFC 2253 subject, whatever their order (the demo CA's DN order is not part of the contract)."""
    return set(subject.split(","))


def participant(name: str) -> set[str]:
    return {f"CN={name}", "O=Zdravlink demo"}


def reparse(doc: etree._Element) -> etree._Element:
    return etree.fromstring(etree.tostring(doc))


def sig_of(doc: etree._Element) -> etree._Element:
    return doc.find("zl:GatewaySignature/ds:Signature", NS)


def check(doc: etree._Element, trust: TrustStore, **kw) -> signing.Verified:
    kw.setdefault("expected", doc.find("zl:SenderProvidedData", NS))
    return verify(sig_of(doc), document=doc, trust=trust, **kw)


def refused(doc: etree._Element, trust: TrustStore, **kw) -> str:
    with pytest.raises(SignatureError) as info:
        check(doc, trust, **kw)
    return info.value.code


def openssl(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess:
    exe = shutil.which("openssl")
    assert exe, "the openssl command is missing"
    proc = subprocess.run([exe, *map(str, args)], cwd=cwd, capture_output=True)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return proc


@pytest.fixture(scope="module")
def trust(demo_keys: Path) -> TrustStore:
    return TrustStore.from_directory(demo_keys / "trust")


@pytest.fixture(scope="module")
def gost(demo_keys: Path) -> Signer:
    return make_signer(demo_keys)


# ---- 1. GOST primitives against published vectors ------------------------------

def test_vector_copy_matches_the_shared_reference_when_present():
    """tests/data/signing/gost-vectors.json is an unchanged copy of the shared reference (checked where it exists)."""
    if SHARED_GOST_VECTORS.exists():
        assert GOST_VECTORS_FILE.read_bytes() == SHARED_GOST_VECTORS.read_bytes()
    assert len(GOST_VECTORS["streebog"]) == 4


@pytest.mark.parametrize("vector", GOST_VECTORS["streebog"], ids=[v["id"] for v in GOST_VECTORS["streebog"]])
def test_streebog_matches_rfc6986(vector):
    """The engine's Streebog gives the RFC 6986 digests, in the byte order SMEV DigestValue uses."""
    md = {"GOST R 34.11-2012 256": b"md_gost12_256", "GOST R 34.11-2012 512": b"md_gost12_512"}[vector["algorithm"]]
    out = libcrypto.digest(md, bytes.fromhex(vector["message_hex"]))
    assert out.hex() == vector["digest_hex"]
    assert out[::-1].hex() != vector["digest_hex"]  # the reversed ("printed number") order is not what we produce


def _der(tag: int, body: bytes) -> bytes:
    n = len(body)
    length = bytes([n]) if n < 0x80 else bytes([0x80 | ((n.bit_length() + 7) // 8)]) + n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag]) + length + body


def _oid(dotted: str) -> bytes:
    first, second, *rest = (int(p) for p in dotted.split("."))
    body = bytearray([40 * first + second])
    for arc in rest:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body += bytes(reversed(chunk))
    return _der(0x06, bytes(body))


def _le(hex_number: str) -> bytes:
    return int(hex_number, 16).to_bytes(32, "little")


def _be(hex_number: str) -> bytes:
    return int(hex_number, 16).to_bytes(32, "big")


@pytest.fixture(scope="module")
def rfc7091() -> tuple[dict, libcrypto.Pkey]:
    """RFC 7091 example 1: the public key Q on the test curve as a SubjectPublicKeyInfo."""
    v = GOST_VECTORS["gost3410_2012_256_example"]
    algorithm = _der(0x30, _oid("1.2.643.7.1.1.1.1")
                     + _der(0x30, _oid("1.2.643.2.2.35.0") + _oid("1.2.643.7.1.1.2.2")))
    point = _der(0x04, _le(v["Q_x"]) + _le(v["Q_y"]))
    spki = _der(0x30, algorithm + _der(0x03, b"\0" + point))
    return v, libcrypto.Pkey.public_from_der(spki)


def test_gost3410_2012_rfc7091_example_verifies(rfc7091):
    """The published signature (r, s) over e verifies: e little-endian in, s‖r big-endian as the engine writes it."""
    v, pkey = rfc7091
    assert (pkey.nid, pkey.bits) == (libcrypto.NID_GOST2012_256, 256)
    assert libcrypto.verify_digest(pkey, _le(v["e"]), _be(v["s"]) + _be(v["r"])) is True


def test_gost3410_2012_rfc7091_example_refuses_swapped_halves(rfc7091):
    """r‖s (the other half order some libraries use) does not verify: the order is significant."""
    v, pkey = rfc7091
    assert libcrypto.verify_digest(pkey, _le(v["e"]), _be(v["r"]) + _be(v["s"])) is False


@pytest.mark.parametrize("how", ["last-bit", "big-endian"])
def test_gost3410_2012_rfc7091_example_refuses_another_digest(rfc7091, how):
    """An altered e, or e in the wrong byte order, does not verify."""
    v, pkey = rfc7091
    e = bytearray(_le(v["e"]))
    if how == "last-bit":
        e[0] ^= 1
    else:
        e = bytearray(_be(v["e"]))
    assert libcrypto.verify_digest(pkey, bytes(e), _be(v["s"]) + _be(v["r"])) is False


@pytest.mark.parametrize("vector", SMEV_CASES, ids=[v["name"] for v in SMEV_CASES])
def test_streebog_of_smev_transform_vectors(vector):
    """DigestValue's input chain end to end: our transform + Streebog-256 give what gostcrypto computed for each vector."""
    root = etree.fromstring((SMEV_VECTORS / vector["input_file"]).read_bytes())
    digest = DIGESTS[DIGEST_URI["gost2012-256"]](transform(root))
    assert digest.hex() == vector["gostr3411_2012_256_of_expected"]["hex"]
    assert base64.b64encode(digest).decode() == vector["gostr3411_2012_256_of_expected"]["base64"]


# ---- 2. round trips ------------------------------------------------------------

@pytest.mark.parametrize("smev", [True, False], ids=["smev", "exc-c14n-only"])
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_sign_verify_round_trip(demo_keys, trust, algorithm, smev):
    """Each algorithm signs and verifies after serialisation, and names itself correctly in ds:SignedInfo."""
    doc = signed_envelope(make_signer(demo_keys, "gateway", algorithm), smev=smev)
    sig = sig_of(doc)
    assert sig.find("ds:SignedInfo/ds:SignatureMethod", NS).get("Algorithm") == SIGNATURE_URI[algorithm]
    assert sig.find("ds:SignedInfo/ds:Reference/ds:DigestMethod", NS).get("Algorithm") == DIGEST_URI[algorithm]
    assert sig.find("ds:SignedInfo/ds:CanonicalizationMethod", NS).get("Algorithm") == EXC_C14N
    assert sig.find("ds:SignedInfo/ds:Reference", NS).get("URI") == "#SPD-1"
    transforms = [t.get("Algorithm") for t in sig.iterfind("ds:SignedInfo/ds:Reference/ds:Transforms/ds:Transform", NS)]
    assert transforms == ([EXC_C14N, SMEV] if smev else [EXC_C14N])

    verified = check(doc, trust, signers=[Certificate.load(key_files(demo_keys, "gateway", algorithm)[1])])
    assert verified.algorithm.name == algorithm
    assert rdns(verified.certificate.subject) == participant("gateway")
    assert verified.certificate.key_type == KEY_TYPE[algorithm]
    assert rdns(verified.anchor.subject) == CA_RDNS
    assert verified.references == ("#SPD-1",)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_digest_value_is_digest_of_the_reference_octets(demo_keys, algorithm):
    """DigestValue is the algorithm's digest of transform(SenderProvidedData), computed independently here."""
    doc = signed_envelope(make_signer(demo_keys, "gateway", algorithm))
    spd = doc.find("zl:SenderProvidedData", NS)
    independent = {"gost2012-256": lambda b: libcrypto.digest(b"md_gost12_256", b),
                   "gost2012-512": lambda b: libcrypto.digest(b"md_gost12_512", b),
                   "rsa-sha256": lambda b: hashlib.sha256(b).digest()}[algorithm]
    octets = transform(spd)
    assert "Иванов".encode() in octets and b"&amp;" in octets and b"&lt;" in octets
    assert base64.b64decode(sig_of(doc).findtext("ds:SignedInfo/ds:Reference/ds:DigestValue", namespaces=NS)) \
        == independent(octets)


def test_gost_signatures_are_randomised_but_all_verify(gost, trust):
    """GOST R 34.10 uses a fresh k per signature: two signatures differ, both verify."""
    a, b = signed_envelope(gost), signed_envelope(gost)
    assert sig_of(a).findtext("ds:SignatureValue", namespaces=NS) != sig_of(b).findtext("ds:SignatureValue", namespaces=NS)
    check(a, trust)
    check(b, trust)


def test_sign_requires_an_id(gost):
    """An element without Id cannot be referenced by a detached signature."""
    with pytest.raises(ValueError, match="no Id"):
        sign(etree.fromstring('<a:x xmlns:a="urn:a"/>'), gost)


# ---- 3. refusals ---------------------------------------------------------------

def test_changed_content_is_a_digest_mismatch(gost, trust):
    """Changing one signed text node after signing breaks the reference digest."""
    doc = signed_envelope(gost)
    doc.find(".//{urn://zdravlink/lab/1.0}Patient").text = "Петров Пётр Петрович"
    assert refused(doc, trust) == errors.SIGNATURE_DIGEST_MISMATCH


def test_changed_attribute_is_a_digest_mismatch(gost, trust):
    """Attributes are covered too (here: a unit of measure)."""
    doc = signed_envelope(gost)
    doc.find(".//{urn://zdravlink/lab/1.0}Value").set("unit", "мкмоль/л")
    assert refused(doc, trust) == errors.SIGNATURE_DIGEST_MISMATCH


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_flipped_signature_value_byte_is_invalid(demo_keys, trust, algorithm):
    """One flipped bit in SignatureValue is refused for every algorithm."""
    doc = signed_envelope(make_signer(demo_keys, "gateway", algorithm))
    el = sig_of(doc).find("ds:SignatureValue", NS)
    raw = bytearray(base64.b64decode(el.text))
    raw[len(raw) // 2] ^= 0x01
    el.text = base64.b64encode(bytes(raw)).decode()
    assert refused(doc, trust) == errors.SIGNATURE_INVALID


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_content_and_digest_value_changed_together_break_the_signature(demo_keys, trust, algorithm):
    """An attacker who changes the content and writes its correct DigestValue still fails: SignedInfo is signed."""
    doc = signed_envelope(make_signer(demo_keys, "gateway", algorithm))
    spd = doc.find("zl:SenderProvidedData", NS)
    spd.find(".//{urn://zdravlink/lab/1.0}Value").text = "9.9"
    digest_el = sig_of(doc).find("ds:SignedInfo/ds:Reference/ds:DigestValue", NS)
    digest_el.text = base64.b64encode(DIGESTS[DIGEST_URI[algorithm]](transform(spd))).decode()
    assert refused(doc, trust) == errors.SIGNATURE_INVALID


def test_signature_method_swapped_to_another_gost_size_is_invalid(gost, trust):
    """Claiming GOST-512 for a signature made with a 256-bit key is refused, not tried."""
    doc = signed_envelope(gost)
    sig_of(doc).find("ds:SignedInfo/ds:SignatureMethod", NS).set("Algorithm", SIGNATURE_URI["gost2012-512"])
    assert refused(doc, trust) == errors.SIGNATURE_INVALID


def test_self_signed_certificate_is_untrusted(tmp_path, trust):
    """A self-signed certificate with the gateway's subject (openssl req -x509) is not trusted."""
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", tmp_path / "self.key",
            "-out", tmp_path / "self.pem", "-days", "30", "-subj", "/O=Zdravlink demo/CN=gateway")
    forger = Signer.create(PrivateKey.load(tmp_path / "self.key"), Certificate.load(tmp_path / "self.pem"))
    assert refused(signed_envelope(forger), trust) == errors.CERTIFICATE_UNTRUSTED


def test_rogue_ca_with_the_same_name_is_untrusted(tmp_path, demo_keys, trust):
    """A second CA with the demo CA's exact name issues a 'gateway' certificate: names alone are not trust."""
    rogue = DemoCA.create(tmp_path / "rogue-ca")
    key, cert = rogue.issue(tmp_path, "gateway", "gost2012-256")
    forged = Certificate.load(cert)
    assert forged.issuer == Certificate.load(demo_keys / "gateway-gost2012-256.pem").issuer
    assert rdns(forged.issuer) == CA_RDNS
    doc = signed_envelope(Signer.create(PrivateKey.load(key), forged))
    assert refused(doc, trust) == errors.CERTIFICATE_UNTRUSTED


def test_missing_key_info_without_a_known_sender_is_untrusted(gost, trust, demo_keys):
    """Without X509Certificate in KeyInfo the signer must come from configuration (exactly one sender certificate)."""
    doc = signed_envelope(gost)
    key_info = sig_of(doc).find("ds:KeyInfo", NS)
    key_info.getparent().remove(key_info)
    assert refused(doc, trust) == errors.CERTIFICATE_UNTRUSTED
    check(doc, trust, signers=[Certificate.load(demo_keys / "gateway-gost2012-256.pem")])


def _issued_signer(demo_keys: Path, out: Path, name: str, **dates: dt.datetime) -> Signer:
    key, cert = DemoCA(demo_keys / "ca").issue(out, name, "gost2012-256", **dates)
    return Signer.create(PrivateKey.load(key), Certificate.load(cert))


def test_expired_certificate(tmp_path, demo_keys, trust):
    """A certificate of the trusted CA whose validity ended yesterday is refused as expired."""
    now = dt.datetime.now(dt.UTC)
    signer = _issued_signer(demo_keys, tmp_path, "expired", not_before=now - dt.timedelta(days=30),
                            not_after=now - dt.timedelta(days=1))
    assert refused(signed_envelope(signer), trust) == errors.CERTIFICATE_EXPIRED


def test_not_yet_valid_certificate(tmp_path, demo_keys, trust):
    """A certificate of the trusted CA valid only from tomorrow is refused as not yet valid."""
    now = dt.datetime.now(dt.UTC)
    signer = _issued_signer(demo_keys, tmp_path, "future", not_before=now + dt.timedelta(days=1),
                            not_after=now + dt.timedelta(days=30))
    assert refused(signed_envelope(signer), trust) == errors.CERTIFICATE_NOT_YET_VALID


def test_verification_time_can_be_chosen(gost, trust):
    """``at`` decides validity: a good certificate is refused at a moment past its notAfter or before its notBefore."""
    doc = signed_envelope(gost)
    cert = gost.certificate
    ca = check(doc, trust).anchor
    check(doc, trust, at=max(cert.not_before, ca.not_before) + dt.timedelta(seconds=1))
    check(doc, trust, at=min(cert.not_after, ca.not_after) - dt.timedelta(seconds=1))
    assert refused(doc, trust, at=cert.not_after + dt.timedelta(seconds=1)) == errors.CERTIFICATE_EXPIRED
    assert refused(doc, trust, at=cert.not_before - dt.timedelta(seconds=1)) == errors.CERTIFICATE_NOT_YET_VALID


def test_revoked_certificate_and_its_unrevoked_sibling(tmp_path):
    """After revocation and a new CRL in the trust directory, the revoked certificate is refused; a sibling still verifies."""
    ca = DemoCA.create(tmp_path / "ca")
    revoked_key, revoked_cert = ca.issue(tmp_path / "keys", "revoked", "gost2012-256")
    good_key, good_cert = ca.issue(tmp_path / "keys", "kept", "gost2012-256")
    ca.revoke(revoked_cert)
    trust_dir = tmp_path / "trust"
    trust_dir.mkdir()
    shutil.copyfile(ca.cert, trust_dir / "ca.pem")
    ca.write_crl(trust_dir / "ca.crl")
    store = TrustStore.from_directory(trust_dir)

    revoked = Signer.create(PrivateKey.load(revoked_key), Certificate.load(revoked_cert))
    assert refused(signed_envelope(revoked), store) == errors.CERTIFICATE_REVOKED
    kept = Signer.create(PrivateKey.load(good_key), Certificate.load(good_cert))
    assert rdns(check(signed_envelope(kept), store).certificate.subject) == participant("kept")


def test_trusted_certificate_of_another_participant_is_sender_mismatch(demo_keys, trust):
    """The lab's valid, trusted signature is refused on a message that claims to come from the gateway."""
    doc = signed_envelope(make_signer(demo_keys, "lab"))
    gateway_certs = [Certificate.load(demo_keys / f"gateway-{t}.pem") for t in ("gost2012-256", "gost2012-512", "rsa")]
    assert refused(doc, trust, signers=gateway_certs) == errors.CERTIFICATE_SENDER_MISMATCH
    verified = check(doc, trust, signers=[Certificate.load(demo_keys / "lab-gost2012-256.pem")])
    assert rdns(verified.certificate.subject) == participant("lab")


def test_reference_to_an_absent_id(gost, trust):
    """When the referenced Id no longer exists in the document (the Id attribute was renamed) nothing is verified."""
    doc = signed_envelope(gost)
    doc.find("zl:SenderProvidedData", NS).set("Id", "SPD-2")
    assert refused(doc, trust, expected=None) == errors.SIGNATURE_REFERENCE_MISSING


def test_duplicate_id_is_signature_wrapping(gost, trust):
    """Classic wrapping: the signed original is hidden elsewhere, a forged element with the same Id takes its place."""
    doc = signed_envelope(gost)
    original = doc.find("zl:SenderProvidedData", NS)
    hidden = etree.SubElement(doc.find("zl:Header", NS), f"{{{ZL}}}Extension")
    hidden.append(copy.deepcopy(original))
    original.find(".//{urn://zdravlink/lab/1.0}Value").text = "9.9"
    assert refused(doc, trust) == errors.SIGNATURE_WRAPPING
    assert refused(doc, trust, expected=None) == errors.SIGNATURE_WRAPPING


def test_valid_signature_over_another_element_is_signature_wrapping(gost, trust):
    """A valid signature over element A does not vouch for element B that the caller will act on."""
    doc = signed_envelope(gost)
    check(doc, trust, expected=doc.find("zl:SenderProvidedData", NS))
    header = doc.find("zl:Header", NS)
    assert refused(doc, trust, expected=header) == errors.SIGNATURE_WRAPPING
    check(doc, trust, expected=doc.find(".//{urn://zdravlink/lab/1.0}Patient"))  # inside the signed element: covered


def test_signature_over_a_part_does_not_cover_the_whole(gost, trust):
    """A signature over a child of the expected element covers only part of it and is refused."""
    doc = etree.fromstring(ENVELOPE)
    result = doc.find(".//{urn://zdravlink/lab/1.0}Result")
    result.set("Id", "R-1")
    doc.find("zl:GatewaySignature", NS).append(sign(result, gost))
    doc = reparse(doc)
    check(doc, trust, expected=doc.find(".//{urn://zdravlink/lab/1.0}Result"))
    assert refused(doc, trust) == errors.SIGNATURE_WRAPPING


@pytest.mark.parametrize("path, uri", [
    ("ds:SignedInfo/ds:SignatureMethod", "http://www.w3.org/2000/09/xmldsig#rsa-sha1"),
    ("ds:SignedInfo/ds:SignatureMethod", "urn:ietf:params:xml:ns:cpxmlsec:algorithms:gostr34102001-gostr3411"),
    ("ds:SignedInfo/ds:SignatureMethod", "urn:example:made-up"),
    ("ds:SignedInfo/ds:Reference/ds:DigestMethod", "http://www.w3.org/2000/09/xmldsig#sha1"),
    ("ds:SignedInfo/ds:CanonicalizationMethod", "http://www.w3.org/TR/2001/REC-xml-c14n-20010315"),
], ids=["rsa-sha1", "gost2001", "made-up", "digest-sha1", "inclusive-c14n"])
def test_unknown_algorithm_is_unsupported(gost, trust, path, uri):
    """Signature, digest and canonicalisation methods outside the supported set are refused by name."""
    doc = signed_envelope(gost)
    sig_of(doc).find(path, NS).set("Algorithm", uri)
    assert refused(doc, trust) == errors.SIGNATURE_ALGORITHM_UNSUPPORTED


def _remove(doc: etree._Element, path: str) -> None:
    el = sig_of(doc).find(path, NS)
    el.getparent().remove(el)


def _set_text(path: str, text: str):
    return lambda doc: setattr(sig_of(doc).find(path, NS), "text", text)


@pytest.mark.parametrize("damage", [
    lambda doc: _remove(doc, "ds:SignedInfo"),
    lambda doc: _remove(doc, "ds:SignatureValue"),
    lambda doc: _remove(doc, "ds:SignedInfo/ds:Reference"),
    lambda doc: _remove(doc, "ds:SignedInfo/ds:Reference/ds:DigestValue"),
    _set_text("ds:SignatureValue", "not*base64!"),
    _set_text("ds:SignedInfo/ds:Reference/ds:DigestValue", "%%%"),
    _set_text("ds:KeyInfo/ds:X509Data/ds:X509Certificate", base64.b64encode(b"not a certificate").decode()),
    lambda doc: sig_of(doc).find("ds:SignedInfo/ds:Reference", NS).set("URI", "http://evil.example/doc.xml"),
    lambda doc: sig_of(doc).find("ds:SignedInfo/ds:Reference/ds:Transforms/ds:Transform", NS).set(
        "Algorithm", "http://www.w3.org/2000/09/xmldsig#enveloped-signature"),
], ids=["no-SignedInfo", "no-SignatureValue", "no-Reference", "no-DigestValue", "SignatureValue-not-base64",
        "DigestValue-not-base64", "certificate-garbage", "external-URI", "unsupported-transform"])
def test_malformed_signature(gost, trust, damage):
    """Structurally broken signatures are refused as malformed, before any cryptography."""
    doc = signed_envelope(gost)
    damage(doc)
    assert refused(doc, trust) == errors.SIGNATURE_MALFORMED


def test_not_a_signature_element_is_malformed(gost, trust):
    """Passing some other element as the signature is refused, not crashed on."""
    doc = signed_envelope(gost)
    with pytest.raises(SignatureError) as info:
        verify(doc.find("zl:Header", NS), document=doc, trust=trust)
    assert info.value.code == errors.SIGNATURE_MALFORMED


def test_certificate_codes_are_the_trust_failures():
    """CERTIFICATE_CODES (mapped to HTTP 403) are exactly the certificate-side refusals."""
    assert errors.CERTIFICATE_CODES == {errors.CERTIFICATE_UNTRUSTED, errors.CERTIFICATE_EXPIRED,
                                        errors.CERTIFICATE_NOT_YET_VALID, errors.CERTIFICATE_REVOKED,
                                        errors.CERTIFICATE_SENDER_MISMATCH}
    assert errors.SIGNATURE_DIGEST_MISMATCH not in errors.CERTIFICATE_CODES


def test_signer_refuses_a_key_that_is_not_the_certificates(demo_keys):
    """Pairing the lab's key with the gateway's certificate is a KeyFileError, before anything is signed."""
    with pytest.raises(KeyFileError, match="does not belong"):
        Signer.create(PrivateKey.load(demo_keys / "lab-gost2012-256.key"),
                      Certificate.load(demo_keys / "gateway-gost2012-256.pem"))


def test_signer_refuses_an_algorithm_for_another_key_type(demo_keys):
    """A GOST-256 key cannot be used with GOST-512 or RSA signature methods."""
    key, cert = PrivateKey.load(demo_keys / "gateway-gost2012-256.key"), Certificate.load(demo_keys / "gateway-gost2012-256.pem")
    for algorithm in ("gost2012-512", "rsa-sha256"):
        with pytest.raises(KeyFileError, match="needs a"):
            Signer.create(key, cert, algorithm)
    assert Signer.create(key, cert).algorithm.name == "gost2012-256"


# ---- 4. the SMEV-transform shortcut ----------------------------------------------

def _exc_c14n(el: etree._Element) -> bytes:
    return etree.tostring(el, method="c14n", exclusive=True)


def _assert_shortcut(el: etree._Element) -> None:
    direct = smev_transform.transform(el)
    via_c14n = smev_transform.transform(etree.fromstring(_exc_c14n(el)))
    assert direct == via_c14n


@pytest.mark.parametrize("vector", SMEV_CASES, ids=[v["name"] for v in SMEV_CASES])
def test_smev_shortcut_agrees_with_exc_c14n_then_transform_on_vectors(vector):
    """xmldsig digests transform(element) instead of transform(exc-c14n(element)): the same octets for every vector,
    for the root and for every element inside it (each is a possible reference target)."""
    root = etree.fromstring((SMEV_VECTORS / vector["input_file"]).read_bytes())
    for el in root.iter(etree.Element):
        if el.tag.startswith("{") and all(e.tag.startswith("{") for e in el.iter(etree.Element)):
            _assert_shortcut(el)


GENERATED = [
    # inherited namespaces, xml:lang and xml:space on an ancestor, comments and PIs with tails
    ('<a:r xmlns:a="urn:a" xmlns:b="urn:b" xml:lang="ru" xml:space="preserve"><a:s Id="x" b:k="1">'
     '<a:t>1</a:t><!--c-->t<?pi x?>u<b:u/></a:s>tail</a:r>', "{urn:a}s"),
    # default namespaces, character references for CR and TAB in text and attributes, CDATA
    ('<r xmlns="urn:d"><s xmlns:q="urn:q" q:a="1" b="&#xD;&#9;x">&#xD;<![CDATA[<&>]]>'
     '<t xmlns="urn:e" c="&quot;&apos;"> \n </t></s></r>', "{urn:d}s"),
    # unused declarations, a QName in content, attributes of several namespaces out of order
    ('<a:r xmlns:a="urn:a" xmlns:unused="urn:u" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
     '<a:s xsi:type="a:T" z="1" a:y="2" xmlns:c="urn:c" c:x="3">Ё &amp; ]]&gt; \u2028</a:s></a:r>', "{urn:a}s"),
]


@pytest.mark.parametrize("xml, tag", GENERATED, ids=["inherited", "default-ns-charrefs", "unused-ns-qname"])
def test_smev_shortcut_agrees_with_exc_c14n_then_transform_on_made_up_documents(xml, tag):
    """The same agreement for referenced elements whose context exc-c14n would have to deal with."""
    _assert_shortcut(etree.fromstring(xml).iter(tag).__next__())


def test_smev_shortcut_agrees_on_built_trees_with_raw_control_characters():
    """A tree built in code (no parser normalisation): CR, TAB and LF in text and attribute values."""
    el = etree.Element("{urn:a}r", nsmap={"a": "urn:a"})
    el.text = "x\r\ny\t"
    el.set("t", "a\tb\nc\rd")
    child = etree.SubElement(el, "{urn:b}c", nsmap={None: "urn:b"})
    child.tail = "\r"
    _assert_shortcut(el)
    _assert_shortcut(etree.fromstring(ENVELOPE).find("zl:SenderProvidedData", NS))


# No "&" in namespace URIs: libxml2's C14N writes them unescaped (xmlns:p="x&y"), which cannot be parsed back
# for the comparison (the transform itself escapes them).
_URIS = st.sampled_from(["urn:a", "urn:b", "http://x/y?q=1;r=2#f", "urn:c"])
_LOCAL = st.sampled_from(["a", "b", "Id", "long-name.x", "Ж"])
_TEXT = st.text(st.sampled_from(list("ab Ж&<>\"'\n\t\r]")), max_size=6)


def _escaped(text: str) -> str:
    """``text`` as XML source; CR, TAB and LF as character references so that they survive parsing."""
    return "".join({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "\r": "&#13;", "\t": "&#9;",
                    "\n": "&#10;"}.get(c, c) for c in text)


@st.composite
def _xml(draw, depth: int = 0) -> str:
    """XML source of one element: default or prefixed namespaces (redeclared below), qualified and plain
    attributes, text, and children that are elements, comments or PIs, each with a tail."""
    prefix = draw(st.sampled_from([None, "p", "q"]))
    name = f"{prefix}:{draw(_LOCAL)}" if prefix else draw(_LOCAL)
    parts = [f'<{name} xmlns{":" + prefix if prefix else ""}="{_escaped(draw(_URIS))}"']
    for i, (uri, local) in enumerate(draw(st.lists(st.tuples(st.none() | _URIS, _LOCAL), max_size=3, unique=True))):
        if uri is None:
            parts.append(f' {local}="{_escaped(draw(_TEXT))}"')
        else:
            parts.append(f' xmlns:a{depth}x{i}="{_escaped(uri)}" a{depth}x{i}:{local}="{_escaped(draw(_TEXT))}"')
    parts.append(">" + _escaped(draw(_TEXT)))
    for _ in range(draw(st.integers(0, 3 if depth < 3 else 0))):
        kind = draw(st.sampled_from(["element", "element", "comment", "pi"]))
        parts.append(draw(_xml(depth + 1)) if kind == "element" else "<!--c-->" if kind == "comment" else "<?pi x?>")
        parts.append(_escaped(draw(_TEXT)))
    return "".join(parts) + f"</{name}>"


@settings(max_examples=150, deadline=None)
@given(_xml())
def test_smev_shortcut_agrees_on_generated_documents(xml):
    """Generated documents (nested and redeclared namespaces, comments and PIs with tails, CR/TAB/LF, & < > quotes),
    each of their elements as a reference target."""
    tree = etree.fromstring(xml.encode("utf-8"))
    for el in tree.iter(etree.Element):
        _assert_shortcut(el)


# ---- 5. why SMEV uses the transform -----------------------------------------------

def _rebuild(el: etree._Element, parent: etree._Element | None = None,
             nsmap: dict[str | None, str] | None = None) -> etree._Element:
    """A copy of ``el`` built node by node under ``nsmap``'s prefixes (as another XML library would write it)."""
    out = etree.Element(el.tag, nsmap=nsmap) if parent is None else etree.SubElement(parent, el.tag)
    for name, value in el.attrib.items():
        out.set(name, value)
    out.text, out.tail = el.text, el.tail
    for child in el:
        if isinstance(child.tag, str):
            _rebuild(child, out)
        else:
            out.append(copy.copy(child))  # comments keep their tails
    return out


def _reprefixed_document(doc: etree._Element) -> etree._Element:
    """The envelope re-written with other prefixes: env: for zl:, the lab namespace as default, ext: for the
    default namespace of Extra. ds: is kept, since SignedInfo itself is only exc-c14n'd."""
    out = reparse(_rebuild(doc, nsmap={"env": ZL, None: "urn://zdravlink/lab/1.0", "ds": DS,
                                       "meta": "urn://zdravlink/meta/1.0", "ext": "urn://zdravlink/extra"}))
    text = etree.tostring(out.find("zl:SenderProvidedData", NS), encoding="unicode")
    assert text.startswith("<env:SenderProvidedData") and "<Result" in text and "<ext:Item" in text  # really renamed
    return out


def test_prefix_renaming_survives_with_the_smev_transform(gost, trust):
    """With exc-c14n + SMEV transform, a re-serialisation with other prefixes still verifies."""
    doc = _reprefixed_document(signed_envelope(gost, smev=True))
    assert check(doc, trust).algorithm.name == "gost2012-256"


def test_prefix_renaming_breaks_exc_c14n_alone(gost, trust):
    """With exc-c14n alone the same re-serialisation changes the octets: DIGEST_MISMATCH. This is why SMEV adds its transform."""
    doc = _reprefixed_document(signed_envelope(gost, smev=False))
    assert refused(doc, trust) == errors.SIGNATURE_DIGEST_MISMATCH


def test_whitespace_reindent_survives_only_with_the_smev_transform(gost, trust):
    """Pretty-printing adds whitespace-only text: ignored by the SMEV transform, significant to exc-c14n."""
    for smev, outcome in ((True, None), (False, errors.SIGNATURE_DIGEST_MISMATCH)):
        doc = signed_envelope(gost, smev=smev, xml=ENVELOPE.replace("\n", "").replace("  ", ""))
        etree.indent(doc.find("zl:SenderProvidedData", NS))
        doc = reparse(doc)
        if outcome is None:
            check(doc, trust)
        else:
            assert refused(doc, trust) == outcome


# ---- 6. PKCS#12, DER and encrypted keys ------------------------------------------

@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_pkcs12_key_and_certificate_sign_and_verify(tmp_path, demo_keys, trust, algorithm):
    """A .p12 exported by openssl (GOST via the engine) gives the key and certificate; wrong password is refused."""
    key, cert = key_files(demo_keys, "gateway", algorithm)
    p12 = tmp_path / "gateway.p12"
    openssl("pkcs12", "-export", "-engine", "gost", "-inkey", key, "-in", cert, "-passout", "pass:пароль-1",
            "-out", p12)
    signer = Signer.create(PrivateKey.load(p12, "пароль-1"), Certificate.load(p12, "пароль-1"))
    assert signer.certificate == Certificate.load(cert)
    assert signer.algorithm.name == algorithm
    assert check(signed_envelope(signer), trust).algorithm.name == algorithm
    for password in ("wrong", None):
        with pytest.raises(KeyFileError, match="PKCS#12"):
            PrivateKey.load(p12, password)
        with pytest.raises(KeyFileError, match="PKCS#12"):
            Certificate.load(p12, password)


def test_pkcs12_without_a_password_opens_without_one(tmp_path, demo_keys):
    """A .p12 exported with an empty password opens with password=None, and not with some other password."""
    p12 = tmp_path / "open.pfx"
    openssl("pkcs12", "-export", "-engine", "gost", "-inkey", demo_keys / "gateway-gost2012-256.key",
            "-in", demo_keys / "gateway-gost2012-256.pem", "-passout", "pass:", "-out", p12)
    assert PrivateKey.load(p12).matches(Certificate.load(p12))
    with pytest.raises(KeyFileError):
        Certificate.load(p12, "x")


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_der_certificate_loads_like_pem(tmp_path, demo_keys, algorithm):
    """`openssl x509 -outform DER` output loads, and is the same certificate as its PEM."""
    pem = key_files(demo_keys, "gateway", algorithm)[1]
    der = tmp_path / "gateway.der"
    openssl("x509", "-engine", "gost", "-in", pem, "-outform", "DER", "-out", der)
    loaded = Certificate.load(der)
    assert loaded == Certificate.load(pem)
    assert loaded.der == der.read_bytes()
    assert loaded.key_type == KEY_TYPE[algorithm]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_encrypted_pem_key_needs_its_password(tmp_path, demo_keys, algorithm):
    """An AES-encrypted PEM key opens with its password only."""
    key, cert = key_files(demo_keys, "gateway", algorithm)
    enc = tmp_path / "enc.key"
    openssl("pkey", "-engine", "gost", "-in", key, "-aes256", "-passout", "pass:s3cret", "-out", enc)
    assert PrivateKey.load(enc, "s3cret").matches(Certificate.load(cert))
    for password in ("wrong", None):
        with pytest.raises(KeyFileError, match="enc.key"):
            PrivateKey.load(enc, password)


def test_unreadable_files_are_key_file_errors(tmp_path):
    """A missing file and a file that is not a certificate name the file in a KeyFileError."""
    with pytest.raises(KeyFileError, match="missing.pem"):
        Certificate.load(tmp_path / "missing.pem")
    (tmp_path / "junk.pem").write_text("hello")
    with pytest.raises(KeyFileError, match="junk.pem"):
        Certificate.load(tmp_path / "junk.pem")
    with pytest.raises(KeyFileError, match="junk.pem"):
        PrivateKey.load(tmp_path / "junk.pem")


# ---- 7. the public-API example ----------------------------------------------------

def _docstring_example() -> str:
    doc = signing.__doc__
    start = doc.index("::\n") + 3
    end = doc.index("``verify`` raises")
    lines = doc[start:end].splitlines()
    indent = min(len(line) - len(line.lstrip()) for line in lines if line.strip())
    return "\n".join(line[indent:] for line in lines)


def test_public_api_docstring_example_runs_as_written(tmp_path, demo_keys, monkeypatch, capsys):
    """The example in signing/__init__.py, executed verbatim on a delivered zl:Envelope, verifies and prints."""
    work = tmp_path / "recipient"
    shutil.copytree(demo_keys / "trust", work / "trust")
    shutil.copyfile(demo_keys / "gateway-gost2012-256.pem", work / "zdravlink-gateway.pem")
    monkeypatch.chdir(work)

    envelope = etree.fromstring(ENVELOPE)
    envelope.find("zl:GatewaySignature", NS).append(sign(envelope.find("zl:SenderProvidedData", NS),
                                                         make_signer(demo_keys, "gateway")))
    body = etree.tostring(envelope, encoding="utf-8")

    code = _docstring_example()
    assert "verify(" in code and "TrustStore.from_directory" in code
    namespace = {"body": body}
    exec(compile(code, "signing.__doc__", "exec"), namespace)
    printed = capsys.readouterr().out
    assert printed == f"{Certificate.load(demo_keys / 'gateway-gost2012-256.pem').subject} gost2012-256\n"
    assert "CN=gateway" in printed
    assert isinstance(namespace["verified"], signing.Verified)

    # and the same example refuses a tampered body, with a code
    namespace = {"body": body.replace("Иванов".encode(), "Петров".encode())}
    with pytest.raises(SignatureError) as info:
        exec(compile(code, "signing.__doc__", "exec"), namespace)
    assert info.value.code == errors.SIGNATURE_DIGEST_MISMATCH
