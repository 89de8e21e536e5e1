"""The MLLP listener's limits against peers that never finish: connections, frame size, time, memory.

In-process listeners show each limit on its own; then the gateway's own `worker mllp`
process is held open by 40 senders each trickling an unfinished frame, and its memory
is read from /proc before and after, as an operator would see it.
"""
from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from adapters.hl7v2.mllp import START
from tests.integration.test_mllp_server import connected, running
from tests.support.waiting import wait_for

pytestmark = pytest.mark.broker


def test_one_connection_over_the_limit_is_closed_at_once_and_counted():
    refused: list[str] = []
    with running(max_connections=2, on_refused=refused.append) as server:
        with connected(server.port) as a, connected(server.port) as b:
            a.send(START + b"MSH")
            b.send(START + b"MSH")
            time.sleep(0.2)
            with connected(server.port) as third:
                assert third.closed_by_server()
            assert not a.closed_by_server(0.3) and not b.closed_by_server(0.3)
        assert refused == ["too_many_connections"]
        with connected(server.port) as later:  # the slots are free again
            assert not later.closed_by_server(0.3)


def test_a_frame_trickled_past_its_time_is_cut_off():
    refused: list[str] = []
    with running(frame_timeout=0.6, idle_timeout=30, on_refused=refused.append) as server:
        with connected(server.port) as slow:
            slow.send(START + b"MSH|^~\\&|")
            for _ in range(3):  # a byte every 0.3 s keeps it from being idle, not from being slow
                time.sleep(0.3)
                try:
                    slow.send(b"X")
                except OSError:
                    break
            assert slow.closed_by_server()
    assert refused == ["frame_timeout"]


def test_unfinished_frames_of_all_connections_share_one_memory_budget():
    refused: list[str] = []
    with running(max_buffered_bytes=300_000, max_frame_bytes=200_000, on_refused=refused.append) as server:
        with connected(server.port) as a, connected(server.port) as b:
            a.send(START + b"A" * 150_000)
            time.sleep(0.3)
            assert not a.closed_by_server(0.3)
            b.send(START + b"B" * 180_000)
            assert b.closed_by_server()
            assert not a.closed_by_server(0.3)  # the first one stays within its share
    assert refused == ["memory_budget"]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_the_gateway_listener_stays_bounded_under_forty_half_sent_frames(gateway_factory, tmp_path):
    mappings = tmp_path / "mappings"
    mappings.mkdir()
    (mappings / "lab.yaml").write_text(
        "lab: lab\nidentify: {sending_facility: [LAB]}\nrecipient: {fixed: clinic}\n"
        "fields: {patient: {local_id: PID-3.1}}\n"
        "tests: {HGB: {fsli: '1017128', display: Гемоглобин общий, unit: {code: g/L}}}\n", encoding="utf-8")
    participants = ("participants:\n"
                    "  - {mnemonic: lab, name: Lab, kind: lis, delivery: {mode: pull}, signature_required: false}\n"
                    "  - {mnemonic: clinic, name: Clinic, kind: mis, delivery: {mode: pull}}\n")
    routes = ("routes:\n  - {name: lab-results, sender: lab, message_type: 'urn://zdravlink/types/lab-result/1.0',"
              " recipient: clinic}\n")
    settings = "api: {max_body_bytes: 1048576}\nhl7: {max_connections: 64, max_buffered_bytes: 16777216}\n"
    gw = gateway_factory(participants, routes, settings=settings, mappings=mappings)
    pid = gw.procs["mllp"].pid
    before = rss_kib(pid)

    # 40 senders of 15 MB frames (the attack): each is cut off once it passes the API's
    # body limit (1 MiB), not read to its end.
    for _ in range(40):
        with socket.create_connection(("127.0.0.1", gw.mllp_port), timeout=10) as big:
            try:
                big.sendall(START + b"MSH|" + b"x" * 15_000_000)
            except OSError:
                pass  # the listener closed the connection while we were still writing: that is the point
            big.settimeout(5)
            try:
                assert big.recv(1) == b""
            except ConnectionResetError:
                pass

    senders = []
    for _ in range(40):
        s = socket.create_connection(("127.0.0.1", gw.mllp_port), timeout=10)
        try:
            s.sendall(START + b"MSH|" + b"y" * 900_000)  # each just under the frame limit, never finished
        except OSError:
            pass  # refused for the memory budget
        senders.append(s)
    time.sleep(1.5)
    during = rss_kib(pid)
    for s in senders:
        s.close()
    refusals = gw.metrics()
    growth_mib = (during - before) / 1024
    print(f"\nMLLP listener RSS: {before / 1024:.0f} MiB before, {during / 1024:.0f} MiB after 40 cut-off 15 MB "
          f"frames and with 40 half-sent 900 KB frames open (+{growth_mib:.0f} MiB; budget 16 MiB)")
    # Without limits this was +600 MiB; the frame limit and the budget bound it (plus allocator slack).
    assert growth_mib < 80
    assert 'zl_mllp_refused_total{reason="frame_too_large"} 40.0' in refusals
    wait_for(lambda: 'reason="memory_budget"' in gw.metrics(), timeout=5, what="memory budget refusals counted")
    assert os.path.exists(f"/proc/{pid}")  # and it is still alive
