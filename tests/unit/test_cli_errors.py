"""The ``zdravlink`` command's own mistakes and a journal out of reach: one clear line and an exit code, no traceback."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import configs

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "application.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})})


@pytest.mark.parametrize("args,said", [
    (("journal", "prune", "--nope"), "No such option: --nope"),
    (("no-such-command",), "No such command"),
    (("journal", "prune", "--share", "2"), "Invalid value for '--share'"),
    (("journal", "prune", "--limit", "many"), "Invalid value for '--limit'"),
])
def test_a_mistyped_command_gets_its_usage_line_and_exit_code_2(args: tuple[str, ...], said: str) -> None:
    done = cli(*args)
    assert done.returncode == 2, done.stdout + done.stderr
    assert said in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_a_journal_out_of_reach_is_one_line_and_exit_code_3() -> None:
    done = cli("journal", "check", "--config", str(ROOT / "config"),
               env={"ZL_DATABASE_URL": "postgresql+psycopg://nobody:x@127.0.0.1:9/none"})
    assert done.returncode == 3, done.stdout + done.stderr
    assert "cannot reach" in done.stderr and "Traceback" not in done.stderr, done.stderr


def resolver_says(host: str) -> str:
    """What the resolver says of ``host`` here (without DNS it may be a temporary failure, not "not known")."""
    try:
        socket.getaddrinfo(host, 18080)
    except socket.gaierror as exc:
        return str(exc.strerror)
    raise AssertionError(f"{host} resolved")


@pytest.mark.parametrize("host", ["no.such.host.invalid", "203.0.113.7"])
def test_an_address_the_gateway_cannot_listen_on_names_its_section_and_the_reason(host: str) -> None:
    """A name that does not resolve has a negative resolver code: its words are the exception's, not
    "Unknown error -2"; 203.0.113.7 (TEST-NET-3) is an address this host does not have."""
    from application.reachability import CannotListen
    from application.roles import _listen

    reason = resolver_says(host) if host.endswith(".invalid") else "Cannot assign requested address"
    with pytest.raises(CannotListen) as refused:
        _listen("api", host, 18080)
    assert str(refused.value) == f"{host}:18080 (api.host, api.port): {reason}"


def test_a_run_directory_that_cannot_hold_the_rate_limits_is_one_line_and_exit_code_2(tmp_path: Path) -> None:
    """``ZL_RUN_DIR`` where the API cannot keep its shared rate limit buckets: said at start, before listening."""
    participants = configs.participants("http://127.0.0.1:9/inbox").replace(
        "    kind: lis\n", "    kind: lis\n    rate_limit: {messages_per_second: 10}\n", 1)
    (tmp_path / "participants.yaml").write_text(participants)
    (tmp_path / "routes.yaml").write_text(configs.routes())
    (tmp_path / "gateway.yaml").write_text(configs.settings())
    not_a_directory = tmp_path / "run"
    not_a_directory.write_text("a file where the directory should be")
    done = cli("serve", "--config", str(tmp_path), env={"ZL_RUN_DIR": str(not_a_directory),
                                                        "ZL_DATABASE_URL": f"sqlite:///{tmp_path / 'journal.db'}",
                                                        "ZL_API_PORT": "9"})
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"cannot start: ZL_RUN_DIR {not_a_directory}" in done.stderr and "Traceback" not in done.stderr, done.stderr
