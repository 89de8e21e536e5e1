"""A real Prometheus scrapes a real gateway with the shipped alert rules, and the dead-letter alert fires.

Prometheus asks for OpenMetrics first, so a target that is "up" here is an exposition
Prometheus' own strict parser took. The gateway requires a scrape token
(``metrics.token_sha256``), as a deployment beyond loopback would; Prometheus is given it.
"""
from __future__ import annotations

import json
import re
import subprocess
import time

import pytest
import yaml

from demo.emulators.rest_recipient import RecipientServer
from gateway.config import hash_token
from tests.support import configs
from tests.support.configs import LAB_TOKEN
from tests.support.gateway_proc import REPO, envelope_json
from tests.support.ports import free_port
from tests.support.prometheus import RULES, Prometheus, binary

pytestmark = pytest.mark.broker
TOKEN = "prometheus-scrape-secret"


def test_promtool_accepts_the_rules_and_the_dashboard_uses_only_metrics_the_gateway_has() -> None:
    checked = subprocess.run([binary("promtool"), "check", "rules", str(RULES)], capture_output=True, text=True)
    assert checked.returncode == 0 and "SUCCESS: 10 rules found" in checked.stdout, checked.stdout + checked.stderr
    dashboard = json.loads((REPO / "monitoring" / "grafana" / "zdravlink.json").read_text())
    used = {m for p in dashboard["panels"] for t in p["targets"] for m in re.findall(r"\b(zl_[a-z_]+)", t["expr"])}
    source = (REPO / "monitoring" / "metrics.py").read_text() + (REPO / "monitoring" / "exposition.py").read_text()
    for metric in used:
        base = re.sub(r"_(bucket|total)$", "", metric)
        assert f'"{metric}"' in source or f'"{base}"' in source or f'"{base}_total"' in source, metric
    # Every node reports the same journal- and broker-wide gauges: summed over nodes they would count twice.
    shared = ("zl_dead_messages", "zl_queue_depth", "zl_messages_in_flight", "zl_relay_lag_seconds",
              "zl_oldest_in_flight_age_seconds")
    summed = [t["expr"] for p in dashboard["panels"] for t in p["targets"]
              if re.match(r"\s*sum\b", t["expr"]) and any(g in t["expr"] for g in shared)]
    assert not summed, summed


def test_the_scrape_configuration_for_n_nodes_is_valid_and_the_rules_aggregate_across_nodes(tmp_path) -> None:
    """monitoring/prometheus/prometheus.yml as shipped (its token file beside it, as a deployment has it), and the
    rules' own unit tests on two nodes (alerts_test.yml): one alert for what the journal says, one per node for
    what is the node's."""
    shipped = RULES.parent
    for name in ("prometheus.yml", "alerts.yml", "alerts_test.yml"):
        (tmp_path / name).write_text((shipped / name).read_text())
    (tmp_path / "zdravlink-scrape.token").write_text("a-scrape-token\n")
    checked = subprocess.run([binary("promtool"), "check", "config", str(tmp_path / "prometheus.yml")],
                             capture_output=True, text=True)
    assert checked.returncode == 0 and "SUCCESS: 10 rules found" in checked.stdout, checked.stdout + checked.stderr
    config = yaml.safe_load((shipped / "prometheus.yml").read_text())
    [job] = config["scrape_configs"]
    assert job["job_name"] == "zdravlink" and len(job["static_configs"][0]["targets"]) > 1
    tested = subprocess.run([binary("promtool"), "test", "rules", str(tmp_path / "alerts_test.yml")],
                            capture_output=True, text=True)
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr


def test_a_forced_dead_letter_fires_the_dead_letter_alert_in_a_real_prometheus(gateway_factory, tmp_path) -> None:
    clinic = RecipientServer(name="clinic").start()
    clinic.answer_with = 400  # a permanent refusal: DEAD at once, no retries to wait for
    prometheus = None
    try:
        gw = gateway_factory(configs.participants(clinic.url), configs.routes(attempts=1),
                             settings=configs.settings() + f'metrics: {{token_sha256: ["{hash_token(TOKEN)}"]}}\n')
        # The shipped "for: 1m" is alerts_test.yml's to check, in virtual time; here the same rule, pending 5 s.
        prometheus = Prometheus(tmp_path, free_port(), f"127.0.0.1:{gw.port}", token=TOKEN,
                                pending_for={"ZdravlinkDeadLetters": "5s"}).start()
        _wait(lambda: _target_up(prometheus), "the gateway scraped (OpenMetrics parsed, token accepted)")
        assert not _alert(prometheus, "ZdravlinkDeadLetters")
        body = envelope_json("lab", "clinic")
        gw.post(body, LAB_TOKEN).raise_for_status()
        gw.wait_status(body["messageId"], LAB_TOKEN, "DEAD")
        _wait(lambda: _alert(prometheus, "ZdravlinkDeadLetters") == "pending", "the alert pending", 30)
        _wait(lambda: _alert(prometheus, "ZdravlinkDeadLetters") == "firing", "the alert firing (for: 5s)", 60)
        firing = [a for a in prometheus.get("/api/v1/alerts")["alerts"] if a["state"] == "firing"]
        assert [a["labels"]["alertname"] for a in firing] == ["ZdravlinkDeadLetters"], firing  # nothing else wrong
        assert firing[0]["annotations"]["summary"].startswith("1 message(s) DEAD")
    finally:
        if prometheus is not None:
            prometheus.stop()
        clinic.stop()


def _target_up(prometheus: Prometheus) -> bool:
    targets = prometheus.get("/api/v1/targets")["activeTargets"]
    return bool(targets) and targets[0]["health"] == "up"


def _alert(prometheus: Prometheus, name: str) -> str | None:
    for alert in prometheus.get("/api/v1/alerts")["alerts"]:
        if alert["labels"]["alertname"] == name:
            return str(alert["state"])
    return None


def _wait(check, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(f"waited {timeout:.0f} s for {what}")
