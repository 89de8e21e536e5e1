"""Our signatures against independent implementations, run as external commands.

* RSA XML-DSig both ways with the ``xmlsec1`` command (libxmlsec1, not our code path:
  it resolves the reference, canonicalises and checks the certificate itself).
* GOST R 34.10-2012 (256 and 512) both ways with ``openssl dgst`` and the GOST engine
  over the canonical SignedInfo octets, and DigestValue against ``openssl dgst -binary``
  of the reference octets. xmlsec1 cannot load GOST keys, hence the split.

Nothing is skipped: a missing ``xmlsec1`` or ``openssl`` (or GOST engine) fails loudly.
"""
from __future__ import annotations

import base64
import shutil
import subprocess
from pathlib import Path

import pytest
from lxml import etree

from signing import Certificate, PrivateKey, SignatureError, Signer, TrustStore, errors, sign, transform, verify

DS = "http://www.w3.org/2000/09/xmldsig#"
NS = {"ds": DS}
MD = {"gost2012-256": "md_gost12_256", "gost2012-512": "md_gost12_512"}


def run(tool: str, *args: str | Path, check: bool = True) -> subprocess.CompletedProcess:
    exe = shutil.which(tool)
    assert exe, f"the {tool} command is missing (scripts/setup.sh installs it)"
    proc = subprocess.run([exe, *map(str, args)], capture_output=True, text=True)
    if check:
        assert proc.returncode == 0, f"{tool} {args[0]}: {proc.stderr or proc.stdout}"
    return proc


# ---- RSA with xmlsec1 ------------------------------------------------------------

DOCUMENT = ('<root xmlns:p="urn:p"><data Id="D1"><p:item a="x &amp; &quot;y&quot;">Привет &amp; &lt;мир&gt;</p:item>'
            '<p:n xmlns:q="urn:q" q:z="1"> 42 </p:n></data></root>')
TEMPLATE = f"""<?xml version="1.0" encoding="UTF-8"?>
{DOCUMENT[:-len('</root>')]}<ds:Signature xmlns:ds="{DS}"><ds:SignedInfo>\
<ds:CanonicalizationMethod Algorithm="http://www.w3.org/2001/10/xml-exc-c14n#"/>\
<ds:SignatureMethod Algorithm="http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"/>\
<ds:Reference URI="#D1"><ds:Transforms><ds:Transform Algorithm="http://www.w3.org/2001/10/xml-exc-c14n#"/></ds:Transforms>\
<ds:DigestMethod Algorithm="http://www.w3.org/2001/04/xmlenc#sha256"/><ds:DigestValue/></ds:Reference></ds:SignedInfo>\
<ds:SignatureValue/><ds:KeyInfo><ds:X509Data/></ds:KeyInfo></ds:Signature></root>"""


@pytest.fixture
def rsa(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed RSA key and certificate made by the openssl command; the certificate is the trust anchor."""
    key, cert = tmp_path / "rsa.key", tmp_path / "rsa.pem"
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "2",
        "-subj", "/O=Interop/CN=xmlsec interop")
    return key, cert


def xmlsec_verify(file: Path, cert: Path) -> subprocess.CompletedProcess:
    return run("xmlsec1", "--verify", "--trusted-pem", cert, "--id-attr:Id", "data", file, check=False)


def test_xmlsec1_rsa_signature_verifies_with_signing_verify(tmp_path, rsa):
    """A detached exc-c14n/rsa-sha256 signature made by xmlsec1 verifies with signing.verify."""
    key, cert = rsa
    (tmp_path / "tmpl.xml").write_text(TEMPLATE, encoding="utf-8")
    run("xmlsec1", "--sign", "--privkey-pem", f"{key},{cert}", "--id-attr:Id", "data",
        "--output", tmp_path / "signed.xml", tmp_path / "tmpl.xml")
    doc = etree.parse(str(tmp_path / "signed.xml")).getroot()
    sig = doc.find("ds:Signature", NS)
    assert sig.findtext("ds:SignatureValue", namespaces=NS).strip()  # xmlsec1 really filled the template

    verified = verify(sig, document=doc, expected=doc.find("data"), trust=TrustStore([Certificate.load(cert)]),
                      signers=[Certificate.load(cert)])
    assert verified.algorithm.name == "rsa-sha256"
    assert verified.certificate == Certificate.load(cert)

    doc.find("data/{urn:p}n").text = " 43 "
    with pytest.raises(SignatureError) as info:
        verify(sig, document=doc, trust=TrustStore([Certificate.load(cert)]))
    assert info.value.code == errors.SIGNATURE_DIGEST_MISMATCH


def _our_rsa_signed(key: Path, cert: Path) -> etree._Element:
    doc = etree.fromstring(DOCUMENT)
    doc.append(sign(doc.find("data"), Signer.create(PrivateKey.load(key), Certificate.load(cert)), smev=False))
    return doc


def test_our_rsa_signature_verifies_with_xmlsec1(tmp_path, rsa):
    """A signature from sign(..., smev=False) passes `xmlsec1 --verify` against the trusted certificate."""
    doc = _our_rsa_signed(*rsa)
    out = tmp_path / "ours.xml"
    out.write_bytes(etree.tostring(doc, xml_declaration=True, encoding="utf-8"))
    proc = xmlsec_verify(out, rsa[1])
    assert proc.returncode == 0, proc.stderr
    assert "OK" in proc.stderr


@pytest.mark.parametrize("tamper", ["content", "signature-value"])
def test_xmlsec1_rejects_our_rsa_signature_after_tampering(tmp_path, rsa, tamper):
    """The same check fails once the signed content or SignatureValue is changed: the previous test can fail."""
    doc = _our_rsa_signed(*rsa)
    if tamper == "content":
        doc.find("data/{urn:p}item").text = "Пока"
    else:
        el = doc.find("ds:Signature/ds:SignatureValue", NS)
        raw = bytearray(base64.b64decode(el.text))
        raw[10] ^= 0x40
        el.text = base64.b64encode(bytes(raw)).decode()
    out = tmp_path / "tampered.xml"
    out.write_bytes(etree.tostring(doc, xml_declaration=True, encoding="utf-8"))
    proc = xmlsec_verify(out, rsa[1])
    assert proc.returncode != 0
    assert "FAIL" in proc.stderr


# ---- GOST with openssl dgst and the GOST engine --------------------------------------

ENVELOPE = ('<zl:Envelope xmlns:zl="urn://zdravlink/envelope/1.0">'
            '<zl:SenderProvidedData Id="SPD-1"><lab:Result xmlns:lab="urn://zdravlink/lab/1.0" code="a&amp;b">'
            '\n  <lab:Patient>Иванов &lt;И.И.&gt; "тест"</lab:Patient>\n</lab:Result></zl:SenderProvidedData>'
            '<zl:GatewaySignature/></zl:Envelope>')


def _gost_signed(demo_keys: Path, key_type: str) -> tuple[etree._Element, etree._Element]:
    signer = Signer.create(PrivateKey.load(demo_keys / f"gateway-{key_type}.key"),
                           Certificate.load(demo_keys / f"gateway-{key_type}.pem"))
    doc = etree.fromstring(ENVELOPE)
    doc[1].append(sign(doc[0], signer))
    doc = etree.fromstring(etree.tostring(doc))
    return doc, doc.find(".//ds:Signature", NS)


def _signed_info_octets(sig: etree._Element) -> bytes:
    return etree.tostring(sig.find("ds:SignedInfo", NS), method="c14n", exclusive=True)


def _public_key(demo_keys: Path, key_type: str, tmp_path: Path) -> Path:
    pub = tmp_path / "pub.pem"
    pub.write_text(run("openssl", "x509", "-engine", "gost", "-pubkey", "-noout",
                       "-in", demo_keys / f"gateway-{key_type}.pem").stdout)
    return pub


def _openssl_verify(md: str, pub: Path, signature: Path, data: Path) -> subprocess.CompletedProcess:
    return run("openssl", "dgst", "-engine", "gost", f"-{md}", "-verify", pub, "-signature", signature, data,
               check=False)


@pytest.mark.parametrize("key_type", ["gost2012-256", "gost2012-512"])
def test_our_gost_signature_value_verifies_with_openssl(demo_keys, tmp_path, key_type):
    """SignatureValue over exc-c14n(SignedInfo) is what OpenSSL's GOST engine accepts (s‖r, big-endian halves)."""
    _, sig = _gost_signed(demo_keys, key_type)
    (tmp_path / "si.bin").write_bytes(_signed_info_octets(sig))
    (tmp_path / "sig.bin").write_bytes(base64.b64decode(sig.findtext("ds:SignatureValue", namespaces=NS)))
    assert (tmp_path / "sig.bin").stat().st_size == {"gost2012-256": 64, "gost2012-512": 128}[key_type]
    pub = _public_key(demo_keys, key_type, tmp_path)

    proc = _openssl_verify(MD[key_type], pub, tmp_path / "sig.bin", tmp_path / "si.bin")
    assert proc.returncode == 0 and "Verified OK" in proc.stdout, proc.stdout + proc.stderr

    (tmp_path / "si.bin").write_bytes(_signed_info_octets(sig).replace(b"SPD-1", b"SPD-2"))
    proc = _openssl_verify(MD[key_type], pub, tmp_path / "sig.bin", tmp_path / "si.bin")
    assert proc.returncode != 0 and "Verification failure" in proc.stdout + proc.stderr


@pytest.mark.parametrize("key_type", ["gost2012-256", "gost2012-512"])
def test_openssl_gost_signature_verifies_with_signing_verify(demo_keys, tmp_path, key_type):
    """A SignatureValue made by `openssl dgst -sign` over the SignedInfo octets verifies with signing.verify."""
    doc, sig = _gost_signed(demo_keys, key_type)
    (tmp_path / "si.bin").write_bytes(_signed_info_octets(sig))
    run("openssl", "dgst", "-engine", "gost", f"-{MD[key_type]}", "-sign", demo_keys / f"gateway-{key_type}.key",
        "-out", tmp_path / "sig.bin", tmp_path / "si.bin")
    theirs = (tmp_path / "sig.bin").read_bytes()
    value = sig.find("ds:SignatureValue", NS)
    assert base64.b64decode(value.text) != theirs  # a fresh random k: really OpenSSL's signature, not ours
    value.text = base64.b64encode(theirs).decode()

    trust = TrustStore.from_directory(demo_keys / "trust")
    verified = verify(sig, document=doc, expected=doc[0], trust=trust)
    assert verified.algorithm.name == key_type

    value.text = base64.b64encode(theirs[::-1]).decode()
    with pytest.raises(SignatureError) as info:
        verify(sig, document=doc, expected=doc[0], trust=trust)
    assert info.value.code == errors.SIGNATURE_INVALID


@pytest.mark.parametrize("key_type", ["gost2012-256", "gost2012-512"])
def test_digest_value_matches_openssl_streebog_of_the_reference_octets(demo_keys, tmp_path, key_type):
    """DigestValue is `openssl dgst -binary` (Streebog, output byte order as is) of exc-c14n + SMEV transform output."""
    doc, sig = _gost_signed(demo_keys, key_type)
    octets = transform(doc[0])
    assert octets.startswith(b'<ns1:SenderProvidedData xmlns:ns1="urn://zdravlink/envelope/1.0" Id="SPD-1">')
    assert b"\n" not in octets  # whitespace-only text dropped by the SMEV transform
    (tmp_path / "ref.bin").write_bytes(octets)
    proc = subprocess.run([shutil.which("openssl") or "openssl", "dgst", "-engine", "gost", f"-{MD[key_type]}",
                           "-binary", str(tmp_path / "ref.bin")], capture_output=True)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout) == {"gost2012-256": 32, "gost2012-512": 64}[key_type]
    assert base64.b64decode(sig.findtext("ds:SignedInfo/ds:Reference/ds:DigestValue", namespaces=NS)) == proc.stdout
