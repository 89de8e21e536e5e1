"""Process entry points: the API with its outbox relay, the router, the delivery workers,
and the supervisor that runs them all.

This module wires the packages together, so it is the one place in ``gateway`` that
imports adapters, routing and monitoring; nothing else in ``gateway`` does.
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

from gateway.config import GatewayConfig, load_config
from gateway.journal import Journal
from gateway.keyring import KeyRing
from gateway.schemas import known_message_types

log = logging.getLogger("zdravlink")


def setup_logging(name: str) -> None:
    from monitoring.logs import configure  # ZL_LOG_FORMAT=json: one JSON object per line

    configure(name, os.environ.get("ZL_LOG_LEVEL", "INFO"))
    logging.getLogger("pika").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    # spyne logs every soap:Client fault it sends at ERROR with a traceback: a caller's mistake, which
    # the SMEV service already audits, and the emulators' "not found". Server faults stay logged.
    logging.getLogger("spyne.application.client").setLevel(logging.CRITICAL)


def config_dir(given: str | Path | None = None) -> Path:
    return Path(given or os.environ.get("ZL_CONFIG_DIR") or "config")


def load(directory: str | Path | None = None) -> GatewayConfig:
    return load_config(config_dir(directory), known_message_types=known_message_types())


def load_lab_mappings(config: GatewayConfig) -> dict:  # type: ignore[type-arg] (adapters is imported lazily)
    """Every lab mapping file in ``<config>/mappings``; raise ConfigError listing every problem."""
    from adapters.mapping.lab_mapping import load_mappings
    from gateway.config import ConfigError, ConfigProblem

    problems: list[ConfigProblem] = []
    found = load_mappings(config.directory, set(config.participants), problems)
    if problems:
        raise ConfigError(problems)
    return found


def _topology(config: GatewayConfig):  # noqa: ANN202 (routing is imported lazily)
    from routing.topology import Topology

    return Topology.of(config.settings.broker)


def declare_topology(config: GatewayConfig) -> None:
    from routing.broker import connect

    conn = connect(config.settings.broker.url, "zl-declare")
    try:
        _topology(config).declare(conn.channel(), config.participants)
    finally:
        conn.close()


def _on_term(stop: callable) -> None:  # type: ignore[valid-type]
    def handler(_signum: int, _frame: FrameType | None) -> None:
        stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def serve_api(config: GatewayConfig, keyring: KeyRing, *, migrate: bool = True) -> None:
    import uvicorn

    from a2wsgi import WSGIMiddleware

    from adapters.console import build_console
    from adapters.intake import Intake
    from adapters.rest.app import create_app
    from adapters.mapping.lab_service import LabResults
    from adapters.soap.smev_exchange import SmevExchange
    from adapters.soap.smev_service import SmevWsgi
    from gateway.journal.inbox import Inbox
    from gateway.accept import AcceptPipeline
    from monitoring.exposition import GatewayStateCollector
    from routing.inspect import BrokerInspector
    from routing.relay import OutboxRelay

    s = config.settings
    journal = Journal(s.database.url)
    if migrate:
        journal.migrate()
    topology = _topology(config)
    relay = OutboxRelay(journal, s.broker.url, topology, s.relay)
    inspector = BrokerInspector(s.broker.url, topology.all_queues(config.participants))

    def readiness() -> dict[str, bool]:
        try:
            journal.ping()
            journal_ok = True
        except Exception:
            journal_ok = False
        return {"journal": journal_ok, "broker": inspector.reachable()}

    intake = Intake(AcceptPipeline(config, journal, keyring), journal, on_accepted=relay.wake)
    inbox = Inbox(journal)
    mappings = load_lab_mappings(config)
    labs = LabResults(intake, mappings)
    smev = SmevWsgi(SmevExchange(config, intake, inbox, keyring, labs), s.api.max_body_bytes)
    certificates = [(owner, *certificate_labels(c.subject, c.serial, s.metrics.certificate_details), c.not_after)
                    for owner, c in keyring.owned_certificates()]
    app = create_app(intake=intake, journal=journal, max_body_bytes=s.api.max_body_bytes, readiness=readiness,
                     state=GatewayStateCollector(journal, inspector.depths, certificates), inbox=inbox,
                     keyring=keyring, lock_seconds=s.smev.pull_lock_seconds,
                     soap={"/smev/1.1": WSGIMiddleware(smev, workers=8)},
                     lab_results=labs, metrics=s.metrics, console=build_console(config, journal, intake, mappings))
    relay.start()
    server = uvicorn.Server(uvicorn.Config(app, host=s.api.host, port=s.api.port, log_level="warning",
                                           access_log=False, timeout_graceful_shutdown=5))
    sockets = [_listen(s.api.host, s.api.port)]
    if s.metrics.port is not None:  # /metrics on a listener of its own (adapters.rest.app._check_scrape)
        sockets.append(_listen(s.metrics.host, s.metrics.port))
    try:
        server.run(sockets=sockets)
    finally:
        relay.stop()


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def certificate_labels(subject: str, serial: str, details: bool) -> tuple[str, str]:
    """A certificate's labels on /metrics: its subject and serial, or a pseudonymous id that tells them apart."""
    if details:
        return subject, serial
    import hashlib

    return "hidden", hashlib.sha256(f"{subject}|{serial}".encode()).hexdigest()[:12]


def run_worker(config: GatewayConfig, keyring: KeyRing, kind: str) -> None:
    """Run the router, a delivery worker or the reconciler until SIGTERM."""
    import threading

    from routing.broker import ThreadPublisher
    from routing.consumer import Consumer, failure_in_trail
    from routing.deadletter import DeadLetterChannel
    from routing.journal_gate import JournalGate

    s = config.settings
    journal = Journal(s.database.url)
    topology = _topology(config)
    publisher = ThreadPublisher(s.broker.url, f"zl-{kind}")
    actor = f"{kind}:{os.getpid()}"
    dead = DeadLetterChannel(journal, topology, publisher, actor=actor)
    stopping = threading.Event()
    gate = JournalGate(journal, stopping, kind)
    declare = lambda ch: topology.declare(ch, config.participants)  # noqa: E731

    def consumer(queues: list[str], handler, prefetch: int = s.broker.prefetch) -> Consumer:  # noqa: ANN001
        return Consumer(s.broker.url, f"zl-{kind}", queues, handler, prefetch=prefetch, concurrency=prefetch,
                        on_connect=declare, gate=gate, on_failure=failure_in_trail(journal, actor))

    closers: list = []  # type: ignore[type-arg]
    if kind == "router":
        from routing.router import Router

        router = Router(config, journal, topology, s.broker.url, dead, max_batch=s.broker.prefetch)
        closers.append(router.close)
        run = consumer([topology.route_queue], router.handle)
    elif kind == "delivery":
        from routing.delivery import DeliveryWorker

        worker = DeliveryWorker(config, journal, topology, publisher, dead, keyring, gate=gate)
        closers.append(worker.close)
        run = consumer([topology.deliver_queue(p) for p in sorted(config.participants)], worker.handle)
    elif kind == "reconciler":
        from routing.inspect import BrokerInspector
        from routing.reconciler import Reconciler
        from routing.sweeper import Sweeper

        run = consumer([topology.poison_queue], Reconciler(config, journal, dead).handle, prefetch=4)
        inspector = BrokerInspector(s.broker.url, topology.all_queues(config.participants))
        sweeper = Sweeper(journal, topology, inspector.depths, s.reconciler.stuck_after_seconds)
        threading.Thread(target=_sweep_until, args=(sweeper, stopping, s.reconciler.sweep_interval_seconds),
                         name="sweeper", daemon=True).start()
    else:
        raise ValueError(f"unknown worker kind {kind!r}")
    _on_term(stopping.set)
    run.run()
    for close in closers:
        close()
    publisher.close()


def _sweep_until(sweeper, stopping, interval: float) -> None:  # noqa: ANN001 (routing is imported lazily)
    while not stopping.wait(interval):
        try:
            sweeper.sweep_once()
        except Exception:  # noqa: BLE001 - one failed pass must not end the sweeper
            log.exception("sweep failed")


def run_mllp(config: GatewayConfig, keyring: KeyRing, mappings: dict) -> None:  # type: ignore[type-arg]
    """Run the MLLP listener until SIGTERM; each message is mapped and journalled off the event loop."""
    import asyncio

    from adapters.hl7v2.ack import ack_for_error
    from adapters.hl7v2.lab_intake import LabIntake
    from adapters.hl7v2.mllp import MllpServer
    from adapters.intake import Intake
    from gateway.accept import AcceptPipeline
    from monitoring import metrics

    s = config.settings
    journal = Journal(s.database.url)
    labs = LabIntake(Intake(AcceptPipeline(config, journal, keyring), journal), mappings)

    async def handle(message: bytes, peer: str) -> bytes:
        return (await asyncio.to_thread(labs.handle, message, peer)).ack

    async def main() -> None:
        h = s.hl7
        server = MllpServer(handle, ack_for_error, h.host, h.port, idle_timeout=h.idle_timeout_seconds,
                            max_frame_bytes=h.max_frame_bytes or s.api.max_body_bytes,
                            max_connections=h.max_connections, frame_timeout=h.frame_timeout_seconds,
                            max_buffered_bytes=h.max_buffered_bytes,
                            on_refused=lambda reason: metrics.MLLP_REFUSED.labels(reason).inc())
        await server.start()
        log.info("MLLP listener on %s:%s for %s", s.hl7.host, server.port, ", ".join(sorted(mappings)) or "no lab")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await server.stop()

    asyncio.run(main())
    journal.engine.dispose()


def run_acts(config: GatewayConfig, keyring: KeyRing) -> None:
    """Build and send the previous month's acts on schedule (``acts`` in gateway.yaml) until SIGTERM."""
    import threading

    from adapters.acts.runner import ActRunner
    from adapters.acts.schedule import run_schedule
    from adapters.intake import Intake
    from gateway.accept import AcceptPipeline

    journal = Journal(config.settings.database.url)
    runner = ActRunner(config, journal, Intake(AcceptPipeline(config, journal, keyring), journal))
    stop = threading.Event()
    _on_term(stop.set)
    log.info("acts schedule: day %s from %02d:00", config.settings.acts.schedule_day, config.settings.acts.schedule_hour)
    run_schedule(runner, config.settings.acts, stop, interval=float(os.environ.get("ZL_ACTS_INTERVAL", "60")))
    journal.engine.dispose()


def run_deadlines(config: GatewayConfig, keyring: KeyRing) -> None:
    """Send TIMEOUT answers for registry requests past their deadline until SIGTERM."""
    import threading

    from adapters.intake import Intake
    from adapters.registries.deadlines import DeadlineWatcher
    from adapters.registries.replies import ReplySender
    from gateway.accept import AcceptPipeline

    journal = Journal(config.settings.database.url)
    watcher = DeadlineWatcher(config, journal, ReplySender(journal, Intake(AcceptPipeline(config, journal, keyring),
                                                                           journal)))
    stop = threading.Event()
    _on_term(stop.set)
    log.info("registry deadline watcher every %ss", config.settings.registries.deadline_poll_seconds)
    watcher.run(stop)
    journal.engine.dispose()


def has_registry_routes(config: GatewayConfig) -> bool:
    return any(c.mode == "registry" for r in config.routes for c in r.channels)


class Supervisor:
    """Starts the gateway's processes, restarts any that die, stops them all on SIGTERM."""

    def __init__(self, config: GatewayConfig, directory: Path, demo: bool) -> None:
        self.config = config
        self.directory = directory
        self.demo = demo
        self.stopping = False
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.metrics_dir = Path(os.environ.get("ZL_VAR_DIR", "var")) / "metrics"

    def _commands(self) -> dict[str, list[str]]:
        exe = [sys.executable, "-m", "gateway.cli"]
        cfg = ["--config", str(self.directory)]
        cmds = {"api": [*exe, "serve", *cfg, "--no-migrate"], "router": [*exe, "worker", "router", *cfg],
                "reconciler": [*exe, "worker", "reconciler", *cfg]}
        for i in range(self.config.settings.workers.delivery):
            cmds[f"delivery-{i + 1}"] = [*exe, "worker", "delivery", *cfg]
        if self.config.settings.acts.schedule_day is not None:
            cmds["acts"] = [*exe, "worker", "acts", *cfg]
        if has_registry_routes(self.config):
            cmds["deadlines"] = [*exe, "worker", "deadlines", *cfg]
        if self.config.settings.hl7.enabled and load_lab_mappings(self.config):
            cmds["mllp"] = [*exe, "worker", "mllp", *cfg]
        if self.demo:
            cmds["demo-partners"] = [*exe, "demo", "partners", *cfg]
        return cmds

    def _spawn(self, name: str, cmd: list[str]) -> None:
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(self.metrics_dir.resolve())}
        self.procs[name] = subprocess.Popen(cmd, env=env)

    def run(self) -> int:
        shutil.rmtree(self.metrics_dir, ignore_errors=True)
        self.metrics_dir.mkdir(parents=True)
        Journal(self.config.settings.database.url).migrate()
        declare_topology(self.config)
        commands = self._commands()
        for name, cmd in commands.items():
            self._spawn(name, cmd)
        _on_term(self.stop)
        while not self.stopping:
            time.sleep(0.5)
            for name, proc in list(self.procs.items()):
                if proc.poll() is not None and not self.stopping:
                    log.warning("%s exited with %s; restarting", name, proc.returncode)
                    from prometheus_client import multiprocess

                    multiprocess.mark_process_dead(proc.pid, str(self.metrics_dir))
                    time.sleep(1.0)
                    self._spawn(name, commands[name])
        return self._shutdown()

    def stop(self) -> None:
        self.stopping = True

    def _shutdown(self) -> int:
        log.info("stopping %s", ", ".join(self.procs))
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 10
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
        log.info("stopped")
        return 0
