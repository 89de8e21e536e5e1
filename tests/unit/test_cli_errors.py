"""The ``zdravlink`` command's own mistakes and a journal out of reach: one clear line and an exit code, no traceback."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

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
