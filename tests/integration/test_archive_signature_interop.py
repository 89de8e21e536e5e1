"""The register archive's detached signature (``.sig``, CMS) against the ``openssl cms`` command, both ways.

``openssl cms`` is an independent CMS implementation: it parses our SignedData, finds the
signer's certificate inside, recomputes the digest over the archive and checks the chain
to the demo CA; GOST R 34.10-2012 (256 and 512) through the GOST engine, RSA without it.
And a signature ``openssl cms -sign`` made verifies with ours. Nothing is skipped.
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from demo.ca import demo_signer
from gateway.oms.archive import pack
from signing import Certificate, PrivateKey, SignatureError, Signer, TrustStore, errors
from signing.cms import sign_detached, verify_detached
from tests.integration.test_signing_interop import run

KEY_TYPES = ("gost2012-256", "gost2012-512", "rsa")
DIGEST_OID = {"gost2012-256": "1.2.643.7.1.1.2.2", "gost2012-512": "1.2.643.7.1.1.2.3"}


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("archive") / "HM770001S77001_24101.zip"
    path.write_bytes(pack([("HM770001S77001_24101.xml", "<ZL_LIST>Счёт</ZL_LIST>".encode("cp1251")),
                           ("LM770001S77001_24101.xml", "<PERS_LIST/>".encode("cp1251"))], dt.date(2024, 11, 5)))
    return path


@pytest.fixture(scope="module")
def rsa_by_openssl(tmp_path_factory: pytest.TempPathFactory) -> tuple[Signer, Path]:
    """An RSA key and self-signed certificate made by the openssl command: the RSA check needs no GOST at all
    (the demo CA's own key is GOST, which openssl reads only with the engine)."""
    folder = tmp_path_factory.mktemp("rsa")
    key, cert = folder / "rsa.key", folder / "rsa.pem"
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "2",
        "-subj", "/O=Interop/CN=archive signer")
    return Signer.create(PrivateKey.load(key), Certificate.load(cert)), cert


def openssl_verify(archive: Path, sig: Path, ca: Path, key_type: str) -> tuple[int, str]:
    engine = ["-engine", "gost"] if key_type != "rsa" else []
    proc = run("openssl", "cms", "-verify", *engine, "-binary", "-inform", "DER", "-in", sig, "-content", archive,
               "-CAfile", ca, "-purpose", "any", "-out", "/dev/null", check=False)
    return proc.returncode, proc.stderr


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_our_signature_verifies_with_openssl_and_fails_on_a_changed_archive(
        demo_keys: Path, archive: Path, tmp_path: Path, key_type: str, rsa_by_openssl: tuple[Signer, Path]) -> None:
    if key_type == "rsa":
        signer, ca = rsa_by_openssl
    else:
        signer, ca = demo_signer(demo_keys, "gateway", key_type), demo_keys / "trust" / "zdravlink-demo-ca.pem"
    sig = tmp_path / f"{archive.name}.sig"
    sig.write_bytes(sign_detached(archive.read_bytes(), signer))
    code, stderr = openssl_verify(archive, sig, ca, key_type)
    assert code == 0 and "Verification successful" in stderr, stderr
    printed = run("openssl", "cms", "-cmsout", "-print", *(["-engine", "gost"] if key_type != "rsa" else []),
                  "-inform", "DER", "-in", sig).stdout
    assert "eContent: <ABSENT>" in printed  # detached: the archive is not inside
    if key_type in DIGEST_OID:  # Streebog of the length the key's algorithm needs
        assert f"({DIGEST_OID[key_type]})" in printed, printed[:2000]
    changed = tmp_path / archive.name
    changed.write_bytes(archive.read_bytes()[:-1] + bytes([archive.read_bytes()[-1] ^ 1]))
    code, stderr = openssl_verify(changed, sig, ca, key_type)
    assert code != 0 and "verification failure" in stderr.lower(), stderr


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_openssls_signature_verifies_with_ours(demo_keys: Path, archive: Path, tmp_path: Path, key_type: str) -> None:
    sig = tmp_path / "by-openssl.sig"
    engine = ["-engine", "gost"] if key_type != "rsa" else []
    run("openssl", "cms", "-sign", *engine, "-binary", "-outform", "DER", "-in", archive,
        "-signer", demo_keys / f"insurer-{key_type}.pem", "-inkey", demo_keys / f"insurer-{key_type}.key",
        "-out", sig)
    trust = TrustStore.from_directory(demo_keys / "trust")
    insurer = Certificate.load(demo_keys / f"insurer-{key_type}.pem")
    verified = verify_detached(archive.read_bytes(), sig.read_bytes(), trust=trust, signers=[insurer])
    assert verified.certificate == insurer and verified.algorithm.name == (
        "rsa-sha256" if key_type == "rsa" else key_type)
    with pytest.raises(SignatureError) as exc:
        verify_detached(archive.read_bytes(), sig.read_bytes(), trust=trust,
                        signers=[Certificate.load(demo_keys / f"clinic-{key_type}.pem")])
    assert exc.value.code == errors.CERTIFICATE_SENDER_MISMATCH
