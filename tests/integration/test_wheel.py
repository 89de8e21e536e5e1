"""The built wheel works on its own: installed into a fresh venv, away from the checkout, it checks a
configuration and runs a gateway that delivers a message, with every XSD, WSDL, dataset and migration inside.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import sysconfig
import uuid
from pathlib import Path

import httpx
import pytest

from demo.emulators.rest_recipient import RecipientServer
from tests.conftest import AMQP_URL
from tests.support import configs
from tests.support.configs import LAB_TOKEN
from tests.support.gateway_proc import delete_topology, envelope_json
from tests.support.ports import free_port
from tests.support.waiting import wait_for

# One worker runs the module: its tests share one wheel, and two workers building it at once in the
# checkout's build/ directory collided (an ERROR at setup under -n 5).
pytestmark = [pytest.mark.broker, pytest.mark.xdist_group("wheel")]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel built from this checkout; returns its bin/.

    The wheel's dependencies are the locked ones this suite's venv was set up with (scripts/setup.sh
    installs requirements.lock, hashes checked, on every fresh clone): the new venv sees them through a
    path entry, not a site directory, so the checkout's editable install stays out of sight, and
    ``pip check`` confirms they satisfy what the wheel declares. Installing the lock a second time took
    a minute of the suite's CPU and would test pip, not the wheel.
    """
    work = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(work / "dist"), str(REPO)],
                   check=True, capture_output=True, timeout=300)
    wheel, = (work / "dist").glob("zdravlink-*.whl")
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    site_packages, = venv.glob("lib/python3*/site-packages")
    (site_packages / "locked-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    pip = [sys.executable, "-m", "pip", "--python", python]
    subprocess.run([*pip, "install", "-q", "--no-deps", str(wheel)], check=True, capture_output=True, timeout=120)
    checked = subprocess.run([*pip, "check"], capture_output=True, text=True, timeout=120)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    return venv / "bin"


def outside_the_checkout(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["HOME"] = str(tmp)
    return env


def test_the_installed_package_is_the_wheel_not_the_checkout(installed: Path, tmp_path: Path) -> None:
    where = subprocess.run([str(installed / "python"), "-c", "import gateway, schemas_xsd; print(gateway.__file__)"],
                           cwd=tmp_path, env=outside_the_checkout(tmp_path), capture_output=True, text=True,
                           check=True).stdout
    assert str(installed.parent) in where and str(REPO) not in where


def test_check_config_and_run_deliver_a_message_from_the_wheel(installed: Path, tmp_path: Path) -> None:
    clinic = RecipientServer(name="clinic").start()
    config = tmp_path / "config"
    config.mkdir()
    (config / "participants.yaml").write_text(configs.participants(clinic.url))
    (config / "routes.yaml").write_text(configs.routes())
    (config / "gateway.yaml").write_text(configs.settings() + "hl7: {enabled: false}\n")
    port = free_port()
    prefix = f"zlt-{uuid.uuid4().hex[:8]}"
    env = {**outside_the_checkout(tmp_path), "ZL_DATABASE_URL": f"sqlite:///{tmp_path / 'journal.db'}",
           "ZL_AMQP_URL": AMQP_URL, "ZL_BROKER_PREFIX": prefix, "ZL_API_PORT": str(port),
           "ZL_VAR_DIR": str(tmp_path / "var")}
    zdravlink = str(installed / "zdravlink")
    checked = subprocess.run([zdravlink, "check-config", str(config)], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=120)
    assert checked.returncode == 0 and "OK" in checked.stdout, checked.stdout + checked.stderr
    log = open(tmp_path / "run.log", "wb")
    proc = subprocess.Popen([zdravlink, "run", "--config", str(config)], cwd=tmp_path, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: "the gateway is ready" in (tmp_path / "run.log").read_text(), timeout=90,
                 what=f"the wheel's gateway to be ready: {(tmp_path / 'run.log').read_text()[-2000:]}")
        body = envelope_json("lab", "clinic")
        r = httpx.post(f"{base}/api/v1/messages", json=body, headers={"Authorization": f"Bearer {LAB_TOKEN}"})
        assert r.status_code == 202, r.text
        wait_for(lambda: body["messageId"] in clinic.accepted, timeout=60, what="delivery from the wheel's gateway")
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
        log.close()
        clinic.stop()
        delete_topology(AMQP_URL, prefix, ["lab", "clinic"])
    assert code == 0
    text = (tmp_path / "run.log").read_text()
    assert "Traceback" not in text and "Warning" not in text, text[-3000:]
