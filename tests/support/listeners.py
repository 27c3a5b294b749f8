"""Silent TCP listeners on the host's loopback: they accept and never answer, and count who came.

A job's network probe must never reach one (the sandbox has no route out); a client of a
store that hangs reaches one and must give up on its own timeout.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

__all__ = ["Listener", "loopback_listener"]

BACKLOG = 64


@dataclass
class Listener:
    sock: socket.socket

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def connections(self) -> int:
        """Connections that reached us (accepted now, even if the client closed them)."""
        count = 0
        self.sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:
                connection, _ = self.sock.accept()
                connection.close()
                count += 1
        return count


@contextlib.contextmanager
def loopback_listener(
    family: socket.AddressFamily = socket.AF_INET, address: str = "127.0.0.1"
) -> Iterator[Listener]:
    """A listener on a free port of ``address``; the test is skipped if the host has no such
    loopback address (``::1`` without IPv6)."""
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((address, 0))
        except OSError as exc:
            pytest.skip(f"no {address} loopback on this host: {exc}")
        sock.listen(BACKLOG)
        yield Listener(sock)
