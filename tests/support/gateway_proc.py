"""Run the gateway's real processes for a test and talk to them over HTTP."""
from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Collection
from pathlib import Path
from typing import Any

import httpx

from demo.emulators.rest_recipient import Received, RecipientServer
from routing.broker import connect
from routing.topology import Topology
from tests.support.launcher import Launched, launch, run
from tests.support.queues import ready_in
from tests.support.waiting import pauses

REPO = Path(__file__).resolve().parents[2]
NOTICE_NS = "urn://zdravlink/types/notice/1.0"


def notice(code: str = "SAMPLE_RECEIVED", text: str = "Образец получен", snils: str | None = None) -> str:
    subject = f"<n:Subject><n:SNILS>{snils}</n:SNILS></n:Subject>" if snils else ""
    return (f'<n:Notice xmlns:n="{NOTICE_NS}"><n:Code>{code}</n:Code><n:IssuedAt>2026-11-22T10:00:00Z</n:IssuedAt>'
            f"{subject}<n:Text>{text}</n:Text></n:Notice>")


def envelope_json(sender: str, recipient: str, payload: str | None = None, message_id: str | None = None) -> dict:
    return {"messageId": message_id or str(uuid.uuid1()), "sender": sender, "recipient": recipient,
            "messageType": NOTICE_NS, "payload": payload or notice()}


class GatewayProcesses:
    def __init__(self, directory: Path, participants: str, routes: str, *, settings: str, amqp_url: str,
                 db_url: str | None, api_port: int, delivery_workers: int, mappings: Path | None = None,
                 mllp_port: int | None = None, tariffs: Path | None = None, oms: Path | None = None,
                 files: dict[str, str] | None = None, reconciler: bool = False) -> None:
        """``reconciler``: run the reconciler and sweeper too (tests of what they do; the others spare its start)."""
        import shutil

        self.dir = directory
        self.dir.mkdir(parents=True)
        if mappings is not None:
            shutil.copytree(mappings, self.dir / "mappings")
        if tariffs is not None:
            shutil.copytree(tariffs, self.dir / "tariffs")
        if oms is not None:  # region profiles and insurer bindings (docs/service-acts.md)
            shutil.copytree(oms, self.dir / "oms")
        self.mllp_port = mllp_port
        (self.dir / "participants.yaml").write_text(participants)
        (self.dir / "routes.yaml").write_text(routes)
        (self.dir / "gateway.yaml").write_text(settings)
        for name, text in (files or {}).items():  # more configuration files (operators.yaml …)
            (self.dir / name).write_text(text)
        self.prefix = f"zlt-{uuid.uuid4().hex[:8]}"
        self.amqp_url = amqp_url
        self.db_url = db_url or f"sqlite:///{self.dir / 'journal.db'}"
        self.port = api_port
        self.base = f"http://127.0.0.1:{api_port}"
        self.delivery_workers = delivery_workers
        self.reconciler = reconciler
        self.procs: dict[str, Launched | subprocess.Popen[bytes]] = {}
        self.env = {
            **os.environ,
            "ZL_DATABASE_URL": self.db_url,
            "ZL_AMQP_URL": amqp_url,
            "ZL_BROKER_PREFIX": self.prefix,
            "ZL_API_PORT": str(api_port),
            **({"ZL_MLLP_PORT": str(mllp_port)} if mllp_port else {}),
            "PROMETHEUS_MULTIPROC_DIR": str(self.dir / "metrics"),
            "ZL_RUN_DIR": str(self.dir / "run"),
            "ZL_LOG_LEVEL": "INFO",
        }
        (self.dir / "metrics").mkdir()
        self.http = httpx.Client(base_url=self.base, timeout=10)

    # ---- processes ------------------------------------------------------

    def spawn(self, name: str) -> Launched | subprocess.Popen[bytes]:
        args = {"api": ("serve",), "router": ("worker", "router"), "mllp": ("worker", "mllp"),
                "acts": ("worker", "acts"), "deadlines": ("worker", "deadlines"),
                "reconciler": ("worker", "reconciler")}.get(
            name, ("serve", "--no-migrate") if name.startswith("api-") else ("worker", "delivery"))
        proc = launch([*args, "--config", str(self.dir)], env=self.env, cwd=REPO, log=self.dir / f"{name}.log")
        self.procs[name] = proc
        return proc

    def start(self) -> None:
        self.spawn("api")
        self.wait_ready()
        self.spawn("router")
        if self.reconciler:
            self.spawn("reconciler")
        for i in range(self.delivery_workers):
            self.spawn(f"delivery-{i + 1}")
        if self._asks_registries():
            self.spawn("deadlines")
        if self.mllp_port:
            self.spawn("mllp")
            self.wait_port(self.mllp_port, "mllp")

    def _asks_registries(self) -> bool:
        from application.runtime import has_registry_routes
        from gateway.config import load_config

        return has_registry_routes(load_config(self.dir))

    def wait_port(self, port: int, name: str, timeout: float = 30) -> None:
        import socket

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.procs[name].poll() is not None:
                raise RuntimeError(f"{name} exited: {self.log(name)}")
            try:
                socket.create_connection(("127.0.0.1", port), 0.5).close()
                return
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(f"{name} not listening on {port}: {self.log(name)}")

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.procs["api"].poll() is not None:
                raise RuntimeError(f"API exited: {self.log('api')}")
            try:
                if self.http.get("/healthz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"API not up: {self.log('api')}")

    def kill(self, name: str, sig: int = signal.SIGKILL) -> int:
        proc = self.procs[name]
        proc.send_signal(sig)
        return proc.wait(15)

    def log(self, name: str) -> str:
        path = self.dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop_processes(self, sig: int = signal.SIGTERM) -> None:
        """Stop every process (as ``zdravlink run`` does on SIGTERM); ``start()`` brings them back."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(sig)
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def stop(self) -> None:
        # The client's keep-alive connection first: a TLS listener otherwise waits out its graceful
        # shutdown (5 s) for a peer that never answers its close_notify.
        self.http.close()
        self.stop_processes()
        self.delete_topology()

    def delete_topology(self) -> None:
        delete_topology(self.amqp_url, self.prefix, self._participants())

    def _participants(self) -> list[str]:
        import yaml

        data = yaml.safe_load((self.dir / "participants.yaml").read_text())
        return [p["mnemonic"] for p in data.get("participants", [])]

    # ---- API --------------------------------------------------------------

    def post(self, body: dict[str, Any] | bytes, token: str, content_type: str | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"}
        if isinstance(body, dict):
            return self.http.post("/api/v1/messages", json=body, headers=headers)
        headers["Content-Type"] = content_type or "application/xml"
        return self.http.post("/api/v1/messages", content=body, headers=headers)

    def status(self, message_id: str, token: str) -> dict[str, Any]:
        r = self.http.get(f"/api/v1/messages/{message_id}", headers={"Authorization": f"Bearer {token}"})
        r.raise_for_status()
        return r.json()

    def wait_status(self, message_id: str, token: str, want: str, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last: dict[str, Any] = {}
        for pause in pauses():
            last = self.status(message_id, token)
            if last["status"] == want or time.monotonic() >= deadline:
                break
            time.sleep(pause)
        if last["status"] == want:
            return last
        raise AssertionError(f"{message_id} stayed {last.get('status')} (wanted {want}); trail: "
                             f"{[e['event'] for e in last.get('trail', [])]}\n{self.log('delivery-1')[-3000:]}")

    def ready_in(self, queue: str) -> int:
        """Messages ready in one of this gateway's queues (``Topology``'s name, e.g. ``deliver_queue("clinic")``)."""
        return ready_in(self.amqp_url, queue)

    def cli(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """``env``: variables over the gateway's own, for one command."""
        return run([*args, "--config", str(self.dir)], env={**self.env, **(env or {})}, cwd=REPO, timeout=60)

    def metrics(self) -> str:
        return self.http.get("/metrics").text

    def samples(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        """Every sample on /metrics now, by name and labels."""
        from prometheus_client.parser import text_string_to_metric_families

        return {(sample.name, frozenset(sample.labels.items())): sample.value
                for family in text_string_to_metric_families(self.metrics()) for sample in family.samples}

    def counted(self, name: str, **labels: str) -> float:
        """A counter's sample now (0 before its first count): tests on a gateway shared by their module
        compare it before and after, as the other tests count into the same counters."""
        return self.samples().get((name, frozenset(labels.items())), 0.0)


def delivered(recipient: RecipientServer, message_ids: Collection[str]) -> list[Received]:
    """The recipient's requests for these MessageIDs (repeats and refused attempts included), in the order they
    came: on a gateway shared by a module, a test counts and reads only its own messages' deliveries, so that
    no other test's (some of them late: a retry, a busy worker) can fail or pass it."""
    wanted = set(message_ids)
    return [r for r in list(recipient.requests) if r.message_id in wanted]


def delete_topology(amqp_url: str, prefix: str, participants: list[str]) -> None:
    """Remove a test gateway's queues and exchanges from the shared broker."""
    try:
        conn = connect(amqp_url, "zl-test-cleanup", heartbeat=0)
    except Exception:
        return
    topo = Topology(prefix)
    try:
        ch = conn.channel()
        for q in topo.all_queues(participants):
            ch.queue_delete(q)
        for x in topo.all_exchanges():
            ch.exchange_delete(x)
    except Exception:
        pass
    finally:
        try:
            conn.close()
        except Exception:
            pass
