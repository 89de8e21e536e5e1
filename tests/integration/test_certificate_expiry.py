"""Certificate expiry watched: every certificate and CRL date on /metrics in seconds, check-config warns at
30 days, and the shipped alert rule fires on a TLS certificate (promtool's rule tests, the real evaluator).
"""
from __future__ import annotations

import datetime as dt
import shutil
import subprocess
from pathlib import Path

import yaml

from demo.ca import DemoCA
from gateway.config import load_config
from gateway.keyring import load_keyring
from gateway.transport import expiring, watched
from monitoring.exposition import GatewayStateCollector
from tests.support import configs
from tests.support.cli import zdravlink
from tests.support.prometheus import RULES, binary


def tls_config(tmp: Path, demo_keys: Path, days_left: float) -> Path:
    """A configuration whose API serves a TLS certificate with ``days_left`` days to go, with a client CA store
    (CA and CRL), a participant's client certificate and a channel's client certificate and CA file."""
    ca = DemoCA.create(tmp / "tls-ca", key_type="rsa", subject="/O=Zdravlink demo/CN=Expiry TLS CA")
    now = dt.datetime.now(dt.UTC)
    ca.issue(tmp, "api", "rsa", tls="server", not_before=now - dt.timedelta(days=1),
             not_after=now + dt.timedelta(days=days_left))
    ca.issue(tmp, "lab", "rsa", tls="client")
    ca.issue(tmp, "out", "rsa", tls="client")
    (tmp / "clients").mkdir()
    shutil.copyfile(ca.cert, tmp / "clients" / "ca.pem")
    ca.write_crl(tmp / "clients" / "ca.crl")
    cfg = tmp / "config"
    cfg.mkdir()
    tls = (f'tls: {{certificate: "{tmp / "api-rsa.pem"}", key: "{tmp / "api-rsa.key"}", '
           f'client_ca: "{tmp / "clients"}"}}')
    (cfg / "gateway.yaml").write_text(configs.settings(keys=demo_keys).replace(
        "api: {max_body_bytes: 1048576}", f"api: {{max_body_bytes: 1048576, {tls}}}"))
    participants = configs.participants("https://localhost:9/inbox", keys=demo_keys).replace(
        "delivery: {mode: rest, url: \"https://localhost:9/inbox\", format: xml}",
        f'delivery: {{mode: rest, url: "https://localhost:9/inbox", tls: {{ca: ["{ca.cert}"], '
        f'certificate: "{tmp / "out-rsa.pem"}", key: "{tmp / "out-rsa.key"}"}}}}')
    data = yaml.safe_load(participants)
    data["participants"][0]["credentials"]["client_certificates"] = [{"file": str(tmp / "lab-rsa.pem")}]
    (cfg / "participants.yaml").write_text(yaml.safe_dump(data, allow_unicode=True))
    (cfg / "routes.yaml").write_text(configs.routes())
    return cfg


def test_every_certificate_and_crl_is_watched_and_served_in_seconds(tmp_path, demo_keys):
    cfg = load_config(tls_config(tmp_path, demo_keys, days_left=10))
    ring = load_keyring(cfg)
    dates = watched(cfg, ring.owned_certificates(), ring.trust)
    kinds = {w.kind for w in dates}
    assert kinds == {"signing", "participant-signing", "trust-store", "crl", "tls-server", "tls-client-ca",
                     "client-certificate", "channel-client", "channel-ca"}, kinds
    api = next(w for w in dates if w.kind == "tls-server")
    assert api.owner == "gateway:api" and 9 * 86400 < api.seconds_left() < 10 * 86400
    assert [w.kind for w in expiring(dates)] == ["tls-server"]
    assert {w.owner for w in dates if w.kind == "crl"} == {"trust-store", "clients:api"}
    collector = GatewayStateCollector(journal=None, queue_depths=dict, watched=dates)  # type: ignore[arg-type]
    family = next(m for m in collector.collect() if m.name == "zl_certificate_expiry_seconds")
    served = {(s.labels["owner"], s.labels["kind"]): s.value for s in family.samples}
    assert 9 * 86400 < served[("gateway:api", "tls-server")] < 10 * 86400
    assert set(served) >= {("clients:api", "crl"), ("lab", "client-certificate"), ("channel:default", "channel-ca")}
    assert {s.labels["subject"] for s in family.samples} == {"hidden"}  # pseudonymous unless certificate_details


def test_check_config_warns_at_30_days(tmp_path, demo_keys):
    soon = zdravlink("check-config", str(tls_config(tmp_path / "a", demo_keys, days_left=10)))
    assert soon.exit_code == 0, soon.stderr
    assert "warning: gateway:api tls-server 'CN=api,O=Zdravlink demo' expires in" in soon.stderr, soon.stderr
    assert "listeners: API 127.0.0.1:8700 [TLS 1.2+, client certificates]" in soon.stdout, soon.stdout
    later = zdravlink("check-config", str(tls_config(tmp_path / "b", demo_keys, days_left=90)))
    assert later.exit_code == 0 and "warning" not in later.stderr, later.stderr


def test_the_alert_rule_fires_for_a_tls_certificate_within_30_days(tmp_path):
    rules = yaml.safe_load(RULES.read_text())
    rule = next(r for g in rules["groups"] for r in g["rules"] if r.get("alert") == "ZdravlinkCertificateExpiring")
    tests = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [
                {"series": 'zl_certificate_expiry_seconds{job="zdravlink",instance="gw:8700",owner="gateway:api",kind="tls-server",'
                           'subject="hidden",serial="abc"}', "values": "2000000-60x30"},
                {"series": 'zl_certificate_expiry_seconds{job="zdravlink",instance="gw:8700",owner="trust-store",kind="crl",'
                           'subject="hidden",serial=""}', "values": "5000000-60x30"},
            ],
            "alert_rule_test": [
                {"eval_time": "5m", "alertname": "ZdravlinkCertificateExpiring", "exp_alerts": []},
                {"eval_time": "15m", "alertname": "ZdravlinkCertificateExpiring", "exp_alerts": [{
                    "exp_labels": {"severity": "warning", "job": "zdravlink", "owner": "gateway:api",
                                   "kind": "tls-server", "subject": "hidden", "serial": "abc"},
                    # 2,000,000 s less 15 minutes; the CRL, 58 days off, stays quiet
                    "exp_annotations": {"summary": "tls-server of gateway:api runs out in 23d 3h 18m 20s",
                                        "description": rule["annotations"]["description"]}}]},
            ],
        }],
    }
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(tests))
    run = subprocess.run([binary("promtool"), "test", "rules", str(tmp_path / "tests.yml")], capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0 and "SUCCESS" in run.stdout + run.stderr, run.stdout + run.stderr
