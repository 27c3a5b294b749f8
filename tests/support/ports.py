"""Loopback ports: free ones to bind, and whether something answers on one."""

from __future__ import annotations

import socket

__all__ = ["RESERVED_PORTS", "answers", "free_port", "free_ports"]

RESERVED_PORTS = frozenset({6379, 6380})
"""Never handed out: the shared Redis' port and the service's default Ray GCS port."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the caller binds it a moment later)."""
    (port,) = free_ports(1)
    return port


def free_ports(count: int) -> list[int]:
    """``count`` different TCP ports free on 127.0.0.1 now, none of ``RESERVED_PORTS``."""
    sockets: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < count:
            sock = socket.socket()
            sockets.append(sock)
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
            if port not in RESERVED_PORTS:
                ports.append(port)
        return ports
    finally:
        for sock in sockets:
            sock.close()


def answers(
    port: int, probe: bytes = b"", expected: bytes = b"", *, timeout_s: float = 0.5
) -> bool:
    """Whether 127.0.0.1:``port`` accepts a connection and, given a ``probe``, answers it with
    something that starts with ``expected``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as connection:
            if not probe:
                return True
            connection.sendall(probe)
            return connection.recv(16).startswith(expected)
    except OSError:
        return False
