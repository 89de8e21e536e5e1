"""Detached CMS signatures over files (signing.cms): what each refusal is, by its code."""
from __future__ import annotations

from pathlib import Path

import pytest

from demo.ca import create_demo_keys, demo_signer
from signing import Certificate, SignatureError, TrustStore, errors
from signing.cms import sign_detached, verify_detached

DATA = "Реестр счетов".encode("cp1251") * 50


@pytest.fixture(scope="module")
def others(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second CA the gateway does not trust, with its own clinic."""
    out = tmp_path_factory.mktemp("other-ca")
    create_demo_keys(out, ["clinic"], ("gost2012-256",))
    return out


def code_of(data: bytes, signature: bytes, trust: TrustStore, signers: list[Certificate] | None = None) -> str:
    with pytest.raises(SignatureError) as exc:
        verify_detached(data, signature, trust=trust, signers=signers)
    return exc.value.code


@pytest.mark.parametrize("key_type", ["gost2012-256", "gost2012-512", "rsa"])
def test_a_signature_verifies_over_exactly_the_bytes_it_signed(demo_keys: Path, key_type: str) -> None:
    trust = TrustStore.from_directory(demo_keys / "trust")
    signer = demo_signer(demo_keys, "gateway", key_type)
    signature = sign_detached(DATA, signer)
    assert DATA not in signature  # detached
    verified = verify_detached(DATA, signature, trust=trust, signers=[signer.certificate])
    assert verified.certificate == signer.certificate and verified.algorithm == signer.algorithm
    assert code_of(DATA + b" ", signature, trust) == errors.SIGNATURE_INVALID


def test_refusals_carry_their_codes(demo_keys: Path, others: Path) -> None:
    trust = TrustStore.from_directory(demo_keys / "trust")
    signature = sign_detached(DATA, demo_signer(demo_keys, "clinic"))
    assert code_of(DATA, b"not DER at all", trust) == errors.SIGNATURE_MALFORMED
    assert code_of(DATA, signature[:-10], trust) == errors.SIGNATURE_MALFORMED
    assert code_of(DATA, signature, trust, [Certificate.load(demo_keys / "gateway-gost2012-256.pem")]) \
        == errors.CERTIFICATE_SENDER_MISMATCH
    untrusted = sign_detached(DATA, demo_signer(others, "clinic"))
    assert code_of(DATA, untrusted, trust) == errors.CERTIFICATE_UNTRUSTED
