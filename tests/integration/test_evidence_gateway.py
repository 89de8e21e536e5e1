"""The evidence chain in a running gateway: the reconciler seals and checkpoints, the TSA goes and comes back.

Real processes, the real broker, the demo TSA (``openssl ts -reply``). Messages flow
while the TSA is away; the timestamp lag and the overdue gauge on /metrics rise; when
the TSA answers again the waiting checkpoints are timestamped, and ``journal verify``
and ``journal verify-archive`` (on an export) say the evidence holds.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from demo.emulators.rest_recipient import RecipientServer
from demo.emulators.tsa import TsaServer
from gateway.evidence.checkpoints import evidence_state
from gateway.journal import Journal
from tests.support import configs
from tests.support.configs import LAB_TOKEN
from tests.support.gateway_proc import envelope_json
from tests.support.ports import free_port
from tests.support.waiting import wait_for as _wait_for

pytestmark = pytest.mark.broker


def wait_for(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    _wait_for(predicate, timeout, what, interval=0.3)  # each look is a query or a scrape


def _gauge(text: str, name: str) -> float:
    found = re.search(rf"^{name} ([0-9.e+-]+)$", text, re.M)
    assert found, f"{name} not on /metrics"
    return float(found.group(1))


def test_the_reconciler_seals_checkpoints_and_rides_out_the_tsa(gateway_factory, demo_keys: Path,
                                                                 tmp_path: Path) -> None:
    clinic = RecipientServer(name="clinic").start()
    port = free_port()
    tsa = TsaServer(demo_keys, port=port).start()
    evidence = (f"evidence: {{seal_interval_seconds: 0.3, checkpoint_interval_seconds: 1, "
                f"tsa_url: 'http://127.0.0.1:{port}/tsa', tsa_retry_max_seconds: 1, "
                f"timestamp_alert_after_seconds: 2}}\n")
    try:
        gw = gateway_factory(configs.participants(clinic.url), configs.routes(),
                             settings=configs.settings(keys=demo_keys) + evidence, reconciler=True)
        journal = Journal(gw.db_url)

        def send(n: int) -> None:
            for _ in range(n):
                body = envelope_json("lab", "clinic")
                gw.post(body, LAB_TOKEN).raise_for_status()
                gw.wait_status(body["messageId"], LAB_TOKEN, "DELIVERED")

        send(3)
        wait_for(lambda: (s := evidence_state(journal)).unsealed_events == 0 and s.checkpoints
                 and s.waiting_timestamps == 0, 30, "sealed, checkpointed and timestamped by the reconciler")
        assert _gauge(gw.metrics(), "zl_evidence_timestamp_overdue") == 0

        tsa.stop()
        send(3)  # messages flow without the TSA
        wait_for(lambda: evidence_state(journal).waiting_timestamps > 0, 30, "a checkpoint waiting for the TSA")
        wait_for(lambda: _gauge(gw.metrics(), "zl_evidence_timestamp_overdue") == 1, 30, "the overdue gauge at 1")
        assert "gave no timestamp" in gw.log("reconciler")

        tsa = TsaServer(demo_keys, port=port).start()
        wait_for(lambda: (s := evidence_state(journal)).waiting_timestamps == 0 and s.unsealed_events == 0, 30,
                 "the waiting checkpoints timestamped once the TSA answers")
        wait_for(lambda: _gauge(gw.metrics(), "zl_evidence_timestamp_overdue") == 0, 30, "the overdue gauge back")

        verified = gw.cli("journal", "verify")
        assert verified.returncode == 0 and "the evidence holds" in verified.stdout, verified.stdout + verified.stderr
        archive = tmp_path / "evidence.zip"
        assert gw.cli("journal", "export", str(archive)).returncode == 0
        # Elsewhere: another directory, no configuration, no database URL in the environment.
        env = {k: v for k, v in os.environ.items() if not k.startswith("ZL_")}
        offline = subprocess.run([sys.executable, "-m", "application.cli", "journal", "verify-archive", str(archive),
                                  "--trust", str(demo_keys / "trust")], cwd=tmp_path, env=env, capture_output=True,
                                 text=True, timeout=120)
        assert offline.returncode == 0 and "the evidence holds" in offline.stdout, offline.stdout + offline.stderr
        journal.engine.dispose()
    finally:
        tsa.stop()
        clinic.stop()
