"""Ports for servers a test starts later, taken from below the kernel's ephemeral range.

A port from ``bind(0)`` comes from the ephemeral range, where every outgoing connection's local port
comes from too. Between releasing it and the server's own bind, a connection of any xdist worker may
take it: CI once saw an API exit with "address already in use". The ports here lie below that range,
in a block per xdist worker, handed out in turn, so no outgoing connection and no other worker takes
one, and a port comes round again only after the whole block.
"""
from __future__ import annotations

import itertools
import os
import socket
from pathlib import Path

#: Ports per xdist worker; eight blocks fit below the usual range (32768) above RabbitMQ's 25672.
BLOCK = 800
BLOCKS = 8


def _first_port() -> int:
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return low - BLOCK * BLOCKS


def _worker_block() -> int:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")  # "gw3"; the controller and a plain run: block 0
    return int(worker[2:]) % BLOCKS if worker[2:].isdigit() else 0


_START = _first_port() + BLOCK * _worker_block()
_OFFSET = os.getpid() % BLOCK  # successive runs on one worker start at different ports
_NEXT = itertools.cycle([*range(_START + _OFFSET, _START + BLOCK), *range(_START, _START + _OFFSET)])


def free_port() -> int:
    """A port nothing listens on now, that no outgoing connection and no other xdist worker will take."""
    if _START <= 1024:  # an unusual range on this host: fall back to the kernel's choice
        return _kernel_port()
    for _ in range(BLOCK):
        port = next(_NEXT)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {_START}..{_START + BLOCK - 1}")


def _kernel_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
