"""Keys and certificates named by the configuration: every problem reported with its file and key."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from typer.testing import Result

from gateway.config import ConfigError, load_config
from gateway.keyring import load_keyring
from tests.support import configs
from tests.support.cli import zdravlink

ROOT = Path(__file__).resolve().parents[2]


def config_dir(tmp_path: Path, participants: str, gateway: str) -> Path:
    (tmp_path / "participants.yaml").write_text(participants)
    (tmp_path / "routes.yaml").write_text(configs.routes())
    (tmp_path / "gateway.yaml").write_text(gateway)
    return tmp_path


def keyring_problems(directory: Path) -> set[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        load_keyring(load_config(directory))
    return {(p.key, p.rule) for p in info.value.problems}


def test_demo_keys_load_and_the_gateway_signs_with_gost(tmp_path, demo_keys):
    d = config_dir(tmp_path, configs.participants("http://127.0.0.1:9/in", keys=demo_keys),
                   configs.settings(keys=demo_keys))
    ring = load_keyring(load_config(d))
    assert ring.signer.algorithm.name == "gost2012-256"
    assert [c.key_type for c in ring.certificates["lab"]] == ["gost2012-256", "rsa"]
    owners = [owner for owner, _ in ring.owned_certificates()]
    assert owners.count("lab") == 2 and owners.count("gateway") == 1 and "trust-store" in owners


def test_each_broken_key_setting_is_reported(tmp_path, demo_keys):
    gateway = (f'signing: {{key: "{demo_keys / "gateway-rsa.key"}", certificate: "{demo_keys / "lab-rsa.pem"}", '
               f'trust_store: "{tmp_path / "no-such-dir"}"}}\n')
    participants = configs.participants("http://127.0.0.1:9/in").replace(
        "    signature_required: false\n",
        '    signature_required: false\n    certificates: ["missing.pem", {file: "lab.p12", password_env: "ZL_NO_SUCH_VAR"}]\n', 1)
    found = keyring_problems(config_dir(tmp_path, participants, gateway))
    keys = {k for k, _ in found}
    assert keys == {"signing.trust_store", "signing.key", "participants[0].certificates[0]",
                    "participants[0].certificates[1]"}
    rules = " | ".join(r for _, r in found)
    assert "does not exist" in rules
    assert "does not belong to certificate" in rules
    assert "ZL_NO_SUCH_VAR is not set" in rules
    assert "missing.pem: cannot read" in rules


def test_a_participant_that_must_sign_needs_a_certificate(tmp_path, demo_keys):
    participants = configs.participants("http://127.0.0.1:9/in", lab_signs=True)
    found = keyring_problems(config_dir(tmp_path, participants, configs.settings(keys=demo_keys)))
    assert ("participants[0].certificates", "'lab' must sign what it sends, so it needs a certificate") in found


def test_insurers_and_registries_must_sign_by_default_and_a_route_can_override(tmp_path):
    text = configs.participants("http://127.0.0.1:9/in").replace("kind: mis", "kind: insurer")
    d = config_dir(tmp_path, text, "")
    (d / "routes.yaml").write_text(configs.routes() + "    signature_required: true\n")
    cfg = load_config(d)
    assert cfg.participants["clinic"].signs_by_default and not cfg.participants["lab"].signs_by_default
    assert cfg.routes[0].requires_signature(cfg.participants["lab"])


def test_pkcs12_gateway_key_with_password_from_the_environment(tmp_path, demo_keys, monkeypatch):
    p12 = tmp_path / "gateway.p12"
    subprocess.run(["openssl", "pkcs12", "-export", "-inkey", str(demo_keys / "gateway-rsa.key"),
                    "-in", str(demo_keys / "gateway-rsa.pem"), "-out", str(p12), "-passout", "pass:секрет-1"],
                   check=True, capture_output=True)
    gateway = (f'signing: {{pkcs12: "{p12}", password_env: ZL_TEST_P12, trust_store: "{demo_keys / "trust"}"}}\n')
    d = config_dir(tmp_path, configs.participants("http://127.0.0.1:9/in"), gateway)
    monkeypatch.setenv("ZL_TEST_P12", "секрет-1")
    ring = load_keyring(load_config(d))
    assert ring.signer.algorithm.name == "rsa-sha256" and "CN=gateway" in ring.signer.certificate.subject
    monkeypatch.setenv("ZL_TEST_P12", "wrong")
    assert any(k == "signing.pkcs12" and "wrong password" in r for k, r in keyring_problems(d))


def cli(*args: str, cwd: Path = ROOT) -> Result:
    return zdravlink(*args, cwd=cwd)  # in-process: a process start costs 0.7 s of CPU


def test_sign_and_verify_commands(tmp_path, demo_keys):
    doc = tmp_path / "request.xml"
    doc.write_text('<r:Request xmlns:r="urn:example"><r:Data Id="D1"><r:Snils>112-233-445 95</r:Snils></r:Data>'
                   '</r:Request>', encoding="utf-8")
    signed = tmp_path / "signed.xml"
    r = cli("sign", str(doc), "--id", "D1", "--alg", "gost2012-512", "--key", str(demo_keys / "lab-gost2012-512.key"),
            "--cert", str(demo_keys / "lab-gost2012-512.pem"), "--out", str(signed))
    assert r.exit_code == 0, r.stderr
    ok = cli("verify", str(signed), "--trust", str(demo_keys / "trust"))
    assert ok.exit_code == 0, ok.stdout + ok.stderr
    assert "OK #D1 gost2012-512 by CN=lab" in ok.stdout

    wrong_signer = cli("verify", str(signed), "--trust", str(demo_keys / "trust"),
                       "--cert", str(demo_keys / "clinic-gost2012-256.pem"))
    assert wrong_signer.exit_code == 1 and "CERTIFICATE_SENDER_MISMATCH" in wrong_signer.stdout

    signed.write_text(signed.read_text(encoding="utf-8").replace("445 95", "445 96"), encoding="utf-8")
    bad = cli("verify", str(signed), "--trust", str(demo_keys / "trust"))
    assert bad.exit_code == 1 and "SIGNATURE_DIGEST_MISMATCH" in bad.stdout


def test_sign_refuses_the_root_and_an_unknown_id(tmp_path, demo_keys):
    doc = tmp_path / "d.xml"
    doc.write_text('<r:Data xmlns:r="urn:example" Id="D1"/>')
    key = ["--key", str(demo_keys / "lab-rsa.key"), "--cert", str(demo_keys / "lab-rsa.pem")]
    root = cli("sign", str(doc), "--id", "D1", *key)
    assert root.exit_code == 1 and "document root" in root.stderr
    missing = cli("sign", str(doc), "--id", "nope", *key)
    assert missing.exit_code == 1 and "0 elements carry Id 'nope'" in missing.stderr


def test_keys_demo_makes_what_the_bundled_configuration_names(tmp_path):
    import shutil

    shutil.copytree(ROOT / "config", tmp_path / "config", ignore=shutil.ignore_patterns("keys"))
    made = cli("demo", "keys", "--config", str(tmp_path / "config"))
    assert made.exit_code == 0, made.stderr
    check = cli("check-config", str(tmp_path / "config"))
    assert check.exit_code == 0, check.stdout + check.stderr
    assert "gateway" in check.stdout and "gost2012-256" in check.stdout
