"""The supervisor behind ``zdravlink run``: starts the gateway's processes, restarts any that dies,
stops them all on SIGTERM, and says when the gateway is ready.

Every role runs as its own ``python -m application.cli`` process, as it would under
systemd (deploy/), so one process dying never takes another with it. A plugin (the demo)
adds processes of its own through ``extra``.

A host of a deployment with several nodes runs the roles it should (``zdravlink run
--role api,delivery``; docs/scaling.md): ``api`` (the API processes, each with a relay
on PostgreSQL), ``router``, ``delivery`` (``workers.delivery`` workers), ``mllp`` and
``scheduler`` (the reconciler, the registry deadline watcher and the acts schedule).
Any number of hosts may run any role: the journal's outbox is shared, the queues'
consumers compete, and what must run once runs under a lease (``gateway.once_only``).
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from prometheus_client import multiprocess

from application.roles import on_term
from application.runtime import has_registry_routes, load_lab_mappings
from application.wiring import declare_topology
from gateway.config import GatewayConfig
from gateway.journal import Journal

log = logging.getLogger("zdravlink")


#: The roles a host can run (``zdravlink run --role``), all of them by default.
ROLES = ("api", "router", "delivery", "mllp", "scheduler")


def parse_roles(given: str | None) -> tuple[str, ...]:
    """``api,router`` → the roles in their canonical order; None or empty → every role."""
    if not given or not given.strip():
        return ROLES
    asked = {r.strip() for r in given.split(",") if r.strip()}
    unknown = sorted(asked - set(ROLES))
    if unknown:
        raise ValueError(f"unknown role {', '.join(map(repr, unknown))} (roles: {', '.join(ROLES)})")
    return tuple(r for r in ROLES if r in asked)


def commands(config: GatewayConfig, directory: Path, roles: tuple[str, ...] = ROLES) -> dict[str, list[str]]:
    """The processes of the given roles of a gateway on this host, by name."""
    exe = [sys.executable, "-m", "application.cli"]
    cfg = ["--config", str(directory)]
    cmds: dict[str, list[str]] = {}
    if "api" in roles:
        shared_outbox = not config.settings.database.url.startswith("sqlite")
        for i in range(config.settings.api.processes):
            relay = [] if i == 0 or shared_outbox else ["--no-relay"]  # SQLite: one relay per journal
            cmds["api" if i == 0 else f"api-{i + 1}"] = [*exe, "serve", *cfg, "--no-migrate", *relay]
    if "router" in roles:
        cmds["router"] = [*exe, "worker", "router", *cfg]
    if "delivery" in roles:
        for i in range(config.settings.workers.delivery):
            cmds[f"delivery-{i + 1}"] = [*exe, "worker", "delivery", *cfg]
    if "scheduler" in roles:  # each duty runs under its lease: on one node of all that run this role
        cmds["reconciler"] = [*exe, "worker", "reconciler", *cfg]
        if config.settings.acts.schedule_day is not None:
            cmds["acts"] = [*exe, "worker", "acts", *cfg]
        if has_registry_routes(config):
            cmds["deadlines"] = [*exe, "worker", "deadlines", *cfg]
    if "mllp" in roles and config.settings.hl7.enabled and load_lab_mappings(config):
        cmds["mllp"] = [*exe, "worker", "mllp", *cfg]
    return cmds


class Supervisor:
    def __init__(self, config: GatewayConfig, directory: Path, extra: dict[str, list[str]] | None = None,
                 on_ready: Callable[[], None] | None = None, roles: tuple[str, ...] = ROLES) -> None:
        self.config = config
        self.directory = directory
        self.roles = roles
        self.commands = {**commands(config, directory, roles), **(extra or {})}
        self.on_ready = on_ready
        self.stopping = False
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        var = Path(os.environ.get("ZL_VAR_DIR", "var"))
        self.metrics_dir = var / "metrics"
        #: What this host's processes share besides metrics (rate limit buckets); emptied at each start.
        self.run_dir = var / "run"

    def _spawn(self, name: str) -> None:
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(self.metrics_dir.resolve()),
               "ZL_RUN_DIR": str(self.run_dir.resolve())}
        self.procs[name] = subprocess.Popen(self.commands[name], env=env)

    def run(self) -> int:
        for shared in (self.metrics_dir, self.run_dir):
            shutil.rmtree(shared, ignore_errors=True)
            shared.mkdir(parents=True)
        Journal(self.config.settings.database.url).migrate()
        declare_topology(self.config)
        for name in self.commands:
            self._spawn(name)
        on_term(self.stop)
        ready = False
        while not self.stopping:
            time.sleep(0.5)
            if not ready and self._ready():
                ready = True
                log.info("the gateway is ready")
                if self.on_ready:
                    self.on_ready()
            for name, proc in list(self.procs.items()):
                if proc.poll() is not None and not self.stopping:
                    log.warning("%s exited with %s; restarting", name, proc.returncode)
                    multiprocess.mark_process_dead(proc.pid, str(self.metrics_dir))
                    time.sleep(1.0)
                    self._spawn(name)
        return self._shutdown()

    def _ready(self) -> bool:
        """The API answers /readyz with 200: the journal and the broker are there. A host without the API
        is ready once its processes have started (the journal and the topology were there before)."""
        if "api" not in self.roles:
            return all(proc.poll() is None for proc in self.procs.values())
        s = self.config.settings.api
        host = "127.0.0.1" if s.host in ("0.0.0.0", "::") else s.host
        if s.tls is not None and getattr(self, "_probe_tls", None) is None:
            from gateway.tls import self_probe_context

            self._probe_tls = self_probe_context(s.tls, self.config.directory)
        scheme, verify = ("https", self._probe_tls) if s.tls is not None else ("http", True)
        try:
            return httpx.get(f"{scheme}://{host}:{s.port}/readyz", timeout=1, verify=verify).status_code == 200
        except httpx.HTTPError:
            return False

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
