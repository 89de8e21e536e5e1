"""The process roles: the API with its outbox relay, the router, delivery workers, the reconciler,
the MLLP listener, the acts schedule and the registry deadline watcher; each runs until SIGTERM.

Each role builds what it needs from the configuration (``application.wiring``) and
nothing more, so a host can run any of them alone. The duties that must run once
across every node (the sweeper, the registry deadline watcher, the acts schedule) run
under a lease (``gateway.once_only``): every node may start them, one runs them. Each also imports only what it runs
(the web stack for the API, the HL7 engine for MLLP, the accept pipeline where messages
are accepted), so a worker does not pay for the others' start-up.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from application.reachability import CannotListen
from application.wiring import intake, topology
from gateway.config import GatewayConfig
from gateway.journal import Journal
from gateway.journal.group_commit import GroupRecorder
from gateway.journal.leases import Leases
from gateway.keyring import KeyRing
from gateway.once_only import OnceOnly
from routing.broker import ThreadPublisher
from routing.consumer import Consumer, Handler, failure_in_trail
from routing.deadletter import DeadLetterChannel
from routing.inspect import BrokerInspector
from routing.journal_gate import JournalGate
from routing.sweeper import Sweeper

log = logging.getLogger("zdravlink")

#: What ``zdravlink worker KIND`` can run besides the API and the MLLP listener.
WORKER_KINDS = ("router", "delivery", "reconciler")


def once_only(config: GatewayConfig, journal: Journal, duty: str) -> OnceOnly:
    """The lease of ``duty`` for this process; its holder id names the node (``ZL_NODE_NAME``, else the host)."""
    from monitoring import metrics

    node = os.environ.get("ZL_NODE_NAME") or socket.gethostname()
    held = metrics.DUTY_HELD.labels(duty)
    held.set(0)
    return OnceOnly(Leases(journal), duty, f"{node}:{os.getpid()}", config.settings.leases,
                    on_change=lambda holds: held.set(int(holds)))


def on_term(stop: Callable[[], None]) -> None:
    def handler(_signum: int, _frame: FrameType | None) -> None:
        stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def serve_api(config: GatewayConfig, keyring: KeyRing, *, migrate: bool = True, relay_outbox: bool = True) -> None:
    """The REST API, the SMEV 3 endpoint and /metrics in one uvicorn server, with the outbox relay beside it."""
    import uvicorn
    from a2wsgi import WSGIMiddleware

    from adapters.console import build_console
    from adapters.mapping.lab_service import LabResults
    from adapters.rest.app import create_app
    from adapters.rest.tls import uvicorn_options
    from adapters.soap.smev_exchange import SmevExchange
    from adapters.soap.smev_service import SmevWsgi
    from application.runtime import load_lab_mappings
    from gateway.journal.inbox import Inbox
    from gateway.tls import server_context
    from gateway.transport import watched
    from monitoring.exposition import GatewayStateCollector, certificate_labels
    from routing.relay import OutboxRelay

    s = config.settings
    journal = Journal(s.database.url)
    if migrate:
        journal.migrate()
    topo = topology(config)
    relay = OutboxRelay(journal, s.broker.nodes, topo, s.relay)
    inspector = BrokerInspector(s.broker.nodes, topo.all_queues(config.participants))

    def readiness() -> dict[str, bool]:
        try:
            journal.ping()
            journal_ok = True
        except Exception:
            journal_ok = False
        return {"journal": journal_ok, "broker": inspector.reachable()}

    api_intake = intake(config, journal, keyring, from_partners=True, on_accepted=relay.wake)
    inbox = Inbox(journal)
    mappings = load_lab_mappings(config)
    labs = LabResults(api_intake, mappings)
    smev = SmevWsgi(SmevExchange(config, api_intake, inbox, keyring, labs), s.api.max_body_bytes)
    timestamp_alert_after = s.evidence.timestamp_alert_after_seconds if s.evidence.tsa_url else None
    certificates = [(owner, *certificate_labels(c.subject, c.serial, s.metrics.certificate_details), c.not_after)
                    for owner, c in keyring.owned_certificates()]
    dates = watched(config, keyring.owned_certificates(), keyring.trust)  # every certificate and CRL, TLS too
    app = create_app(intake=api_intake, journal=journal, max_body_bytes=s.api.max_body_bytes, readiness=readiness,
                     state=GatewayStateCollector(journal, inspector.depths, certificates, dates,
                                                 s.metrics.certificate_details, timestamp_alert_after),
                     inbox=inbox,
                     keyring=keyring, lock_seconds=s.smev.pull_lock_seconds,
                     soap={"/smev/1.1": WSGIMiddleware(smev, workers=8)},
                     lab_results=labs, metrics=s.metrics,
                     console=build_console(config, journal, api_intake, mappings))
    # Bound before the relay starts: a taken port stops this process before it publishes anything.
    sockets = [_listen("api", s.api.host, s.api.port)]
    if s.metrics.port is not None:  # /metrics on a listener of its own (adapters.rest.app._check_scrape)
        sockets.append(_listen("metrics", s.metrics.host, s.metrics.port))
    if relay_outbox:
        relay.start()
    # uvloop and httptools: the event loop and HTTP parser in C, measured in bench/bench_spine.py. Over TLS
    # the HTTP protocol is httptools' with the client certificate added to the scope (adapters.rest.tls).
    options: dict[str, object] = {"http": "httptools"}
    options.update(uvicorn_options(server_context(s.api.tls, config.directory) if s.api.tls else None))
    server = uvicorn.Server(uvicorn.Config(app, host=s.api.host, port=s.api.port, log_level="warning",
                                           access_log=False, timeout_graceful_shutdown=5, loop="uvloop",
                                           **options))  # type: ignore[arg-type]
    try:
        server.run(sockets=sockets)
    finally:
        relay.stop()


def _listen(section: str, host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # several API processes on one port
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise CannotListen(section, host, port, exc) from exc
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def run_worker(config: GatewayConfig, keyring: KeyRing, kind: str) -> None:
    """Run the router, a delivery worker or the reconciler (poison queue and sweeper) until SIGTERM."""
    s = config.settings
    journal = Journal(s.database.url)
    topo = topology(config)
    publisher = ThreadPublisher(s.broker.nodes, f"zl-{kind}")
    actor = f"{kind}:{os.getpid()}"
    recorder = GroupRecorder(journal)  # the events of all this worker's threads, committed together
    dead = DeadLetterChannel(journal, topo, publisher, actor=actor, recorder=recorder)
    stopping = threading.Event()
    gate = JournalGate(journal, stopping, kind)

    def consumer(queues: list[str], handler: Handler, prefetch: int = s.broker.prefetch) -> Consumer:
        return Consumer(s.broker.nodes, f"zl-{kind}", queues, handler, prefetch=prefetch, concurrency=prefetch,
                        on_connect=lambda ch: topo.declare(ch, config.participants), gate=gate,
                        on_failure=failure_in_trail(journal, actor))

    closers: list[Callable[[], None]] = []
    if kind == "router":
        from routing.router import Router

        router = Router(config, journal, topo, s.broker.nodes, dead, max_batch=s.broker.router_prefetch)
        closers.append(router.close)
        run = consumer([topo.route_queue], router.handle, prefetch=s.broker.router_prefetch)
    elif kind == "delivery":
        from application.wiring import delivery_channels
        from routing.delivery import DeliveryWorker

        worker = DeliveryWorker(config, journal, topo, publisher, dead, delivery_channels(config, journal, keyring),
                                keyring, gate=gate, recorder=recorder)
        closers.append(worker.close)
        run = consumer([topo.deliver_queue(p) for p in sorted(config.participants)], worker.handle)
    elif kind == "reconciler":
        from routing.reconciler import Reconciler

        run = consumer([topo.poison_queue], Reconciler(config, journal, dead).handle, prefetch=4)
        inspector = BrokerInspector(s.broker.nodes, topo.all_queues(config.participants))
        sweeper = Sweeper(journal, topo, inspector.looks, s.reconciler.stuck_after_seconds,
                          confirm_after_seconds=s.delivery.timeout_seconds)
        # The poison queue's consumers compete (RabbitMQ hands each message to one); the sweeper runs once.
        lease = once_only(config, journal, "sweeper")
        threading.Thread(target=lease.run, name="sweeper-lease", daemon=True, args=(
            lambda lost: _sweep_until(sweeper, lost, s.reconciler.sweep_interval_seconds), stopping)).start()
        if s.evidence.enabled:  # sealing, checkpoints and pruning: once per deployment, as the sweeper
            from gateway.evidence.duty import EvidenceDuty

            duty = EvidenceDuty.of(config, journal, keyring.signer)
            threading.Thread(target=once_only(config, journal, "evidence").run, args=(duty.run, stopping),
                             name="evidence-lease", daemon=True).start()
    else:
        raise ValueError(f"unknown worker kind {kind!r} (one of {', '.join(WORKER_KINDS)})")
    on_term(stopping.set)
    run.run()
    for close in closers:
        close()
    recorder.close()
    publisher.close()


def _sweep_until(sweeper: Sweeper, stopping: threading.Event, interval: float) -> None:
    while not stopping.wait(interval):
        try:
            sweeper.sweep_once()
        except Exception:
            log.exception("sweep failed")


def run_mllp(config: GatewayConfig, keyring: KeyRing, mappings: dict[str, Any]) -> None:
    """Run the MLLP listener until SIGTERM; each message is mapped and journalled off the event loop."""
    from adapters.hl7v2.ack import ack_for_error
    from adapters.hl7v2.lab_intake import LabIntake
    from adapters.hl7v2.mllp import MllpServer
    from adapters.hl7v2.mllp_security import MllpSecurity
    from application.wiring import intake
    from gateway.tls import transport_label
    from monitoring import metrics

    s = config.settings
    journal = Journal(s.database.url)
    labs = LabIntake(intake(config, journal, keyring, from_partners=True), mappings)
    guard = MllpSecurity(config, labs.intake)  # TLS, each lab's client certificate, rate limits (paced ACKs)

    async def handle(message: bytes, peer: str) -> bytes:
        return await guard.paced(await asyncio.to_thread(labs.handle, message, peer), len(message))

    async def main() -> None:
        h = s.hl7
        server = MllpServer(handle, ack_for_error, h.host, h.port, idle_timeout=h.idle_timeout_seconds,
                            max_frame_bytes=h.max_frame_bytes or s.api.max_body_bytes,
                            max_connections=h.max_connections, frame_timeout=h.frame_timeout_seconds,
                            max_buffered_bytes=h.max_buffered_bytes,
                            on_refused=lambda reason: metrics.MLLP_REFUSED.labels(reason).inc(),
                            tls=guard.tls, on_connect=guard.on_connect)
        try:
            await server.start()
        except OSError as exc:
            raise CannotListen("hl7", h.host, h.port, exc) from exc
        log.info("MLLP listener on %s:%s (%s) for %s", h.host, server.port, transport_label(h.tls, h.plain),
                 ", ".join(sorted(mappings)) or "no lab")
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
    from adapters.acts.runner import ActRunner
    from adapters.acts.schedule import run_schedule

    journal = Journal(config.settings.database.url)
    runner = ActRunner(config, journal, intake(config, journal, keyring))
    stop = threading.Event()
    on_term(stop.set)
    acts = config.settings.acts
    log.info("acts schedule: day %s from %02d:00", acts.schedule_day, acts.schedule_hour)
    interval = float(os.environ.get("ZL_ACTS_INTERVAL", "60"))
    once_only(config, journal, "acts").run(lambda lost: run_schedule(runner, acts, lost, interval=interval), stop)
    journal.engine.dispose()


def run_deadlines(config: GatewayConfig, keyring: KeyRing) -> None:
    """Send TIMEOUT answers for registry requests past their deadline until SIGTERM."""
    from adapters.registries.deadlines import DeadlineWatcher
    from adapters.registries.replies import ReplySender

    journal = Journal(config.settings.database.url)
    watcher = DeadlineWatcher(config, journal, ReplySender(journal, intake(config, journal, keyring)))
    stop = threading.Event()
    on_term(stop.set)
    log.info("registry deadline watcher every %ss", config.settings.registries.deadline_poll_seconds)
    once_only(config, journal, "deadlines").run(watcher.run, stop)
    journal.engine.dispose()
