"""A RabbitMQ node of the test's own: its own name, ports, data and cookie.

Tests that stop, restart or cut the broker must never touch the shared node that
``scripts/test`` started (other suites, or other tests in this one, use it). This
starts another node of the same Debian ``rabbitmq-server`` package beside it, as the
current user, with everything under one directory, and removes it afterwards.

    python -m tests.support.rabbit_node start DIR --port 5699   # prints the AMQP URL
    python -m tests.support.rabbit_node stop DIR
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")


def _amqp_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(b"AMQP\x00\x00\x09\x01")
            return bool(s.recv(8))
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RabbitNode:
    """One private node; ``start()`` returns when AMQP answers and the app has booted."""

    def __init__(self, directory: Path, port: int, name: str | None = None, dist_port: int | None = None) -> None:
        self.dir = Path(directory)
        self.port = port
        self.dist_port = dist_port or _free_port()
        self.name = name or f"zlt{port}@localhost"
        self.url = f"amqp://guest:guest@127.0.0.1:{port}/%2F"

    @property
    def env(self) -> dict[str, str]:
        d = self.dir
        return {
            **os.environ,
            "HOME": str(d),  # the Erlang cookie lives here, shared by the node and rabbitmqctl
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
            "RABBITMQ_LOG_BASE": str(d / "log"),
            "RABBITMQ_CONFIG_FILE": str(d / "rabbit.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(d / "pid"),
            "RABBITMQ_CONF_ENV_FILE": str(d / "env.conf"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "ERL_CRASH_DUMP": str(d / "erl_crash.dump"),  # not the working directory (the repository)
        }

    def _ctl(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([str(RABBIT_BIN / "rabbitmqctl"), "-n", self.name, *args], env=self.env,
                              capture_output=True, timeout=timeout)

    def start(self, timeout: float = 90) -> str:
        if not (RABBIT_BIN / "rabbitmq-server").exists():
            raise RuntimeError("rabbitmq-server is not installed; scripts/test installs it")
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "rabbit.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{self.port}\nloopback_users = none\n")
        (self.dir / "enabled_plugins").write_text("[].\n")
        (self.dir / "env.conf").write_text("")
        subprocess.run([str(RABBIT_BIN / "rabbitmq-server"), "-detached"], env=self.env, check=True,
                       capture_output=True, timeout=60)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if _amqp_answers(self.port) and self._ctl("await_startup", timeout=60).returncode == 0:
                return self.url
            time.sleep(0.5)
        raise TimeoutError(f"RabbitMQ node {self.name} did not start; see {self.dir / 'log'}")

    def stop_app(self) -> None:
        """Stop RabbitMQ inside the node (connections drop, queues stay on disk)."""
        self._ctl("stop_app").check_returncode()

    def start_app(self) -> None:
        self._ctl("start_app").check_returncode()
        self._ctl("await_startup")

    def stop(self) -> None:
        self._ctl("stop", timeout=60)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("action", choices=("start", "stop"))
    ap.add_argument("directory", type=Path)
    ap.add_argument("--port", type=int, default=5699)
    args = ap.parse_args()
    node = RabbitNode(args.directory, args.port)
    if args.action == "start":
        print(node.start())
    else:
        node.stop()


if __name__ == "__main__":
    main()
