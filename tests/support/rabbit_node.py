"""A RabbitMQ node of the test's own: its own name, ports, data and cookie.

Tests that stop, restart or cut the broker must never touch the shared node that
``scripts/test`` started (other suites, or other tests in this one, use it). This
starts another node of the same Debian ``rabbitmq-server`` package beside it, as the
current user, with everything under one directory, and removes it afterwards.

    python -m tests.support.rabbit_node start DIR --port 5699   # prints the AMQP URL
    python -m tests.support.rabbit_node stop DIR
    python -m tests.support.rabbit_node start DIR --port 5760 --cluster 3   # nodes on 5760-5762, one cluster
    python -m tests.support.rabbit_node stop DIR --port 5760 --cluster 3

A cluster (``RabbitCluster``) is that many nodes, each with its own name, ports and
directory and one Erlang cookie between them, joined with ``rabbitmqctl join_cluster``.
A cluster of three takes ten consecutive ports from a base: AMQP ``base + i``, Erlang
distribution ``base + 3 + i``, and the CLI tools' distribution ports ``base + 6 …
base + 9`` (so a test's nodes stay within a range it was given).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.support.ports import free_port

RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")


def _amqp_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(b"AMQP\x00\x00\x09\x01")
            return bool(s.recv(8))
    except OSError:
        return False


class RabbitNode:
    """One private node; ``start()`` returns when AMQP answers and the app has booted."""

    def __init__(self, directory: Path, port: int, name: str | None = None, dist_port: int | None = None,
                 cookie: str | None = None, ctl_ports: tuple[int, int] | None = None) -> None:
        """``cookie``: the Erlang cookie nodes of one cluster share; ``ctl_ports``: the range the CLI tools'
        own distribution ports come from (Erlang's default is anywhere above 35672)."""
        self.dir = Path(directory)
        self.port = port
        self.dist_port = dist_port or free_port()
        self.name = name or f"zlt{port}@localhost"
        self.url = f"amqp://guest:guest@127.0.0.1:{port}/%2F"
        self.cookie = cookie
        self.ctl_ports = ctl_ports

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
            **({"RABBITMQ_CTL_DIST_PORT_MIN": str(self.ctl_ports[0]),
                "RABBITMQ_CTL_DIST_PORT_MAX": str(self.ctl_ports[1])} if self.ctl_ports else {}),
        }

    def _ctl(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([str(RABBIT_BIN / "rabbitmqctl"), "-n", self.name, *args], env=self.env,
                              capture_output=True, timeout=timeout)

    def start(self, timeout: float = 90) -> str:
        if not (RABBIT_BIN / "rabbitmq-server").exists():
            raise RuntimeError("rabbitmq-server is not installed; scripts/test installs it")
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "rabbit.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{self.port}\nloopback_users = none\n"
            # A cluster: the side of a partition without a majority pauses rather than diverge (docs/scaling.md).
            + ("cluster_partition_handling = pause_minority\n" if self.cookie else ""))
        if self.cookie is not None:
            cookie = self.dir / ".erlang.cookie"
            if cookie.exists():
                cookie.chmod(0o600)
            cookie.write_text(self.cookie)
            cookie.chmod(0o400)
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

    def kill(self) -> None:
        """SIGKILL the node's Erlang VM, as a host that dies would (nothing flushed, no goodbye to the cluster)."""
        pid = int((self.dir / "pid").read_text().strip())
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while _amqp_answers(self.port) or _alive(pid):
            if time.monotonic() > deadline:
                raise TimeoutError(f"RabbitMQ node {self.name} (pid {pid}) still alive after SIGKILL")
            time.sleep(0.2)

    def join(self, other: RabbitNode) -> None:
        """Join ``other``'s cluster (this node's own data is dropped: it must be new or reset)."""
        for args in (("stop_app",), ("reset",), ("join_cluster", other.name), ("start_app",), ("await_startup",)):
            done = self._ctl(*args)
            if done.returncode != 0:
                raise RuntimeError(f"rabbitmqctl {' '.join(args)} on {self.name}: {done.stderr.decode(errors='replace')}")

    def queue_info(self, *items: str) -> list[list[str]]:
        """``rabbitmqctl list_queues ITEMS``: one list of values per queue."""
        done = self._ctl("list_queues", "--quiet", "--no-table-headers", *items, timeout=60)
        done.check_returncode()
        return [line.split("\t") for line in done.stdout.decode().splitlines() if line.strip()]

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class RabbitCluster:
    """``size`` private nodes joined into one cluster; ``urls`` names them all (as ``broker.urls`` does)."""

    def __init__(self, directory: Path, base_port: int, size: int = 3) -> None:
        cookie = f"ZLTESTCLUSTER{base_port}".upper()
        self.nodes = [RabbitNode(Path(directory) / f"node{i + 1}", base_port + i, name=f"zlt{base_port + i}@localhost",
                                 dist_port=base_port + size + i, cookie=cookie,
                                 ctl_ports=(base_port + 2 * size, base_port + 2 * size + 3)) for i in range(size)]

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def start(self) -> RabbitCluster:
        for node in self.nodes:
            node.start()
        for node in self.nodes[1:]:
            node.join(self.nodes[0])
        return self

    def node(self, name: str) -> RabbitNode:
        return next(n for n in self.nodes if n.name == name)

    def running(self) -> RabbitNode:
        """A node that answers (to ask the cluster something)."""
        for n in self.nodes:
            if _amqp_answers(n.port):
                return n
        raise RuntimeError("no node of the cluster answers")

    def leaders(self, prefix: str) -> dict[str, str]:
        """Queue name → the node leading it, for the queues whose names start with ``prefix``."""
        rows = self.running().queue_info("name", "leader")
        return {row[0]: row[1] for row in rows if row[0].startswith(prefix) and len(row) > 1}

    def members(self, prefix: str) -> dict[str, list[str]]:
        """Queue name → the nodes holding a replica of it."""
        rows = self.running().queue_info("name", "members")
        return {row[0]: re.findall(r"[\w.-]+@[\w.-]+", row[1]) for row in rows if row[0].startswith(prefix)}

    def remove(self) -> None:
        for node in reversed(self.nodes):
            try:
                node.remove()
            except Exception:
                pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("action", choices=("start", "stop"))
    ap.add_argument("directory", type=Path)
    ap.add_argument("--port", type=int, default=5699)
    ap.add_argument("--cluster", type=int, default=0, metavar="N", help="N nodes in one cluster from --port on")
    args = ap.parse_args()
    if args.cluster:
        cluster = RabbitCluster(args.directory, args.port, args.cluster)
        if args.action == "start":
            print(",".join(cluster.start().urls))
        else:
            for n in reversed(cluster.nodes):
                n.stop()
        return
    node = RabbitNode(args.directory, args.port)
    if args.action == "start":
        print(node.start())
    else:
        node.stop()


if __name__ == "__main__":
    main()
