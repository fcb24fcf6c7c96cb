"""Free loopback ports, chosen by the kernel (bind port 0), never fixed numbers."""

from __future__ import annotations

import socket
from contextlib import ExitStack

__all__ = ["LOOPBACK", "free_port", "free_ports", "is_port_open"]

LOOPBACK = "127.0.0.1"


def free_ports(count: int) -> list[int]:
    """Return `count` distinct free TCP ports on the loopback interface.

    All sockets stay bound until every port is chosen, so the kernel never hands the same port twice.
    Another process can still take a port between now and the service binding it; that window is short
    and the service start then fails loudly (the callers retry nothing silently).
    """
    with ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((LOOPBACK, 0))
            ports.append(sock.getsockname()[1])
        return ports


def free_port() -> int:
    return free_ports(1)[0]


def is_port_open(port: int, host: str = LOOPBACK, timeout_s: float = 0.5) -> bool:
    """True if something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False
