"""Registry routes in the configuration: request-reply needs the right registry and a way back."""
from __future__ import annotations

from pathlib import Path

import pytest

from application.runtime import has_registry_routes
from gateway.config import ConfigError, load_config
from gateway.schemas import known_message_types

WORKER = "urn://zdravlink/types/worker-verification/1.0"
ORG = "urn://zdravlink/types/organisation-verification/1.0"

PARTICIPANTS = """
participants:
  - {mnemonic: clinic, name: Clinic, kind: mis, delivery: {mode: pull}}
  - mnemonic: frmr
    name: ФРМР
    kind: registry
    delivery: {name: primary, mode: registry, registry: frmr, url: "http://127.0.0.1:9/", token_env: ZL_FRMR_TOKEN}
  - {mnemonic: frmo, name: ФРМО, kind: registry, delivery: {mode: registry, registry: frmo, url: "http://127.0.0.1:9/soap"}}
"""


def load(tmp_path: Path, routes: str, participants: str = PARTICIPANTS, gateway: str = ""):
    (tmp_path / "participants.yaml").write_text(participants)
    (tmp_path / "routes.yaml").write_text(routes)
    (tmp_path / "gateway.yaml").write_text(gateway)
    return load_config(tmp_path, known_message_types=known_message_types())


def problems(tmp_path: Path, routes: str, participants: str = PARTICIPANTS) -> set[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, routes, participants)
    return {(p.key, p.rule) for p in info.value.problems}


def test_a_registry_route_with_its_answer_route_loads_with_deadlines_and_cache(tmp_path):
    cfg = load(tmp_path, f"""
routes:
  - name: ask
    sender: clinic
    message_type: "{WORKER}"
    recipient: frmr
    channels:
      - {{name: primary, mode: registry, registry: frmr, url: "http://127.0.0.1:9/", token_env: ZL_FRMR_TOKEN}}
      - {{name: backup, mode: registry, registry: frmr, url: "http://127.0.0.1:10/", token_env: ZL_FRMR_TOKEN}}
  - {{name: answers, sender: frmr, message_type: "{WORKER}", recipient: clinic}}
""", gateway="registries: {worker_verification: {deadline_seconds: 30, cache_ttl_seconds: 600}}\n")
    assert has_registry_routes(cfg)
    assert [c.name for c in cfg.routes[0].channels] == ["primary", "backup"]
    settings = cfg.settings.registries
    assert (settings.for_type(WORKER).deadline_seconds, settings.for_type(WORKER).cache_ttl_seconds) == (30, 600)
    assert (settings.for_type(ORG).deadline_seconds, settings.for_type(ORG).cache_ttl_seconds) == (120, 0)


def test_every_registry_rule_is_named(tmp_path):
    found = problems(tmp_path, f"""
routes:
  - {{name: no-way-back, sender: clinic, message_type: "{WORKER}", recipient: frmr}}
  - {{name: wrong-registry, sender: clinic, message_type: "{ORG}", recipient: frmr}}
  - {{name: anyone, sender: "*", message_type: "{ORG}", recipient: frmo}}
  - name: mixed
    sender: clinic
    message_type: "{ORG}"
    recipient: frmo
    condition: "true()"
    channels:
      - {{mode: registry, registry: frmo, url: "http://127.0.0.1:9/soap"}}
      - {{name: bb, mode: rest, url: "http://127.0.0.1:9/"}}
  - name: not-a-registry
    sender: frmo
    message_type: "{ORG}"
    recipient: clinic
    channels: [{{mode: registry, registry: frmo, url: "http://127.0.0.1:9/soap"}}]
""")
    assert ("routes[0]", f"no route for the answers: add sender 'frmr', message_type '{WORKER}', "
                         f"recipient 'clinic'") in found
    assert ("routes[1].channels[0].registry", f"frmr answers '{WORKER}', not '{ORG}'") in found
    assert ("routes[2].sender", "a registry route names its sender: answers go back by a route to it") in found
    assert ("routes[3].channels", "a route to a registry uses registry channels only (failover between them)") in found
    assert ("routes[4].recipient", "registry channels deliver to a participant of kind registry, not 'mis'") in found


@pytest.mark.parametrize("delivery,rule", [
    ('{mode: registry, url: "http://127.0.0.1:9/"}', "a registry channel needs registry (frmr or frmo) and url"),
    ('{mode: registry, registry: frmr, url: "http://127.0.0.1:9/"}', "token_env"),
    ('{mode: rest, url: "http://127.0.0.1:9/", registry: frmr}', "registry channels only"),
])
def test_registry_channel_fields(tmp_path, delivery, rule):
    participants = f"participants:\n  - {{mnemonic: frmr, name: R, kind: registry, delivery: {delivery}}}\n"
    found = problems(tmp_path, "routes: []\n", participants)
    assert any(key == "participants[0].delivery" and rule in text for key, text in found), found


def test_frmr_token_from_the_environment_or_a_file_read_at_each_call(tmp_path, monkeypatch):
    """ФРМР's bearer token is a partner's secret: never in participants.yaml; a rotated one is used at once."""
    from adapters.registries.channel import frmr_token
    from adapters.registries.clients import RegistryCallFailed
    from gateway.config import Channel

    url = "http://127.0.0.1:9/"
    by_env = Channel.model_validate({"mode": "registry", "registry": "frmr", "url": url, "token_env": "ZL_T_FRMR"})
    monkeypatch.delenv("ZL_T_FRMR", raising=False)
    with pytest.raises(RegistryCallFailed, match="environment variable ZL_T_FRMR is not set") as info:
        frmr_token(by_env, tmp_path)
    assert not info.value.retryable
    monkeypatch.setenv("ZL_T_FRMR", "from-env")
    assert frmr_token(by_env, tmp_path) == "from-env"

    by_file = Channel.model_validate({"mode": "registry", "registry": "frmr", "url": url,
                                      "token_file": "secrets/frmr"})
    with pytest.raises(RegistryCallFailed, match="cannot read .*secrets/frmr"):
        frmr_token(by_file, tmp_path)
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "frmr").write_text("first-token\n")
    assert frmr_token(by_file, tmp_path) == "first-token"
    (tmp_path / "secrets" / "frmr").write_text("rotated-token\n")  # the deployment rotates the secret
    assert frmr_token(by_file, tmp_path) == "rotated-token"
    (tmp_path / "secrets" / "frmr").write_text("\n")
    with pytest.raises(RegistryCallFailed, match="is empty"):
        frmr_token(by_file, tmp_path)
    with pytest.raises(ValueError, match="not both"):
        Channel.model_validate({"mode": "registry", "registry": "frmr", "url": url, "token_env": "ZL_T_FRMR",
                                "token_file": "secrets/frmr"})
