"""XML-DSig sign and verify per algorithm at 2 KB and 50 KB, beside the raw OpenSSL primitive.

For each algorithm it prints signs/s and verifies/s of a whole detached signature
(SMEV transform, digest, SignedInfo, signature, KeyInfo; verify includes the trust
check), and in the same run the raw primitive: OpenSSL signing and verifying a
precomputed digest (EVP_PKEY_sign / EVP_PKEY_verify), so the ratio shows what the XML
work costs on top of the cryptography. It also prints the SMEV transform's MB/s.

    .venv/bin/python bench/bench_signing.py [--seconds 1.0]

Keys come from a throw-away demo CA made in a temporary directory.
"""
from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from lxml import etree

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_transform import document
from demo.ca import create_demo_keys
from signing import ALGORITHMS, Certificate, PrivateKey, Signer, TrustStore, libcrypto, sign, transform, verify

KEY_TYPE = {"gost2012-256": "gost2012-256", "gost2012-512": "gost2012-512", "rsa-sha256": "rsa"}
RAW_DIGEST = {"gost2012-256": (b"md_gost12_256", None), "gost2012-512": (b"md_gost12_512", None),
              "rsa-sha256": (b"sha256", b"sha256")}


def rate(fn: Callable[[], object], seconds: float) -> float:
    """Calls per second, after a short warm-up, over about ``seconds``."""
    for _ in range(3):
        fn()
    n, t0 = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < seconds:
        fn()
        n += 1
    return n / elapsed


def sized(size: int) -> bytes:
    """A SenderProvidedRequestData of about ``size`` UTF-8 bytes (document() counts characters)."""
    raw = document(size)
    return document(size * size // len(raw)) if len(raw) > size * 1.1 else raw


def signed_document(size: int) -> etree._Element:
    """``<Request>`` holding that data element; the signature goes beside it, as SMEV places it."""
    wrapper = etree.Element("{urn:bench}Request")
    wrapper.append(etree.fromstring(sized(size)))
    return wrapper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        keys = Path(tmp)
        create_demo_keys(keys, ["bench"], tuple(KEY_TYPE.values()))
        trust = TrustStore.from_directory(keys / "trust")
        signers = {alg: Signer.create(PrivateKey.load(keys / f"bench-{kt}.key"),
                                      Certificate.load(keys / f"bench-{kt}.pem"), alg)
                   for alg, kt in KEY_TYPE.items()}

    print("SMEV transform (input MB/s, parsing not included)")
    for label, size in (("2 KB", 2_000), ("50 KB", 50_000)):
        raw = sized(size)
        root = etree.fromstring(raw)
        print(f"  {label:>6} ({len(raw):,} B): {rate(lambda: transform(root), args.seconds) * len(raw) / 1e6:7.1f} MB/s")

    print("\nXML-DSig, detached, exc-c14n + SMEV transform; raw = OpenSSL on a precomputed digest, same run")
    print(f"  {'algorithm':<13} {'size':>6} {'sign/s':>9} {'raw sign/s':>11} {'ratio':>6}"
          f" {'verify/s':>9} {'raw verify/s':>13} {'ratio':>6}")
    for alg, signer in signers.items():
        md_name, rsa_md = RAW_DIGEST[alg]
        digest = libcrypto.digest(md_name, b"SignedInfo") if md_name != b"sha256" else hashlib.sha256(b"x").digest()
        raw_sig = libcrypto.sign_digest(signer.key.pkey, digest, rsa_md)
        pub = signer.certificate.public_key
        raw_sign = rate(lambda: libcrypto.sign_digest(signer.key.pkey, digest, rsa_md), args.seconds)
        raw_verify = rate(lambda: libcrypto.verify_digest(pub, digest, raw_sig, rsa_md), args.seconds)
        for label, size in (("2 KB", 2_000), ("50 KB", 50_000)):
            doc = signed_document(size)
            target = doc[0]
            sig = sign(target, signer)
            doc.append(sig)
            assert ALGORITHMS[alg] is verify(sig, document=doc, trust=trust, expected=target).algorithm
            s = rate(lambda: sign(target, signer), args.seconds)
            v = rate(lambda: verify(sig, document=doc, trust=trust, expected=target), args.seconds)
            print(f"  {alg:<13} {label:>6} {s:9.0f} {raw_sign:11.0f} {s / raw_sign:6.2f}"
                  f" {v:9.0f} {raw_verify:13.0f} {v / raw_verify:6.2f}")


if __name__ == "__main__":
    main()
