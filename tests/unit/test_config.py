"""Configuration files: every broken rule is reported with its file and key, all at once."""
from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest
from lxml import etree
from typer.testing import Result

from gateway.config import ConfigError, RetryPolicy, hash_token, load_config
from gateway.schemas import known_message_types
from tests.support import configs
from tests.support.cli import consoles_as_in_a_piped_process, zdravlink

ROOT = Path(__file__).resolve().parents[2]
NOTICE = configs.NOTICE_NS


def write(tmp_path: Path, participants: str | None = None, routes: str | None = None,
          gateway: str | None = None) -> Path:
    (tmp_path / "participants.yaml").write_text(
        participants if participants is not None else configs.participants("http://127.0.0.1:9/inbox"))
    (tmp_path / "routes.yaml").write_text(routes if routes is not None else configs.routes())
    if gateway is not None:
        (tmp_path / "gateway.yaml").write_text(gateway)
    return tmp_path


def problems(directory: Path) -> set[tuple[str, str, str]]:
    with pytest.raises(ConfigError) as info:
        load_config(directory, known_message_types=known_message_types())
    return {(Path(p.file).name, p.key, p.rule) for p in info.value.problems}


def test_bundled_configuration_loads():
    cfg = load_config(ROOT / "config", known_message_types=known_message_types())
    assert set(cfg.participants) == {"lab-demo", "clinic-mis", "insurer-demo", "frmr", "frmo"}
    route = cfg.routes[0]
    assert [c.name for c in route.channels] == ["primary", "backup"]
    # routes without channels use the recipient's own delivery; retry overrides merge with defaults
    insurer = next(r for r in cfg.routes if r.recipient == "insurer-demo")
    assert insurer.channels == [cfg.participants["insurer-demo"].delivery]
    assert (insurer.retry.attempts, insurer.retry.initial_delay) == (4, 1.0)
    assert hash_token("demo-lab-token") in cfg.participants["lab-demo"].api_token_sha256
    assert hash_token("demo-mis-token") not in cfg.participants["lab-demo"].api_token_sha256


def test_every_problem_is_named_with_file_key_and_rule(tmp_path):
    participants = """
participants:
  - mnemonic: lab
    name: Lab
    kind: laboratory
    delivery: {mode: rest}
  - mnemonic: lab
    name: Lab again
    kind: lis
    delivery: {mode: pull}
    colour: blue
  - mnemonic: clinic
    name: Clinic
    kind: mis
    credentials: {api_token_sha256: ["not-hex"]}
    delivery: {mode: rest, url: "ftp://example/inbox"}
"""
    routes = f"""
defaults:
  retry: {{attempts: 0}}
routes:
  - name: r1
    sender: ghost
    message_type: "{NOTICE}"
    recipient: clinic
    condition: "//n:Code["
  - name: r2
    sender: lab
    message_type: "urn://nowhere/1.0"
    recipient: nobody
    retry: {{initial_delay: 10, max_delay: 1}}
"""
    found = problems(write(tmp_path, participants, routes, gateway="api: {port: 70000}\nbroker: {prefix: 'Bad Prefix'}\n"))
    expected_keys = {
        ("participants.yaml", "participants[0].kind"),
        ("participants.yaml", "participants[0].delivery"),
        ("participants.yaml", "participants[1].colour"),
        ("participants.yaml", "participants[2].credentials.api_token_sha256"),
        ("participants.yaml", "participants[2].delivery.url"),
        ("routes.yaml", "defaults.retry.attempts"),
        ("routes.yaml", "routes[0].condition"),
        ("gateway.yaml", "api.port"),
        ("gateway.yaml", "broker.prefix"),
    }
    assert expected_keys <= {(f, k) for f, k, _ in found}
    rules = {(f, k): r for f, k, r in found}
    assert rules[("participants.yaml", "participants[0].kind")] == "not one of: 'mis', 'lis', 'insurer', 'registry' (got 'laboratory')"
    assert rules[("participants.yaml", "participants[1].colour")] == "unknown key"
    assert "a rest channel needs a url" in rules[("participants.yaml", "participants[0].delivery")]
    assert "http(s) URL" in rules[("participants.yaml", "participants[2].delivery.url")]
    assert rules[("routes.yaml", "defaults.retry.attempts")] == "must be ≥ 1 (got 0)"
    assert rules[("gateway.yaml", "api.port")] == "must be ≤ 65535 (got 70000)"
    assert "XPath" in rules[("routes.yaml", "routes[0].condition")]


def test_cross_file_rules(tmp_path):
    participants = configs.participants("http://127.0.0.1:9/inbox") + """
  - mnemonic: lab
    name: Duplicate
    kind: lis
    delivery: {mode: pull}
"""
    routes = f"""
routes:
  - name: r1
    sender: ghost
    message_type: "{NOTICE}"
    recipient: clinic
  - name: r1
    sender: lab
    message_type: "urn://nowhere/1.0"
    recipient: nobody
    retry: {{initial_delay: 10, max_delay: 1}}
  - name: r3
    sender: ghost
    message_type: "{NOTICE}"
    recipient: clinic
"""
    found = problems(write(tmp_path, participants, routes))
    assert ("participants.yaml", "participants[2].mnemonic", "duplicate mnemonic 'lab'") in found
    keyed = {(f, k): r for f, k, r in found}
    assert keyed[("routes.yaml", "routes[0].sender")] == "unknown participant 'ghost' (or use \"*\")"
    assert keyed[("routes.yaml", "routes[1].name")] == "duplicate route name 'r1'"
    assert keyed[("routes.yaml", "routes[1].recipient")] == "unknown participant 'nobody'"
    assert keyed[("routes.yaml", "routes[1].message_type")].startswith("unknown message type 'urn://nowhere/1.0'")
    assert "max_delay must be ≥ initial_delay" in keyed[("routes.yaml", "routes[1].retry")]
    assert keyed[("routes.yaml", "routes[2]")].startswith("ambiguous")


def test_missing_and_unreadable_files(tmp_path):
    (tmp_path / "routes.yaml").write_text("routes: [\n  - name: x\n   bad indent")
    found = problems(tmp_path)
    assert ("participants.yaml", "(file)", "missing: this file is required") in found
    yaml_error = next(p for p in found if p[0] == "routes.yaml")
    assert yaml_error[1].startswith("line ") and yaml_error[2].startswith("YAML syntax error")


def test_environment_overrides_the_files(tmp_path, monkeypatch):
    monkeypatch.setenv("ZL_DATABASE_URL", "sqlite:///elsewhere.db")
    monkeypatch.setenv("ZL_BROKER_PREFIX", "zl-test")
    monkeypatch.setenv("ZL_API_PORT", "9999")
    cfg = load_config(write(tmp_path, gateway="database: {url: 'sqlite:///file.db'}\n"))
    assert cfg.settings.database.url == "sqlite:///elsewhere.db"
    assert (cfg.settings.broker.prefix, cfg.settings.api.port) == ("zl-test", 9999)
    monkeypatch.setenv("ZL_API_PORT", "not-a-port")
    assert ("gateway.yaml", "api.port") in {(f, k) for f, k, _ in problems(tmp_path)}


def test_retry_delay_grows_is_capped_and_jittered():
    policy = RetryPolicy(attempts=10, initial_delay=1.0, multiplier=3.0, jitter=0.0, max_delay=20.0)
    assert [policy.delay(n) for n in range(1, 6)] == [1.0, 3.0, 9.0, 20.0, 20.0]
    jittered = RetryPolicy(initial_delay=10.0, multiplier=1.0, jitter=0.2, max_delay=10.0)
    rng = random.Random(7)
    samples = [jittered.delay(1, rng) for _ in range(200)]
    assert all(8.0 <= d <= 12.0 for d in samples) and len(set(samples)) > 100


def test_routes_resolve_by_sender_then_wildcard_then_condition(tmp_path):
    routes = f"""
routes:
  - name: urgent
    sender: lab
    message_type: "{NOTICE}"
    recipient: clinic
    condition: "//*[local-name()='Code'] = 'URGENT'"
  - name: normal
    sender: lab
    message_type: "{NOTICE}"
    recipient: clinic
    condition: "not(//*[local-name()='Code'] = 'URGENT')"
  - name: anyone
    sender: "*"
    message_type: "{NOTICE}"
    recipient: lab
"""
    cfg = load_config(write(tmp_path, routes=routes), known_message_types=known_message_types())

    def payload(code: str) -> etree._Element:
        return etree.fromstring(f'<n:Notice xmlns:n="{NOTICE}"><n:Code>{code}</n:Code></n:Notice>')

    assert cfg.resolve_route("lab", NOTICE, "clinic", payload("URGENT")).name == "urgent"
    assert cfg.resolve_route("lab", NOTICE, "clinic", payload("ROUTINE")).name == "normal"
    assert cfg.resolve_route("clinic", NOTICE, "lab", payload("X1")).name == "anyone"
    assert cfg.routes_for("clinic", NOTICE, "clinic") == []


def test_hash_token_is_what_the_files_hold():
    assert hash_token("demo-lab-token") == "1473d1a3544f4c7d95808edd53885cfddcdcfdbb8a9976a194b72518ab058e33"


def run_cli(*args: str, input: str | None = None) -> Result:
    return zdravlink(*args, input=input, cwd=ROOT)  # in-process: a process start costs 0.7 s of CPU


def test_hash_token_reads_stdin_and_refuses_the_command_line():
    """A token on the command line would stay in shell history and the process list."""
    piped = run_cli("hash-token", input="demo-lab-token\n")
    assert piped.exit_code == 0 and piped.stdout.strip() == hash_token("demo-lab-token"), piped.stderr
    argv = run_cli("hash-token", "demo-lab-token")
    assert argv.exit_code == 2 and "never from the command line" in argv.stderr
    assert hash_token("demo-lab-token") not in argv.stdout
    empty = run_cli("hash-token", input="")
    assert empty.exit_code == 2 and "no token" in empty.stderr


def test_check_config_cli_prints_file_key_rule_and_fails(tmp_path):
    broken = write(tmp_path, routes=configs.routes().replace("recipient: clinic", "recipient: clinci"))
    result = run_cli("check-config", str(broken))
    assert result.exit_code == 2
    assert f"{broken / 'routes.yaml'}: routes[0].recipient: unknown participant 'clinci'" in result.stderr


def test_check_config_on_the_bundled_configuration(tmp_path):
    """A fresh clone has no keys: check-config names the missing file until `demo keys` makes them."""
    bundled = tmp_path / "config"
    shutil.copytree(ROOT / "config", bundled, ignore=shutil.ignore_patterns("keys"))
    missing = run_cli("check-config", str(bundled))
    assert missing.exit_code == 2 and "gateway-gost2012-256" in missing.stderr and "cannot read" in missing.stderr
    assert run_cli("demo", "keys", "--config", str(bundled)).exit_code == 0
    ok = run_cli("check-config", str(bundled))
    assert ok.exit_code == 0 and "5 participants, 10 routes, 1 lab mappings, 4 tariffs" in ok.stdout, ok.stderr


def test_help_lists_every_command():
    text = run_cli("--help").stdout
    for command in ("check-config", "run", "serve", "worker", "replay", "trail", "db", "declare-topology",
                    "hash-token", "demo"):
        assert command in text


def test_a_listener_off_loopback_needs_tls_or_an_explicit_plain(tmp_path, capsys):
    """Plain HTTP or MLLP on a reachable address happens only when configured so (a terminating proxy in front)."""
    for name in ("api-bare", "api-both", "hl7-bare", "hl7-both", "proxied"):
        (tmp_path / name).mkdir()
    for section in ("api", "hl7"):
        bare = write(tmp_path / f"{section}-bare", gateway=f"{section}: {{host: 0.0.0.0}}\n")
        with pytest.raises(ConfigError) as info:
            load_config(bare, known_message_types=known_message_types())
        (problem,) = info.value.problems
        assert problem.key == section and "without TLS" in problem.rule and "plain: true" in problem.rule
        both = write(tmp_path / f"{section}-both",
                     gateway=f"{section}: {{host: 0.0.0.0, plain: true, tls: {{certificate: a.pem, key: a.key}}}}\n")
        with pytest.raises(ConfigError, match="not both"):
            load_config(both, known_message_types=known_message_types())
    proxied = write(tmp_path / "proxied", gateway="api: {host: 0.0.0.0, plain: true}\nhl7: {host: 0.0.0.0, plain: true}\n")
    cfg = load_config(proxied, known_message_types=known_message_types())
    assert cfg.settings.api.plain and cfg.settings.hl7.plain
    # check-config says which
    report = run_cli("check-config", str(proxied))
    assert report.exit_code == 0, report.stderr
    assert "API 0.0.0.0:8700 [plain (explicit: TLS ends at a proxy in front)]" in report.stdout, report.stdout
    # and so does the banner of zdravlink run
    from application.cli.running import print_endpoints

    with consoles_as_in_a_piped_process():  # not a terminal's colours, even under `pytest -s`
        print_endpoints(cfg, proxied)
    banner = capsys.readouterr().out
    assert "http://0.0.0.0:8700/api/v1/messages   [plain (explicit: TLS ends at a proxy in front)]" in banner, banner
