"""Fault scenarios against a whole gateway: steady load, one fault, then an account of every message.

Shared by the fault suite (``tests/faults``, marker ``faults``) and ``bench/bench_faults.py``.
A scenario starts the gateway's real processes on a PostgreSQL database and a RabbitMQ
node reached through TCP proxies it owns, sends messages at a steady rate (a client
that resends the same MessageID after a 503 or a lost connection, as a real one does),
applies its fault in the middle, waits until every accepted message has settled, and
reports: accepted, delivered, dead (each with its reason), lost, repeats at the
recipient (always with the message's own Idempotency-Key), the time from the end of the
fault until everything settled, trails missing a stage, and `journal check`.
"""
from __future__ import annotations

import signal
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import sqlalchemy as sa

from demo.emulators.rest_recipient import RecipientServer
from tests.conftest import create_database, drop_database
from tests.support import configs
from tests.support.configs import LAB_TOKEN
from tests.support.gateway_proc import GatewayProcesses, envelope_json
from tests.support.rabbit_node import RabbitNode
from tests.support.tcp_proxy import TcpProxy
from tests.support.waiting import SETTLED, wait_settled

#: The stages every delivered message's trail must show, in this order of first appearance.
STAGES = ("ACCEPTED", "PUBLISHED", "ROUTED", "DELIVERED")


@dataclass
class Result:
    name: str
    accepted: int = 0
    delivered: int = 0
    dead: int = 0
    lost: int = 0
    repeats: int = 0
    foreign_keys: int = 0          # deliveries whose Idempotency-Key is not an accepted MessageID
    recover_s: float = 0.0         # from the end of the fault until every accepted message settled
    drain_s: float = 0.0           # from the last accept until every accepted message settled
    missing_stages: int = 0        # delivered messages whose trail lacks a stage
    broken_trails: int = 0
    dead_without_reason: int = 0
    journal_check: str = ""
    journal_check_ok: bool = False
    notes: list[str] = field(default_factory=list)

    def row(self) -> str:
        return (f"| {self.name} | {self.accepted} | {self.delivered} | {self.dead} | {self.lost} | {self.repeats} | "
                f"{self.recover_s:.1f} | {self.drain_s:.1f} | {'clean' if self.journal_check_ok else 'NOT CLEAN'} |")


HEADER = ("| scenario | accepted | delivered | dead | lost | repeats | settled after the fault ended (s) | "
          "settled after the last accept (s) | journal check |\n|---|---|---|---|---|---|---|---|---|")


class Load:
    """Sends ``count`` notices at ``rate`` per second from one thread; each until it gets its 202."""

    def __init__(self, base_url: str, count: int, rate: float) -> None:
        self.base_url = base_url
        self.count = count
        self.rate = rate
        self.accepted: list[str] = []
        self.retries = 0
        self.unexpected: list[str] = []  # answers other than 202 and 503 (a 500 is a defect, not a fault)
        self.finished_at = 0.0
        self._thread = threading.Thread(target=self._run, name="load", daemon=True)

    def start(self) -> Load:
        self._thread.start()
        return self

    def _run(self) -> None:
        client = httpx.Client(base_url=self.base_url, timeout=10)
        start = time.monotonic()
        for i in range(self.count):
            time.sleep(max(0.0, start + i / self.rate - time.monotonic()))
            body = envelope_json("lab", "clinic")
            while True:
                try:
                    r = client.post("/api/v1/messages", json=body, headers={"Authorization": f"Bearer {LAB_TOKEN}"})
                    if r.status_code == 202:
                        self.accepted.append(body["messageId"])
                        break
                    if r.status_code != 503:
                        self.unexpected.append(f"{r.status_code} {r.text[:200]}")
                except httpx.TransportError:
                    pass  # the API is down or restarting: the same MessageID again
                self.retries += 1
                time.sleep(0.2)
        client.close()
        self.finished_at = time.monotonic()

    def wait(self, timeout: float) -> None:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"the load did not finish: {len(self.accepted)} of {self.count} accepted")


class Bench:
    """One RabbitMQ node and the shared PostgreSQL server, reused by every scenario."""

    def __init__(self, workdir: Path, pg_url: str, amqp_url: str | None = None) -> None:
        self.workdir = workdir
        self.pg_url = pg_url
        self.node: RabbitNode | None = None
        self.amqp_port = 5672
        if amqp_url is None:
            from tests.support.ports import free_port

            self.node = RabbitNode(workdir / "rabbit", free_port())
            self.node.start()
            self.amqp_port = self.node.port

    def close(self) -> None:
        if self.node is not None:
            self.node.remove()

    def database(self) -> tuple[str, Callable[[], None]]:
        """A fresh database on the PostgreSQL server; returns its name and a function that drops it."""
        name = f"zl_fault_{uuid.uuid4().hex[:10]}"
        admin = sa.create_engine(self.pg_url, isolation_level="AUTOCOMMIT")
        create_database(admin, name)

        def drop() -> None:
            drop_database(admin, name)
            admin.dispose()

        return name, drop


@dataclass
class Scenario:
    """A fault applied after ``at`` messages were accepted; ``fault`` returns when the fault has ended."""

    name: str
    fault: Callable[[Run], None]
    count: int = 1000
    rate: float = 60.0
    at: int = 300
    retry: str = "attempts: 10, initial_delay: 0.5, multiplier: 2.0, jitter: 0.1, max_delay: 30.0"
    breaker: str = "failure_threshold: 5, reset_timeout_seconds: 10"
    settle_timeout: float = 240.0
    expect_dead: int = 0


class Run:
    """A scenario in progress: the gateway, its proxies, the recipient, the load."""

    def __init__(self, bench: Bench, scenario: Scenario, directory: Path) -> None:
        from tests.support.ports import free_port

        self.bench, self.scenario = bench, scenario
        self.recipient = RecipientServer(name="clinic").start()
        self.recipient_proxy = TcpProxy(self.recipient.port)
        self.db_name, self._drop_db = bench.database()
        self.db_proxy = TcpProxy(5432)
        self.broker_proxy = TcpProxy(bench.amqp_port)
        db_url = f"postgresql+psycopg://zdravlink:zdravlink@127.0.0.1:{self.db_proxy.port}/{self.db_name}"
        self.direct_db = bench.pg_url.rsplit("/", 1)[0] + "/" + self.db_name
        clinic_url = f"http://127.0.0.1:{self.recipient_proxy.port}/zdravlink/inbox"
        settings = (f"api: {{max_body_bytes: 1048576}}\n"
                    f"delivery: {{timeout_seconds: 5.0, in_process_max_delay: 5.0}}\n"
                    f"circuit_breaker: {{{scenario.breaker}}}\n"
                    f"relay: {{batch_size: 200, poll_interval_seconds: 0.1}}\n"
                    f"workers: {{delivery: 2}}\n"
                    f"reconciler: {{sweep_interval_seconds: 5, stuck_after_seconds: 60}}\n")
        routes = ("defaults:\n"
                  f"  retry: {{{scenario.retry}}}\n"
                  "routes:\n"
                  f"  - {{name: lab-to-clinic, sender: lab, message_type: '{configs.NOTICE_NS}', recipient: clinic}}\n")
        self.gw = GatewayProcesses(directory, configs.participants(clinic_url), routes, settings=settings,
                                   amqp_url=f"amqp://guest:guest@127.0.0.1:{self.broker_proxy.port}/%2F",
                                   db_url=db_url, api_port=free_port(), delivery_workers=2, reconciler=True)
        self.load: Load | None = None
        self.fault_ended = 0.0

    def start(self) -> None:
        self.gw.start()

    def wait_accepted(self, n: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while self.load is not None and len(self.load.accepted) < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(self.load.accepted)} of {n} accepted")
            time.sleep(0.05)

    # ---- faults the scenarios use -------------------------------------------------

    def restart(self, name: str, sig: int = signal.SIGKILL) -> None:
        self.gw.kill(name, sig)
        time.sleep(1.0)  # what a supervisor waits before it restarts a process
        self.gw.spawn(name)
        if name == "api":
            self.gw.wait_ready()

    # ---- the account --------------------------------------------------------------

    def settle(self) -> Result:
        s, load = self.scenario, self.load
        assert load is not None
        load.wait(600)
        accepted = set(load.accepted)
        engine = sa.create_engine(self.direct_db)
        try:
            rows = wait_settled(engine, accepted, s.settle_timeout)
            settled_at = time.monotonic()
            result = Result(s.name, accepted=len(accepted))
            result.notes += [f"unexpected answer: {u}" for u in load.unexpected[:5]]
            result.recover_s = max(0.0, settled_at - self.fault_ended)
            result.drain_s = max(0.0, settled_at - load.finished_at)
            with engine.connect() as conn:
                dead_rows = conn.execute(sa.text(
                    "SELECT message_id, last_error FROM messages WHERE status = 'DEAD'")).all()
                trails: dict[str, list[str]] = {}
                for mid, kind in conn.execute(sa.text("SELECT message_id, kind FROM events ORDER BY id")):
                    trails.setdefault(mid, []).append(kind)
            result.delivered = sum(rows.get(m) == "DELIVERED" for m in accepted)
            result.dead = sum(rows.get(m) == "DEAD" for m in accepted)
            result.lost = len(accepted) - result.delivered - result.dead
            result.dead_without_reason = sum(1 for _, err in dead_rows if not err)
            reasons: dict[str, int] = {}
            for _, err in dead_rows:
                key = (err or "no reason")[:160]
                reasons[key] = reasons.get(key, 0) + 1
            result.notes += [f"DEAD x{n}: {why}" for why, n in sorted(reasons.items(), key=lambda kv: -kv[1])[:5]]
            lacking = {m: stages for m in accepted if rows.get(m) == "DELIVERED"
                       and (stages := sorted(set(STAGES) - set(trails.get(m, []))))}
            result.missing_stages = len(lacking)
            result.notes += [f"{m} lacks {stages}: {trails.get(m)}" for m, stages in list(lacking.items())[:5]]
            for m in accepted:
                if rows.get(m) not in SETTLED:
                    result.notes.append(f"{m} stayed {rows.get(m)}: {trails.get(m)}")
        finally:
            engine.dispose()
        requests = self.recipient.requests
        keys = [r.idempotency_key for r in requests if r.idempotency_key]
        result.repeats = self.recipient.repeats
        result.foreign_keys = sum(1 for k in keys if k not in accepted)
        check = self.gw.cli("journal", "check", "--older-than", "30")
        result.journal_check = check.stdout.strip().splitlines()[-1] if check.stdout.strip() else check.stderr
        result.journal_check_ok = check.returncode == 0
        result.broken_trails = check.stdout.count("trail does not verify")
        return result

    def close(self) -> None:
        self.gw.stop()
        for p in (self.db_proxy, self.broker_proxy, self.recipient_proxy):
            p.close()
        self.recipient.stop()
        self._drop_db()


def run(bench: Bench, scenario: Scenario, directory: Path) -> Result:
    """Start the gateway, load it, apply the fault, and account for every accepted message."""
    r = Run(bench, scenario, directory)
    try:
        r.start()
        r.load = Load(r.gw.base, scenario.count, scenario.rate).start()
        r.wait_accepted(scenario.at)
        scenario.fault(r)
        r.fault_ended = time.monotonic()
        return r.settle()
    finally:
        r.close()


# ---- the scenarios of issue 13 ------------------------------------------------------------

def _cut(proxy_of: Callable[[Run], TcpProxy], seconds: float) -> Callable[[Run], None]:
    def fault(r: Run) -> None:
        proxy = proxy_of(r)
        proxy.cut()
        time.sleep(seconds)
        proxy.restore()
    return fault


def _broker_restart(r: Run) -> None:
    node = r.bench.node
    assert node is not None, "the broker restart needs the bench's own RabbitMQ node"
    node.stop_app()
    time.sleep(5)
    node.start_app()


def _kill(name: str) -> Callable[[Run], None]:
    return lambda r: r.restart(name)


def _stop_all_and_start(r: Run) -> None:
    r.gw.stop_processes(signal.SIGTERM)
    time.sleep(1.0)
    r.gw.procs.clear()
    r.gw.start()


def _recipient_503_then_down(r: Run) -> None:
    r.recipient.answer_with = 503
    time.sleep(60)
    r.recipient.answer_with = None
    r.recipient_proxy.cut()
    time.sleep(120)
    r.recipient_proxy.restore()


def _poison(r: Run) -> None:
    """One message whose copy on the broker cannot be read, among the load (see test_reconciliation)."""
    from sqlalchemy import update
    from sqlalchemy.engine import Connection

    from gateway.envelope import Envelope
    from gateway.journal import Journal, Stage, Status
    from gateway.journal.tables import messages
    from routing.broker import connect, properties

    env = Envelope.from_json(envelope_json("lab", "clinic"))
    journal = Journal(r.direct_db)

    def already_published(conn: Connection, _now: object) -> None:
        # In the accept transaction: the running relay must never see it ACCEPTED and publish a good copy.
        conn.execute(update(messages).where(messages.c.message_id == env.message_id)
                     .values(status=Status.PUBLISHED.value, stages=int(Stage.PUBLISHED)))

    journal.accept(env, source="rest", actor="fault-suite", route="lab-to-clinic", side_writes=[already_published])
    journal.engine.dispose()
    conn = connect(f"amqp://guest:guest@127.0.0.1:{r.bench.amqp_port}/%2F", "fault-poison", heartbeat=0)
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.basic_publish(f"{r.gw.prefix}.ingress", "route", b"<damaged",
                         properties(env.message_id, {"x-zl-generation": 0}), mandatory=True)
    finally:
        conn.close()
    assert r.load is not None
    r.load.accepted.append(env.message_id)  # accounted for like every other accepted message
    r.poison_id = env.message_id  # type: ignore[attr-defined]


SCENARIOS = [
    Scenario("database cut 10 s", _cut(lambda r: r.db_proxy, 10)),
    Scenario("database cut 60 s", _cut(lambda r: r.db_proxy, 60), settle_timeout=300),
    Scenario("broker connection cut 10 s", _cut(lambda r: r.broker_proxy, 10)),
    Scenario("RabbitMQ restarted", _broker_restart),
    Scenario("SIGKILL the API", _kill("api")),
    Scenario("SIGKILL the router", _kill("router")),
    Scenario("SIGKILL a delivery worker", _kill("delivery-1")),
    Scenario("SIGTERM everything, start again", _stop_all_and_start),
    Scenario("recipient 503 for 60 s, then down for 120 s", _recipient_503_then_down, at=100, rate=60.0,
             retry="attempts: 10, initial_delay: 1.0, multiplier: 2.0, jitter: 0.1, max_delay: 30.0, "
                   "max_total_seconds: 300", settle_timeout=300),
    Scenario("a poison message", _poison, expect_dead=1),
]
