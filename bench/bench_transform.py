"""Throughput of the SMEV transform on a realistic signed-data fragment of about 50 KB and 1 MB.

Prints MB/s of input and transforms/s. The issue's target is 20 MB/s or better; the
pure-Python PyPI port managed 133 transforms/s at 50 KB on this machine.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from lxml import etree

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from signing.smev_transform import transform

VECTOR = Path(__file__).resolve().parents[1] / "tests/data/smev-transform-vectors/05-mr-breach-request-1.1.input.xml"


def document(target_bytes: int) -> bytes:
    """Lab-result-like content: many namespaced elements with attributes and Cyrillic text."""
    rows = []
    i = 0
    while sum(len(r) for r in rows) < target_bytes:
        rows.append(
            f'<lab:Observation xmlns:lab="urn://zdravlink/types/lab/1.0" code="1.2.643.5.1.13.13.11.1080.{i}" '
            f'unit="ммоль/л"><lab:Value>{i % 97}.{i % 7}</lab:Value><lab:Comment>Результат в пределах '
            f'референсного интервала</lab:Comment></lab:Observation>\n'
        )
        i += 1
    return (f'<ns:SenderProvidedRequestData xmlns:ns="urn://x-artefacts-smev-gov-ru/services/message-exchange/types/1.2" '
            f'Id="SIGNED_BY_CONSUMER"><ns:MessageID>db0486d0-3c08-11e5-95e2-d4c9eff07b77</ns:MessageID>'
            f'<ns:MessagePrimaryContent>{"".join(rows)}</ns:MessagePrimaryContent></ns:SenderProvidedRequestData>'
            ).encode()


def main() -> None:
    print("SMEV transform throughput (input bytes; parsing not included)")
    for label, raw in (("vector 05", VECTOR.read_bytes()), ("50 KB", document(50_000)), ("1 MB", document(1_000_000))):
        root = etree.fromstring(raw)
        reps = max(3, int(20_000_000 / len(raw)))
        t0 = time.perf_counter()
        for _ in range(reps):
            transform(root)
        dt = time.perf_counter() - t0
        print(f"{label:>10}: {len(raw) / 1e6:8.3f} MB  {reps * len(raw) / dt / 1e6:7.1f} MB/s  {reps / dt:9.0f} transforms/s")


if __name__ == "__main__":
    main()
