"""Detached signatures over raw octets in HTTP headers (signing.detached): what the registries' JSON answers carry."""
from __future__ import annotations

import base64
import datetime as dt
from pathlib import Path

import httpx
import pytest

from demo.ca import create_demo_keys
from demo.ca import demo_signer as signer
from signing import Certificate, SignatureError, TrustStore, errors, sign_octets, verify_octets
from signing.backends import GOST256_SIGNATURE, RSA_SHA256_SIGNATURE
from signing.detached import ALGORITHM_HEADER, CERTIFICATE_HEADER, SIGNATURE_HEADER

BODY = '{"content": {"snils": "11223344595", "lastName": "Иванова"}}'.encode()


@pytest.fixture(scope="module")
def keys(registry_keys: Path) -> Path:
    return registry_keys


@pytest.fixture(scope="module")
def trust(keys: Path) -> TrustStore:
    return TrustStore.from_directory(keys / "trust")




def refused(headers: dict[str, str], trust: TrustStore, signers: list[Certificate] | None, body: bytes = BODY,
            **kw: object) -> str:
    with pytest.raises(SignatureError) as exc:
        verify_octets(body, headers, trust=trust, signers=signers, **kw)
    return exc.value.code


@pytest.mark.parametrize("key_type,uri", [("gost2012-256", GOST256_SIGNATURE), ("rsa", RSA_SHA256_SIGNATURE)])
def test_round_trip(keys: Path, trust: TrustStore, key_type: str, uri: str) -> None:
    frmr = signer(keys, "frmr", key_type)
    headers = sign_octets(BODY, frmr)
    assert set(headers) == {ALGORITHM_HEADER, SIGNATURE_HEADER, CERTIFICATE_HEADER}
    assert headers[ALGORITHM_HEADER] == uri
    assert base64.b64decode(headers[CERTIFICATE_HEADER]) == frmr.certificate.der
    verified = verify_octets(BODY, headers, trust=trust, signers=[frmr.certificate])
    assert verified.certificate == frmr.certificate and verified.algorithm is frmr.algorithm
    assert verified.anchor == trust.anchors[0] and verified.references == ()


def test_header_names_are_matched_without_case_through_httpx(keys: Path, trust: TrustStore) -> None:
    frmr = signer(keys, "frmr")
    wire = httpx.Headers({k.lower(): v for k, v in sign_octets(BODY, frmr).items()})
    assert verify_octets(BODY, wire, trust=trust, signers=[frmr.certificate]).certificate == frmr.certificate


@pytest.mark.parametrize("key_type", ["gost2012-256", "rsa"])
def test_tampered_body_or_value_is_invalid(keys: Path, trust: TrustStore, key_type: str) -> None:
    frmr = signer(keys, "frmr", key_type)
    headers = sign_octets(BODY, frmr)
    altered = BODY.replace("Иванова".encode(), "Петрова".encode())
    assert altered != BODY
    assert refused(headers, trust, [frmr.certificate], body=altered) == errors.SIGNATURE_INVALID
    assert refused(headers, trust, [frmr.certificate], body=BODY + b" ") == errors.SIGNATURE_INVALID
    value = bytearray(base64.b64decode(headers[SIGNATURE_HEADER]))
    value[5] ^= 0x01
    forged = {**headers, SIGNATURE_HEADER: base64.b64encode(bytes(value)).decode()}
    assert refused(forged, trust, [frmr.certificate]) == errors.SIGNATURE_INVALID


def test_a_trusted_signer_who_is_not_the_sender_is_refused(keys: Path, trust: TrustStore) -> None:
    other = signer(keys, "other")
    headers = sign_octets(BODY, other)
    assert refused(headers, trust, [signer(keys, "frmr").certificate]) == errors.CERTIFICATE_SENDER_MISMATCH
    assert refused(headers, trust, []) == errors.CERTIFICATE_SENDER_MISMATCH
    assert verify_octets(BODY, headers, trust=trust, signers=None).certificate == other.certificate


def test_a_certificate_of_another_ca_is_untrusted(keys: Path, trust: TrustStore, tmp_path: Path) -> None:
    create_demo_keys(tmp_path, ["frmr"], ("gost2012-256",))
    stranger = signer(tmp_path, "frmr")
    assert refused(sign_octets(BODY, stranger), trust, [stranger.certificate]) == errors.CERTIFICATE_UNTRUSTED


def test_validity_is_judged_at_the_given_time(keys: Path, trust: TrustStore) -> None:
    frmr = signer(keys, "frmr")
    later = frmr.certificate.not_after + dt.timedelta(days=1)
    assert refused(sign_octets(BODY, frmr), trust, [frmr.certificate], at=later) == errors.CERTIFICATE_EXPIRED


def test_missing_headers(keys: Path, trust: TrustStore) -> None:
    frmr = signer(keys, "frmr")
    headers = sign_octets(BODY, frmr)
    assert refused({}, trust, [frmr.certificate]) == errors.SIGNATURE_REQUIRED
    assert refused({**headers, SIGNATURE_HEADER: ""}, trust, [frmr.certificate]) == errors.SIGNATURE_REQUIRED
    for name in (ALGORITHM_HEADER, CERTIFICATE_HEADER):
        partial = {k: v for k, v in headers.items() if k != name}
        assert refused(partial, trust, [frmr.certificate]) == errors.SIGNATURE_MALFORMED


def test_unknown_algorithm_and_mismatched_key(keys: Path, trust: TrustStore) -> None:
    frmr = signer(keys, "frmr")
    headers = sign_octets(BODY, frmr)
    unknown = {**headers, ALGORITHM_HEADER: "http://www.w3.org/2000/09/xmldsig#rsa-sha1"}
    assert refused(unknown, trust, [frmr.certificate]) == errors.SIGNATURE_ALGORITHM_UNSUPPORTED
    rsa_named = {**headers, ALGORITHM_HEADER: RSA_SHA256_SIGNATURE}  # a GOST key cannot make an RSA signature
    assert refused(rsa_named, trust, [frmr.certificate]) == errors.SIGNATURE_INVALID


def test_malformed_values(keys: Path, trust: TrustStore) -> None:
    frmr = signer(keys, "frmr")
    headers = sign_octets(BODY, frmr)
    bad_value = {**headers, SIGNATURE_HEADER: "not base64!"}
    assert refused(bad_value, trust, [frmr.certificate]) == errors.SIGNATURE_MALFORMED
    assert refused({**headers, CERTIFICATE_HEADER: "%%%"}, trust, [frmr.certificate]) == errors.SIGNATURE_MALFORMED
    not_a_cert = base64.b64encode(b"certainly not DER").decode()
    assert refused({**headers, CERTIFICATE_HEADER: not_a_cert}, trust, [frmr.certificate]) == errors.SIGNATURE_MALFORMED
