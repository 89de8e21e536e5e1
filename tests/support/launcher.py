"""Start ``zdravlink`` processes from a server that has imported the libraries once, as gunicorn's preload does.

A gateway start is three or more Python processes, and each spent most of its CPU importing the same
libraries (1.4 s for the API, 0.8 s for a worker, on two cores shared by four xdist workers). A
multiprocessing *forkserver* imports them once per xdist worker; each process is then a fork of it that
runs ``python -m application.cli`` with its own argv, environment, working directory and log, exactly
as from the command line, from the imports of the product's own modules on.

Not preloaded, on purpose: the product's modules and ``prometheus_client``, which chooses its
multiprocess mode from ``PROMETHEUS_MULTIPROC_DIR`` when imported (each gateway has its own directory).
``ZL_TEST_NO_PRELOAD=1`` starts plain processes instead, to rule the preload out when a test fails.
"""
from __future__ import annotations

import functools
import multiprocessing
import multiprocessing.context
import os
import runpy
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

#: What the roles import, heaviest first (``python -X importtime``); the product's own modules are not here.
PRELOAD = ["spyne", "sqlalchemy", "sqlalchemy.orm", "fastapi", "pydantic", "yaml", "rich.console", "lxml.etree",
           "pika", "xmlsec", "httpx", "typer", "starlette.applications", "uvicorn", "uvloop", "httptools", "a2wsgi",
           "zeep", "alembic.command", "psycopg", "tenacity", "hl7", "asyncio"]

@functools.cache
def _forkserver() -> multiprocessing.context.ForkServerContext:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)  # the server skips a name it cannot import
    return context


def _run_cli(argv: list[str], env: dict[str, str], cwd: str, out: str, err: str) -> None:
    """The child: become ``python -m application.cli ARGV`` with this environment, writing to ``out`` and ``err``."""
    assert "prometheus_client" not in sys.modules, "preloaded prometheus_client would ignore PROMETHEUS_MULTIPROC_DIR"
    for path, target in ((out, 1), (err, 2)):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, target)
        os.close(fd)
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    sys.argv = ["application.cli", *argv]  # runpy puts the module's file in [0], as ``python -m`` does
    runpy.run_module("application.cli", run_name="__main__", alter_sys=True)


class Launched:
    """The part of ``subprocess.Popen`` the tests use, for a process started by the forkserver."""

    def __init__(self, process: multiprocessing.process.BaseProcess, argv: Sequence[str]) -> None:
        self._process = process
        self.args = list(argv)

    @property
    def pid(self) -> int:
        assert self._process.pid is not None
        return self._process.pid

    def poll(self) -> int | None:
        return self._process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if self._process.exitcode is None:
            raise subprocess.TimeoutExpired(self.args, timeout or 0)
        return self._process.exitcode

    def send_signal(self, sig: int) -> None:
        if self._process.exitcode is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def launch(argv: Sequence[str], *, env: Mapping[str, str], cwd: Path, log: Path) -> Launched | subprocess.Popen[bytes]:
    """``python -m application.cli ARGV``, its output appended to ``log``; a forked child of the preload server."""
    if os.environ.get("ZL_TEST_NO_PRELOAD") == "1":
        with open(log, "ab") as out:
            return subprocess.Popen([sys.executable, "-m", "application.cli", *argv], env=dict(env), cwd=cwd,
                                    stdout=out, stderr=subprocess.STDOUT)
    return _start(argv, env, cwd, log, log)


def run(argv: Sequence[str], *, env: Mapping[str, str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    """As ``subprocess.run`` of ``python -m application.cli ARGV`` with its output captured as text."""
    if os.environ.get("ZL_TEST_NO_PRELOAD") == "1":
        return subprocess.run([sys.executable, "-m", "application.cli", *argv], env=dict(env), cwd=cwd,
                              capture_output=True, text=True, timeout=timeout)
    with tempfile.TemporaryDirectory(prefix="zl-cli-") as captured:
        out, err = Path(captured) / "stdout", Path(captured) / "stderr"
        process = _start(argv, env, cwd, out, err)
        try:
            code = process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
        return subprocess.CompletedProcess(list(argv), code, _text(out), _text(err))


def _text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def _start(argv: Sequence[str], env: Mapping[str, str], cwd: Path, out: Path, err: Path) -> Launched:
    process = _forkserver().Process(target=_run_cli, args=(list(argv), dict(env), str(cwd), str(out), str(err)),
                                    daemon=True)
    process.start()
    return Launched(process, argv)
