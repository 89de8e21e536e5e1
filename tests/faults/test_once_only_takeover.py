"""A once-only duty's holder SIGKILLed: the other node takes its lease over once it runs out, and the duty's
work is done once, by one node at a time (the registry deadline watcher, and the acts schedule below).

Two registry deadline watchers (``zdravlink worker deadlines``, as two nodes' scheduler
role would start them) on one PostgreSQL journal. Requests to ФРМО are accepted through
the real accept pipeline with a short deadline, and nobody delivers them, so each is
owed a TIMEOUT answer. While both run, only the lease's holder sends TIMEOUTs; then the
holder is SIGKILLed (no clean stop, no lease given up), and the standby must take the
lease over within its time to live plus a renewal, and send the TIMEOUT of every
request still owed one: exactly one per request, over both rounds.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from application.wiring import intake
from gateway.config import hash_token, load_config
from gateway.journal import Journal
from gateway.keyring import load_keyring
from tests.conftest import PG_URL
from tests.support import configs
from tests.support.gateway_proc import REPO
from tests.support.scale_out import Database, leases, wait_for

pytestmark = [pytest.mark.faults, pytest.mark.postgres, pytest.mark.timeout(300)]

ORG = "urn://zdravlink/types/organisation-verification/1.0"
TTL, RENEW, DEADLINE = 4.0, 0.5, 3.0


def write_config(directory: Path, keys: Path) -> Path:
    directory.mkdir()
    (directory / "participants.yaml").write_text(
        "participants:\n"
        f"  - {{mnemonic: clinic, name: clinic, kind: mis, delivery: {{mode: rest, url: 'http://127.0.0.1:9/in'}}, "
        f"credentials: {{api_token_sha256: ['{hash_token('clinic-token')}']}}}}\n"
        f"  - {{mnemonic: frmo, name: ФРМО, kind: registry, certificates: ['{keys / 'frmo-gost2012-256.pem'}'], "
        "delivery: {mode: registry, registry: frmo, url: 'http://127.0.0.1:9/frmo'}}\n")
    (directory / "routes.yaml").write_text(
        "routes:\n"
        f"  - {{name: ask-frmo, sender: clinic, message_type: '{ORG}', recipient: frmo}}\n"
        f"  - {{name: frmo-answers, sender: frmo, message_type: '{ORG}', recipient: clinic}}\n")
    (directory / "gateway.yaml").write_text(
        configs.settings(keys=keys)
        + f"registries: {{organisation_verification: {{deadline_seconds: {DEADLINE}}}, deadline_poll_seconds: 0.2}}\n"
        + f"leases: {{ttl_seconds: {TTL}, renew_seconds: {RENEW}}}\n")
    return directory


def ask(receive, n: int) -> list[str]:
    ids = []
    for _ in range(n):
        mid = str(uuid.uuid1())
        body = {"messageId": mid, "sender": "clinic", "recipient": "frmo", "messageType": ORG,
                "payload": f'<ov:OrganisationVerificationRequest xmlns:ov="{ORG}">'
                           "<ov:Oid>1.2.643.5.1.13.13.12.2.77.1001</ov:Oid></ov:OrganisationVerificationRequest>"}
        receive(json.dumps(body).encode(), "application/json", "clinic-token", source="rest")
        ids.append(mid)
    return ids


def timeouts(db_url: str) -> dict[str, list[tuple[str, str]]]:
    """Request id → each DEADLINE_PASSED in its trail: (the TIMEOUT answer's id, the actor that sent it)."""
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT message_id, detail, actor FROM events WHERE kind = 'DEADLINE_PASSED'"))
            out: dict[str, list[tuple[str, str]]] = {}
            for mid, detail, actor in rows:
                out.setdefault(mid, []).append((json.loads(detail)["answer"], actor))
            answers = conn.execute(sa.text("SELECT reference_id, count(*) FROM messages WHERE sender = 'frmo' "
                                           "GROUP BY reference_id")).all()
    finally:
        engine.dispose()
    assert all(n == 1 for _, n in answers), answers  # one answer message per request, whoever sent it
    return out


def test_the_standby_takes_a_killed_holders_duty_over_and_it_runs_once(registry_keys: Path, tmp_path: Path) -> None:
    db = Database(PG_URL)
    config_dir = write_config(tmp_path / "config", registry_keys)
    Journal(db.url).migrate()
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for node in ("node-a", "node-b"):
            (tmp_path / node).mkdir()
            env = {**os.environ, "ZL_DATABASE_URL": db.url, "ZL_NODE_NAME": node,
                   "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / node)}
            procs[node] = subprocess.Popen(
                [sys.executable, "-m", "application.cli", "worker", "deadlines", "--config", str(config_dir)],
                env=env, cwd=REPO, stdout=open(tmp_path / f"{node}.log", "wb"), stderr=subprocess.STDOUT)
        wait_for(lambda: leases(db.url).get("deadlines", ("", False))[1], "a node holds the deadlines lease", 30)
        holder = leases(db.url)["deadlines"][0]
        first = holder.split(":")[0]
        second = "node-b" if first == "node-a" else "node-a"
        assert holder == f"{first}:{procs[first].pid}"

        config = load_config(config_dir)
        journal = Journal(db.url)
        receive = intake(config, journal, load_keyring(config)).receive
        before = ask(receive, 10)
        wait_for(lambda: len(timeouts(db.url)) == len(before), "the holder times the first requests out", 30)
        assert {actor for sent in timeouts(db.url).values() for _, actor in sent} == {
            f"registry-adapter:{procs[first].pid}"}  # the standby did none of it

        after = ask(receive, 10)  # owed a TIMEOUT DEADLINE seconds from now; the holder dies before then
        procs[first].send_signal(signal.SIGKILL)
        procs[first].wait(10)
        killed_at = time.monotonic()
        assert leases(db.url)["deadlines"][0] == holder  # killed: nothing gave the lease up
        took = wait_for(lambda: leases(db.url).get("deadlines", ("", False))[0].startswith(f"{second}:"),
                        "the standby takes the lease over", TTL + 2 * RENEW + 10)
        wait_for(lambda: len(timeouts(db.url)) == len(before) + len(after), "the rest timed out", 30)
        settled = time.monotonic() - killed_at
        sent = timeouts(db.url)
        print(f"\nlease taken over {took:.1f} s after the SIGKILL (ttl {TTL} s, renew {RENEW} s); "
              f"every TIMEOUT sent {settled:.1f} s after it")
        assert all(len(sent[m]) == 1 for m in before + after), sent  # exactly one TIMEOUT per request
        assert {actor for m in after for _, actor in sent[m]} == {f"registry-adapter:{procs[second].pid}"}
        assert took <= TTL + 2 * RENEW + 2.0, took
        assert procs[second].poll() is None
        journal.engine.dispose()
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.terminate()
                proc.wait(10)
        db.drop()


def test_the_acts_of_a_period_are_built_once_whoever_holds_the_schedule(demo_keys: Path, tmp_path: Path) -> None:
    """Two acts schedules (two nodes) on one journal, the period due at once: the holder builds and sends the act;
    SIGKILLed, its standby takes the schedule over, finds the period sent, and sends nothing more."""
    import datetime as dt

    from adapters.acts.schedule import previous_period
    from gateway.service_records import REGISTER_NS, SERVICE_RECORD_NS
    from tests.unit.test_service_records import record

    period = previous_period(dt.date.today())
    config_dir = tmp_path / "config"
    (config_dir / "tariffs").mkdir(parents=True)
    (config_dir / "tariffs" / "t.yaml").write_text(
        'tariffs:\n  - {code: "B01.047.001", name: "B01.047.001", price: 1300.00, from: 2000-01-01}\n')
    (config_dir / "oms").mkdir()
    shutil.copytree(REPO / "config" / "oms" / "profiles", config_dir / "oms" / "profiles")
    (config_dir / "oms" / "insurers.yaml").write_text(
        'insurers:\n  smo-3: {profile: zabaykalsky, editions: [{from: 2019-01, h: "3.2", l: "3.2"}]}\n')
    (config_dir / "participants.yaml").write_text(
        "participants:\n"
        "  - {mnemonic: clinic-a, name: A, kind: mis, delivery: {mode: pull}, "
        f"credentials: {{api_token_sha256: ['{hash_token('clinic-a-token')}']}}}}\n"
        "  - {mnemonic: smo-3, name: S, kind: insurer, oms_code: '77003', signature_required: false, "
        "delivery: {mode: soap, wsdl: 'http://127.0.0.1:9/smo?wsdl'}}\n")
    (config_dir / "routes.yaml").write_text(
        "routes:\n"
        f"  - {{name: rec, sender: clinic-a, message_type: '{SERVICE_RECORD_NS}', recipient: smo-3, "
        "channels: [{mode: pull}]}\n"
        f"  - {{name: act, sender: clinic-a, message_type: '{REGISTER_NS}', recipient: smo-3}}\n")
    (config_dir / "gateway.yaml").write_text(
        configs.settings(keys=demo_keys) + "acts: {schedule_day: 1, schedule_hour: 0}\n"
        + f"leases: {{ttl_seconds: {TTL}, renew_seconds: {RENEW}}}\n")
    db = Database(PG_URL)
    journal = Journal(db.url)
    journal.migrate()
    config = load_config(config_dir)
    day = f"{period}-10"
    body = {"messageId": str(uuid.uuid1()), "sender": "clinic-a", "recipient": "smo-3",
            "messageType": SERVICE_RECORD_NS,
            "payload": record(id="S-1", mo="770001", insurer="smo-3", din=day, dout=day, period=period, dept="1")}
    intake(config, journal, load_keyring(config)).receive(json.dumps(body).encode(), "application/json",
                                                          "clinic-a-token", source="rest")
    procs: dict[str, subprocess.Popen[bytes]] = {}

    def acts_sent() -> int:
        with journal.engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT count(*) FROM messages WHERE message_type = :t"),
                                    {"t": REGISTER_NS}).scalar_one())

    def log(node: str) -> str:
        return (tmp_path / f"{node}.log").read_text(errors="replace")

    try:
        for node in ("node-a", "node-b"):
            (tmp_path / node).mkdir()
            env = {**os.environ, "ZL_DATABASE_URL": db.url, "ZL_NODE_NAME": node, "ZL_ACTS_INTERVAL": "0.3",
                   "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / node)}
            procs[node] = subprocess.Popen(
                [sys.executable, "-m", "application.cli", "worker", "acts", "--config", str(config_dir)],
                env=env, cwd=REPO, stdout=open(tmp_path / f"{node}.log", "wb"), stderr=subprocess.STDOUT)
        wait_for(lambda: acts_sent() == 1, "the act of the period sent", 60)
        first = leases(db.url)["acts"][0].split(":")[0]
        second = "node-b" if first == "node-a" else "node-a"
        time.sleep(2)  # several more passes of the schedule on both nodes
        assert acts_sent() == 1
        assert f"acts {period} 770001 → smo-3: sent" in log(first) and "→ smo-3" not in log(second)
        procs[first].send_signal(signal.SIGKILL)
        procs[first].wait(10)
        wait_for(lambda: f"acts {period} 770001 → smo-3: unchanged" in log(second),
                 "the standby takes the schedule over and finds the period sent", TTL + 2 * RENEW + 20)
        time.sleep(1)
        assert acts_sent() == 1  # built once, over both holders
        assert leases(db.url)["acts"][0].startswith(f"{second}:")
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.terminate()
                proc.wait(10)
        journal.engine.dispose()
        db.drop()
