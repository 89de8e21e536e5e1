"""``zdravlink run --role``: each host runs the processes of its roles, and only those."""
from __future__ import annotations

from pathlib import Path

import pytest

from application.cli.running import ROLE_NAMES
from application.supervisor import ROLES, commands, parse_roles
from gateway.config import load_config
from tests.support import configs


def test_roles_are_parsed_in_their_order_and_an_unknown_one_is_refused() -> None:
    assert ROLES == ROLE_NAMES
    assert parse_roles(None) == ROLES and parse_roles(" ") == ROLES
    assert parse_roles("scheduler, api") == ("api", "scheduler")
    with pytest.raises(ValueError, match="'routr'"):
        parse_roles("api,routr")


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("ZL_DATABASE_URL", raising=False)
    (tmp_path / "participants.yaml").write_text(configs.participants("http://127.0.0.1:9/inbox"))
    (tmp_path / "routes.yaml").write_text(configs.routes())
    (tmp_path / "gateway.yaml").write_text(
        "database: {url: 'postgresql+psycopg://u:p@db/zl'}\napi: {processes: 2}\nworkers: {delivery: 3}\n"
        "acts: {schedule_day: 5}\n")
    return load_config(tmp_path)


def test_each_role_brings_its_processes(config, tmp_path: Path) -> None:
    every = commands(config, tmp_path)
    assert sorted(every) == ["acts", "api", "api-2", "delivery-1", "delivery-2", "delivery-3", "reconciler",
                             "router"]  # no lab mappings: no MLLP listener; no registry routes: no deadline watcher
    assert "--no-relay" not in every["api-2"]  # PostgreSQL: every API process relays, the outbox is shared
    assert sorted(commands(config, tmp_path, ("api",))) == ["api", "api-2"]
    assert sorted(commands(config, tmp_path, ("router", "delivery"))) == ["delivery-1", "delivery-2", "delivery-3",
                                                                          "router"]
    assert sorted(commands(config, tmp_path, ("scheduler",))) == ["acts", "reconciler"]
    assert commands(config, tmp_path, ("mllp",)) == {}
    assert every["reconciler"][-4:] == ["worker", "reconciler", "--config", str(tmp_path)]
