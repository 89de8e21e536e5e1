"""`zdravlink run` on the bundled configuration: the demo works end to end and SIGTERM stops it cleanly."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from routing.broker import connect
from routing.topology import Topology
from tests.conftest import AMQP_URL
from tests.support.gateway_proc import REPO
from tests.support.ports import free_port

pytestmark = pytest.mark.broker


def bundled_config_on_free_ports(target: Path) -> tuple[Path, int]:
    """The bundled files, unchanged but for the ports, so the test never collides with a running demo."""
    shutil.copytree(REPO / "config", target, ignore=shutil.ignore_patterns("keys"))
    api = free_port()
    mapping = {"8700": str(api), **{str(p): str(free_port()) for p in (8701, 8702, 8703, 8704, 8705, 8706, 8707, 2575)}}
    for name in ("gateway.yaml", "participants.yaml", "routes.yaml"):
        path = target / name
        path.write_text(re.sub(r"\b(870[0-7]|2575)\b", lambda m: mapping[m.group(1)], path.read_text()))
    return target, api


def wait_delivered(base: str, message_id: str, token: str) -> None:
    deadline = time.monotonic() + 30
    status = None
    while status != "DELIVERED" and time.monotonic() < deadline:
        time.sleep(0.2)
        status = httpx.get(f"{base}/api/v1/messages/{message_id}",
                           headers={"Authorization": f"Bearer {token}"}).json()["status"]
    assert status == "DELIVERED", message_id


def test_run_serves_the_demo_and_stops_on_sigterm(tmp_path):
    config, port = bundled_config_on_free_ports(tmp_path / "config")
    prefix = f"zlt-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "ZL_DATABASE_URL": f"sqlite:///{tmp_path / 'journal.db'}", "ZL_AMQP_URL": AMQP_URL,
           "ZL_BROKER_PREFIX": prefix, "ZL_VAR_DIR": str(tmp_path / "var")}
    log = open(tmp_path / "run.log", "wb")
    # `zdravlink demo run` (what scripts/run runs) makes the demo keys first, then supervises the gateway and partners.
    proc = subprocess.Popen([sys.executable, "-m", "application.cli", "demo", "run", "--config", str(config)], env=env,
                            cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "run.log").read_text()
            time.sleep(0.2)
        deadline = time.monotonic() + 30
        while "zdravlink demo send --verify" not in (tmp_path / "run.log").read_text():
            assert time.monotonic() < deadline, (tmp_path / "run.log").read_text()
            time.sleep(0.2)
        banner = (tmp_path / "run.log").read_text()
        # what to try is said only once the gateway answers /readyz, never before
        assert banner.index("the gateway is ready") < banner.index("try      zdravlink demo send")
        for line in (f"API      {base}/api/v1/messages   [plain (loopback only)]", f"docs     {base}/docs",
                     f"metrics  {base}/metrics", f"SMEV 3   {base}/smev/1.1?wsdl", "HL7 v2   mllp://127.0.0.1:",
                     "labs: lab-demo", "[plain (loopback only)]"):
            assert line in banner
        assert httpx.get(f"{base}/docs").status_code == 200

        sent = subprocess.run([sys.executable, "-m", "application.cli", "demo", "send", "--config", str(config)],
                              env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
        assert sent.stdout.startswith("202 "), sent.stdout + sent.stderr
        message_id = re.search(r'"messageId":"([0-9a-f-]+)"', sent.stdout).group(1)
        wait_delivered(base, message_id, "demo-lab-token")
        # the demo partner got it, and the gateway's GOST signature verified there
        assert f"message {message_id} attempt 1 -> 200" in (tmp_path / "run.log").read_text()
        assert "gateway signature: OK gost2012-256" in (tmp_path / "run.log").read_text()

        # the same notice over SMEV 3 SOAP, signed as lab-demo
        smev = subprocess.run([sys.executable, "-m", "application.cli", "demo", "send", "--soap", "--config", str(config)],
                              env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
        assert smev.stdout.startswith("200 SendRequestResponse: MessageId "), smev.stdout + smev.stderr
        soap_id = re.search(r"MessageId ([0-9a-f-]+)", smev.stdout).group(1)
        wait_delivered(base, soap_id, "demo-lab-token")
        # clinic-mis to insurer-demo, whose demo partner is a SOAP service (zeep → spyne)
        notice = ('<n:Notice xmlns:n="urn://zdravlink/types/notice/1.0"><n:Code>ACT_READY</n:Code>'
                  '<n:IssuedAt>2026-11-23T10:00:00Z</n:IssuedAt><n:Text>Акт готов</n:Text></n:Notice>')
        act_id = str(uuid.uuid1())
        r = httpx.post(f"{base}/api/v1/messages", headers={"Authorization": "Bearer demo-mis-token"},
                       json={"messageId": act_id, "sender": "clinic-mis", "recipient": "insurer-demo",
                             "messageType": "urn://zdravlink/types/notice/1.0", "payload": notice})
        assert r.status_code == 202, r.text
        wait_delivered(base, act_id, "demo-mis-token")
        assert f"insurer-demo: message {act_id} (urn://zdravlink/types/notice/1.0) -> accepted" in \
            (tmp_path / "run.log").read_text()
        # lab results over HL7 v2 / MLLP, mapped by config/mappings/lab-demo.yaml, delivered to clinic-mis
        hl7 = subprocess.run([sys.executable, "-m", "application.cli", "demo", "send", "--hl7", "--config", str(config)],
                             env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
        assert hl7.stdout.startswith("MSA|AA|DEMO-"), hl7.stdout + hl7.stderr
        wait_delivered(base, re.search(r"MessageID ([0-9a-f-]+)", hl7.stdout).group(1), "demo-lab-token")
        # service records for last month → an act to insurer-demo (an insurer emulator) → its protocol back
        sent = subprocess.run([sys.executable, "-m", "application.cli", "demo", "send", "--records", "--count", "3",
                               "--config", str(config)], env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
        assert sent.stdout.count("202 record DEMO-") == 3, sent.stdout + sent.stderr
        record_id = re.search(r"record (DEMO-[0-9a-f]+)", sent.stdout).group(1)
        period = re.search(r"--period (\d{4}-\d{2})", sent.stdout).group(1)
        built = subprocess.run([sys.executable, "-m", "application.cli", "acts", "build", "--period", period,
                                "--config", str(config)], env=env, cwd=REPO, capture_output=True, text=True,
                               timeout=120)
        assert built.returncode == 0 and "sent" in built.stdout, built.stdout + built.stderr
        deadline = time.monotonic() + 40
        outcome = "pending"
        while outcome == "pending" and time.monotonic() < deadline:
            time.sleep(0.3)
            outcome = httpx.get(f"{base}/api/v1/service-records/{record_id}", params={"codeMO": "770001"},
                                headers={"Authorization": "Bearer demo-mis-token"}).json()["outcome"]
        assert outcome == "accepted", (tmp_path / "run.log").read_text()[-3000:]
        # clinic-mis asks ФРМР and ФРМО (signed emulators); each verdict comes back to it
        asked = subprocess.run([sys.executable, "-m", "application.cli", "demo", "send", "--verify", "--config", str(config)],
                               env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
        requests = re.findall(r'"messageId":"([0-9a-f-]+)"', asked.stdout)
        assert len(requests) == 2, asked.stdout + asked.stderr
        for request_id, verdict in zip(requests, ("valid", "revoked")):
            wait_delivered(base, request_id, "demo-mis-token")
            trail = httpx.get(f"{base}/api/v1/messages/{request_id}",
                              headers={"Authorization": "Bearer demo-mis-token"}).json()["trail"]
            answered = next(e["detail"] for e in trail if e["event"] == "REGISTRY_ANSWERED")
            assert answered["verdict"] == verdict, trail
            wait_delivered(base, answered["answer"], "demo-mis-token")
        children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        assert len(children) == 8  # api, router, reconciler, two delivery workers, deadlines, mllp, demo partners
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
        log.close()
        conn = connect(AMQP_URL, "zl-test-cleanup", heartbeat=0)
        ch = conn.channel()
        topo = Topology(prefix)
        for q in topo.all_queues(["lab-demo", "clinic-mis", "insurer-demo", "frmr", "frmo"]):
            ch.queue_delete(q)
        for x in topo.all_exchanges():
            ch.exchange_delete(x)
        conn.close()
    assert code == 0
    for pid in children:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
    assert "stopped" in (tmp_path / "run.log").read_text()
