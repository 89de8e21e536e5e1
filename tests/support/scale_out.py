"""Several gateway nodes on one PostgreSQL journal and one RabbitMQ cluster, on this one machine.

A gateway node is what one host of a deployment runs: ``zdravlink run --role …`` (the
supervisor and its processes) in a process group of its own, with its own API port,
var directory and node name. ``kill()`` SIGKILLs the whole group, as a host that loses
power would. The load is a client that spreads its messages over the nodes' APIs and,
when one does not answer, sends the same MessageID to the next (what a load balancer
in front of them does). Shared by the fault test (tests/faults/test_scale_out.py) and
``bench/bench_spine.py --nodes``.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import sqlalchemy as sa

from tests.conftest import create_database, drop_database
from tests.support import configs
from tests.support.configs import LAB_TOKEN
from tests.support.gateway_proc import REPO, delete_topology, envelope_json
from tests.support.waiting import SETTLED, wait_settled

#: The stages every delivered message's trail must show.
STAGES = ("ACCEPTED", "PUBLISHED", "ROUTED", "DELIVERED")


#: The message type of a verification request to ФРМО (and of its answer).
ORG = "urn://zdravlink/types/organisation-verification/1.0"


def write_config(directory: Path, clinic_url: str, *, delivery_workers: int = 1, quorum_replicas: int | None = 3,
                 lease_ttl: float = 6.0, lease_renew: float = 1.0, in_process_max_delay: float = 5.0,
                 registry: tuple[str, Path] | None = None, extra: str = "") -> Path:
    """One configuration every node reads (hosts of a deployment share their files).

    ``registry``: ФРМО's URL and the demo keys directory (``registry_keys``): the clinic may ask it, the
    gateway signs with its demo key, and a request unanswered after 3 s gets a TIMEOUT (the deadline
    watcher, a once-only duty)."""
    directory.mkdir(parents=True, exist_ok=True)
    people = configs.participants(clinic_url)
    routes = f"  - {{name: lab-to-clinic, sender: lab, message_type: '{configs.NOTICE_NS}', recipient: clinic}}\n"
    if registry is not None:
        url, keys = registry
        people += (f"  - {{mnemonic: frmo, name: ФРМО, kind: registry, certificates: ['{keys / 'frmo-gost2012-256.pem'}'], "
                   f"delivery: {{mode: registry, registry: frmo, url: '{url}'}}}}\n")
        routes += (f"  - {{name: ask-frmo, sender: clinic, message_type: '{ORG}', recipient: frmo}}\n"
                   f"  - {{name: frmo-answers, sender: frmo, message_type: '{ORG}', recipient: clinic}}\n")
        extra += (f'signing: {{key: "{keys / "gateway-gost2012-256.key"}", '
                  f'certificate: "{keys / "gateway-gost2012-256.pem"}", trust_store: "{keys / "trust"}"}}\n'
                  "registries: {organisation_verification: {deadline_seconds: 3}, deadline_poll_seconds: 0.2}\n")
    (directory / "participants.yaml").write_text(people)
    (directory / "routes.yaml").write_text(
        "defaults:\n  retry: {attempts: 10, initial_delay: 0.5, multiplier: 2.0, jitter: 0.1, max_delay: 10.0}\n"
        "routes:\n" + routes)
    replicas = "" if quorum_replicas is None else f", quorum_replicas: {quorum_replicas}"
    (directory / "gateway.yaml").write_text(
        "api: {max_body_bytes: 1048576}\n"
        f"broker: {{prefetch: 32{replicas}}}\n"
        f"delivery: {{timeout_seconds: 5.0, in_process_max_delay: {in_process_max_delay}}}\n"
        "circuit_breaker: {failure_threshold: 5, reset_timeout_seconds: 10}\n"
        "relay: {batch_size: 200, poll_interval_seconds: 0.1}\n"
        f"workers: {{delivery: {delivery_workers}}}\n"
        "reconciler: {sweep_interval_seconds: 5, stuck_after_seconds: 60}\n"
        f"leases: {{ttl_seconds: {lease_ttl}, renew_seconds: {lease_renew}}}\n" + extra)
    return directory


class Database:
    """A fresh PostgreSQL database on the shared server, dropped by ``drop()``."""

    def __init__(self, server_url: str) -> None:
        self.server_url = server_url
        self.name = f"zl_scale_{uuid.uuid4().hex[:10]}"
        self.admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
        create_database(self.admin, self.name)
        self.url = server_url.rsplit("/", 1)[0] + "/" + self.name

    def drop(self) -> None:
        drop_database(self.admin, self.name)
        self.admin.dispose()


class GatewayNode:
    """``zdravlink run --role ROLES`` as one host: its own process group, API port, var directory and name."""

    def __init__(self, name: str, config: Path, workdir: Path, *, db_url: str, broker_urls: list[str], prefix: str,
                 api_port: int, roles: str = "api,router,delivery,scheduler") -> None:
        self.name, self.config, self.roles = name, config, roles
        self.dir = workdir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.base = f"http://127.0.0.1:{api_port}"
        self.env = {**os.environ, "ZL_DATABASE_URL": db_url, "ZL_AMQP_URL": ",".join(broker_urls),
                    "ZL_BROKER_PREFIX": prefix, "ZL_API_PORT": str(api_port), "ZL_VAR_DIR": str(self.dir / "var"),
                    "ZL_NODE_NAME": name, "ZL_LOG_LEVEL": "INFO"}
        self.env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # the supervisor sets its own under ZL_VAR_DIR
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> GatewayNode:
        self.starts += 1
        log = open(self.dir / f"run-{self.starts}.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "application.cli", "run", "--role", self.roles, "--config", str(self.config)],
            env=self.env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log()[-3000:]}")
            try:
                if httpx.get(f"{self.base}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"{self.name} not ready: {self.log()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL every process of the node at once (the supervisor and all it started)."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(15)

    def stop(self) -> None:
        """SIGTERM to the supervisor, which stops its processes; anything left after 20 s is killed."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def log(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.dir.glob("run-*.log")))

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "application.cli", *args, "--config", str(self.config)],
                              env=self.env, cwd=REPO, capture_output=True, text=True, timeout=120)


class SpreadLoad:
    """``count`` notices at ``rate`` per second, round robin over the nodes' APIs, each until it gets its 202
    (the same MessageID to the next node after a refused connection, a timeout or a 503)."""

    def __init__(self, bases: list[str], count: int, rate: float, senders: int = 4) -> None:
        self.bases, self.count, self.rate = bases, count, rate
        self.accepted: list[str] = []
        self.accept_at: dict[str, float] = {}  # wall clock, as the recipient's Received.at
        self.retries = 0
        self.unexpected: list[str] = []
        self.finished_at = 0.0
        self._next = 0
        self._lock = threading.Lock()
        self._start = 0.0
        self._threads = [threading.Thread(target=self._run, args=(i, senders), daemon=True) for i in range(senders)]

    def start(self) -> SpreadLoad:
        self._start = time.monotonic()
        for t in self._threads:
            t.start()
        return self

    def _run(self, first: int, step: int) -> None:
        client = httpx.Client(timeout=10)
        for i in range(first, self.count, step):
            time.sleep(max(0.0, self._start + i / self.rate - time.monotonic()))
            body = envelope_json("lab", "clinic")
            node = i % len(self.bases)
            while True:
                try:
                    r = client.post(f"{self.bases[node]}/api/v1/messages", json=body,
                                    headers={"Authorization": f"Bearer {LAB_TOKEN}"})
                    if r.status_code == 202:
                        with self._lock:
                            self.accepted.append(body["messageId"])
                            self.accept_at[body["messageId"]] = time.time()
                        break
                    if r.status_code != 503:
                        self.unexpected.append(f"{r.status_code} {r.text[:200]}")
                except httpx.TransportError:
                    pass
                with self._lock:
                    self.retries += 1
                node = (node + 1) % len(self.bases)
                time.sleep(0.1)
        client.close()
        with self._lock:
            self.finished_at = max(self.finished_at, time.monotonic())

    def wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.1, deadline - time.monotonic()))
            if t.is_alive():
                raise TimeoutError(f"the load did not finish: {len(self.accepted)} of {self.count} accepted")

    def wait_accepted(self, n: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while len(self.accepted) < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(self.accepted)} of {n} accepted")
            time.sleep(0.05)


@dataclass
class Account:
    """Every accepted message, settled or not, read from the journal."""

    accepted: int = 0
    delivered: int = 0
    dead: int = 0
    lost: int = 0
    missing_stages: int = 0
    parked: int = 0                # retries parked in the broker's retry queues
    parked_elsewhere: int = 0      # of those, delivered by another process than the one that parked them
    settled_at: float = 0.0
    notes: list[str] = field(default_factory=list)


def settle(db_url: str, accepted: list[str], timeout: float) -> Account:
    """Wait until every accepted message is DELIVERED or DEAD (or ``timeout``), then account for each."""
    engine = sa.create_engine(db_url)
    try:
        rows = wait_settled(engine, accepted, timeout)
        account = Account(accepted=len(accepted), settled_at=time.monotonic())
        with engine.connect() as conn:
            trails: dict[str, set[str]] = {}
            parked_by: dict[str, str] = {}
            delivered_by: dict[str, str] = {}
            for mid, kind, actor, detail in conn.execute(sa.text("SELECT message_id, kind, actor, detail FROM events "
                                                                 "ORDER BY id")):
                trails.setdefault(mid, set()).add(kind)
                if kind == "RETRY_SCHEDULED" and '"queued"' in detail:
                    parked_by[mid] = actor
                elif kind == "DELIVERED":
                    delivered_by[mid] = actor
    finally:
        engine.dispose()
    account.delivered = sum(rows.get(m) == "DELIVERED" for m in accepted)
    account.dead = sum(rows.get(m) == "DEAD" for m in accepted)
    account.lost = account.accepted - account.delivered - account.dead
    account.missing_stages = sum(1 for m in accepted
                                 if rows.get(m) == "DELIVERED" and not set(STAGES) <= trails.get(m, set()))
    account.parked = len(parked_by)
    account.parked_elsewhere = sum(1 for m, actor in parked_by.items() if delivered_by.get(m, actor) != actor)
    account.notes = [f"{m} stayed {rows.get(m)}: {sorted(trails.get(m, set()))}"
                     for m in accepted if rows.get(m) not in SETTLED][:10]
    return account


def leases(db_url: str) -> dict[str, tuple[str, bool]]:
    """Each once-only duty's lease: its holder and whether it is live now (by the database's clock)."""
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT name, holder, expires_at > now() FROM leases")).all()
    finally:
        engine.dispose()
    return {name: (holder, bool(live)) for name, holder, live in rows}


def wait_for(check: Callable[[], bool], what: str, timeout: float) -> float:
    """Wait until ``check()``; returns the seconds it took."""
    began = time.monotonic()
    while not check():
        if time.monotonic() - began > timeout:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.2)
    return time.monotonic() - began


def recovery(accept_at: dict[str, float], delivered_at: dict[str, float], fault_at: float) -> tuple[float, float]:
    """After a fault at ``fault_at`` (wall clock): how long until every message accepted before it was delivered,
    and the worst accept→delivered time of the messages accepted in the 10 s after it."""
    before = [delivered_at[m] for m, t in accept_at.items() if t <= fault_at and m in delivered_at]
    after = [delivered_at[m] - t for m, t in accept_at.items() if fault_at < t <= fault_at + 10 and m in delivered_at]
    return max(0.0, max(before, default=fault_at) - fault_at), max(after, default=0.0)


def remove_topology(broker_urls: list[str], prefix: str, participants: tuple[str, ...] = ("lab", "clinic")) -> None:
    delete_topology(",".join(broker_urls), prefix, list(participants))
