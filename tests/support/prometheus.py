"""A real Prometheus (Debian's ``prometheus`` package) for a test: its own port, storage and config."""
from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "monitoring" / "prometheus" / "alerts.yml"


def binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} is not installed: scripts/test installs Debian's prometheus package")
    return found


class Prometheus:
    """Scrapes one target every second and evaluates ``alerts.yml`` every second.

    ``pending_for`` shortens the ``for:`` of the named alerts in this Prometheus' copy of the rules:
    the shipped durations are checked in virtual time by ``alerts_test.yml`` (promtool), and a real
    Prometheus need not be watched for a whole minute to show that the same rule fires.
    """

    def __init__(self, directory: Path, port: int, target: str, token: str | None = None,
                 pending_for: dict[str, str] | None = None) -> None:
        self.dir, self.port = directory, port
        self.base = f"http://127.0.0.1:{port}"
        scrape: dict[str, Any] = {"job_name": "zdravlink", "scrape_interval": "1s", "static_configs": [
            {"targets": [target]}]}
        if token is not None:  # the gateway's metrics.token_sha256: Prometheus sends the token as a bearer
            scrape["authorization"] = {"type": "Bearer", "credentials": token}
        config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                  "rule_files": [str(self._rules(pending_for or {}))], "scrape_configs": [scrape]}
        (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.proc: subprocess.Popen[bytes] | None = None

    def _rules(self, pending_for: dict[str, str]) -> Path:
        rules = yaml.safe_load(RULES.read_text())
        alerts = {r["alert"]: r for g in rules["groups"] for r in g["rules"] if "alert" in r}
        for name, duration in pending_for.items():
            alerts[name]["for"] = duration  # a KeyError names an alert the shipped rules do not have
        path = self.dir / "alerts.yml"
        path.write_text(yaml.safe_dump(rules, allow_unicode=True, sort_keys=False))
        return path

    def start(self) -> Prometheus:
        log = open(self.dir / "prometheus.log", "ab")
        self.proc = subprocess.Popen(
            [binary("prometheus"), f"--config.file={self.dir / 'prometheus.yml'}",
             f"--storage.tsdb.path={self.dir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.base}/-/ready", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"prometheus not ready: {(self.dir / 'prometheus.log').read_text()[-2000:]}")

    def get(self, path: str, **params: str) -> Any:
        return httpx.get(f"{self.base}{path}", params=params, timeout=5).json()["data"]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
