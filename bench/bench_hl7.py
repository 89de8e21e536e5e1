"""HL7 v2 lab results: MLLP listener throughput beside the mapping engine alone, in the same run.

Starts the gateway's MLLP worker (its own process, SQLite journal) on a temporary
configuration with the ABL735 analyser's mapping (21 OBX per message, the largest
reference message) and sends ``--messages`` messages, each with its own MSH-10, over
``--connections`` connections, one ACK awaited per message as MLLP senders do. Prints
ACKs/s, the mapping engine's own messages/s on one thread (parse + map + XSD), and
the ratio. No broker is needed: the listener stops at the journal, which is the outbox.

    .venv/bin/python bench/bench_hl7.py [--messages 500] [--connections 4]
"""
from __future__ import annotations

import argparse
import shutil
import socket
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import hl7

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.hl7v2.mllp import FrameReader, frame
from adapters.hl7v2.oru import LAB_RESULT_NS, map_message
from adapters.mapping.lab_mapping import load_mapping
from gateway import schemas
from tests.conftest import AMQP_URL, free_port
from tests.support.gateway_proc import GatewayProcesses

DATA = Path(__file__).resolve().parents[1] / "tests" / "data"


def messages(n: int) -> list[bytes]:
    text = next((DATA / "hl7v2").glob("13_*.hl7")).read_bytes()
    return [text.replace(b"|20010516135518|P^", f"|BENCH-{i:06d}|P^".encode()) for i in range(n)]


def send(port: int, batch: list[bytes]) -> int:
    ok = 0
    reader = FrameReader()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        for m in batch:
            sock.sendall(frame(m))
            acks: list[bytes] = []
            while not acks:
                acks = reader.feed(sock.recv(4096))
            ok += b"MSA|AA|" in acks[0]
    return ok


def engine_rate(batch: list[bytes], seconds: float = 2.0) -> float:
    mapping = load_mapping(DATA / "mappings" / "abl-lab.yaml", [])
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        mapped = map_message(hl7.parse(batch[n % len(batch)].decode().replace("\n", "\r")), mapping)
        schemas.validate_payload(LAB_RESULT_NS, mapped.payload)
        n += 1
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=500)
    ap.add_argument("--connections", type=int, default=4)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="zl-bench-hl7-"))
    (tmp / "mappings").mkdir()
    shutil.copy(DATA / "mappings" / "abl-lab.yaml", tmp / "mappings")
    participants = ("participants:\n"
                    "  - {mnemonic: abl-lab, name: ABL, kind: lis, delivery: {mode: pull}, signature_required: false}\n"
                    "  - {mnemonic: clinic, name: MIS, kind: mis, delivery: {mode: pull}}\n")
    routes = f"routes:\n  - {{name: abl, sender: abl-lab, message_type: \"{LAB_RESULT_NS}\", recipient: clinic}}\n"
    gw = GatewayProcesses(tmp / "gw", participants, routes, settings="", amqp_url=AMQP_URL, db_url=None,
                          api_port=free_port(), delivery_workers=0, mappings=tmp / "mappings", mllp_port=free_port())
    gw.spawn("api")  # migrates the journal
    gw.wait_ready()
    gw.spawn("mllp")
    gw.wait_port(gw.mllp_port, "mllp")
    batch = messages(args.messages)
    try:
        chunks = [batch[i::args.connections] for i in range(args.connections)]
        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.connections) as pool:
            ok = sum(pool.map(lambda c: send(gw.mllp_port, c), chunks))
        elapsed = time.perf_counter() - t0
        listener = len(batch) / elapsed
        engine = engine_rate(batch)
        print(f"{len(batch)} ORU^R01 messages (21 OBX each, {len(batch[0])} bytes), {args.connections} MLLP "
              "connections, SQLite journal")
        print(f"  listener (parse, map, XSD, journal, ACK): {listener:7.1f} ACKs/s ({ok} AA)")
        print(f"  mapping engine alone, one thread:          {engine:7.1f} messages/s")
        print(f"  ratio:                                     {listener / engine:7.2f}")
    finally:
        gw.stop()


if __name__ == "__main__":
    main()
