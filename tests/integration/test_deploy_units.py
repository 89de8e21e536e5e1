"""The systemd units in deploy/ pass `systemd-analyze verify`, with every role's command one the CLI knows."""
from __future__ import annotations

import itertools
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from application.cli import app

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "deploy" / "systemd"
INSTALLED = "/opt/zdravlink/venv/bin/zdravlink"


@pytest.fixture
def units(tmp_path: Path) -> Path:
    """The units with the installed path replaced by this checkout's command, which verify needs to exist."""
    zdravlink = Path(sys.executable).with_name("zdravlink")
    for unit in UNITS.iterdir():
        (tmp_path / unit.name).write_text(unit.read_text().replace(INSTALLED, str(zdravlink)))
    return tmp_path


def test_every_unit_verifies_without_a_word(units: Path) -> None:
    names = [u.name for u in units.iterdir() if "@." not in u.name] + ["zdravlink-delivery@1.service"]
    done = subprocess.run([shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze", "verify", "--man=no",
                           *names], cwd=units, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stderr.strip() == "", done.stderr


def test_a_broken_unit_is_caught(units: Path) -> None:
    router = units / "zdravlink-router.service"
    router.write_text(router.read_text().replace("Type=exec", "Type=exce"))
    done = subprocess.run(["systemd-analyze", "verify", "--man=no", router.name], cwd=units, capture_output=True,
                          text=True, timeout=60)
    assert "Failed to parse service type" in done.stderr


def test_each_unit_runs_a_command_the_cli_has() -> None:
    for unit in UNITS.glob("*.service"):
        for line in re.findall(r"^Exec\w+=(.+)$", unit.read_text(), flags=re.M):
            args = line.replace(INSTALLED, "").split()
            words = list(itertools.takewhile(lambda a: not a.startswith("-"), args))
            done = CliRunner().invoke(app, [*words, "--help"])  # in-process: a start each costs 0.7 s of CPU
            assert done.exit_code == 0, f"{unit.name}: {line}: {done.output[-500:]}"
