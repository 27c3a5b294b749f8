"""Spares: a job sandbox the zygote builds ahead of its job, handed to the host with its
handshake (``hello`` from the job's init, ``ready`` once the program process is locked down).

Also the credentials handshake both the zygote and a spare start with (:func:`recv_with_pid`).
"""

from __future__ import annotations

import array
import contextlib
import json
import os
import signal
import socket
import struct
from dataclasses import dataclass

__all__ = ["HANDSHAKE_TIMEOUT_S", "Spare", "SpareFailed", "receive_spare", "recv_with_pid"]

HANDSHAKE_TIMEOUT_S = 10.0


class SpareFailed(Exception):
    """A spare job sandbox broke before it was given a job."""


@dataclass
class Spare:
    """A job sandbox that is built and locked down, waiting for its program."""

    sock: socket.socket
    pid: int
    """The job's init, in our PID namespace: killing it ends the whole job."""
    pidfd: int
    workdir_fd: int | None = None
    program_pid: int = 0
    """The program process, in our PID namespace (from the credentials of its "ready")."""
    """The job's working directory, held open so its files can be read after the job ended."""

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
        self.close()

    def close(self) -> None:
        self.sock.close()
        os.close(self.pidfd)
        if self.workdir_fd is not None:
            os.close(self.workdir_fd)
            self.workdir_fd = None


def receive_spare(control: socket.socket) -> Spare:
    """The spare the zygote sends on its ``control`` socket, once it says it is ready.

    Raises :class:`SpareFailed` when the spare broke before it was ready, ``RuntimeError``
    when the zygote sent none.
    """
    control.settimeout(HANDSHAKE_TIMEOUT_S)
    try:
        msg, fds, _ = _recv_fds(control, 4096)
    finally:
        control.settimeout(None)
    reply = json.loads(msg or b"{}")
    if reply.get("type") != "spare" or len(fds) != 1:
        for fd in fds:
            os.close(fd)
        raise RuntimeError(f"no spare sandbox: {reply.get('error', 'zygote gone')}")
    sock = socket.socket(fileno=fds[0])
    sock.settimeout(HANDSHAKE_TIMEOUT_S)
    try:
        hello, pid = recv_with_pid(sock, 65536)
    except OSError as exc:
        sock.close()
        raise SpareFailed(str(exc)) from exc
    if hello != b"hello" or not pid:
        sock.close()
        raise SpareFailed(f"no hello from the spare: {hello[:200]!r}")
    try:
        pidfd = os.pidfd_open(pid)
    except OSError as exc:  # it died after its hello, and the zygote has reaped it
        sock.close()
        raise SpareFailed(f"the spare is gone: {exc}") from exc
    spare = Spare(sock, pid, pidfd)
    try:
        # The program process says "ready" once locked down, with its working directory; a
        # report instead means the spare broke before any job was given to it.
        ready, workdir, spare.program_pid = _recv_fds(sock, 65536)
    except OSError as exc:
        spare.discard()
        raise SpareFailed(str(exc)) from exc
    spare.workdir_fd = workdir.pop() if len(workdir) == 1 else None
    for fd in workdir:
        os.close(fd)
    if ready != b"ready":
        spare.discard()
        raise SpareFailed(f"the spare is not ready: {ready[:200]!r}")
    sock.settimeout(None)
    return spare


def _recv_fds(sock: socket.socket, size: int) -> tuple[bytes, list[int], int]:
    """A message, the descriptors that came with it (at most one is expected) and its sender's
    pid (0 unless ``SO_PASSCRED`` is on, which adds the credentials to every message)."""
    creds = struct.calcsize("3i")
    room = socket.CMSG_SPACE(4) + socket.CMSG_SPACE(creds)
    msg, ancdata, _, _ = sock.recvmsg(size, room)
    fds: list[int] = []
    pid = 0
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds += array.array("i", data[: len(data) - len(data) % 4])
        elif level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            pid = struct.unpack("3i", data[:creds])[0]
    return msg, fds, pid


def recv_with_pid(sock: socket.socket, size: int) -> tuple[bytes, int]:
    """A message and its sender's pid in our PID namespace (``SO_PASSCRED`` must be on)."""
    msg, ancdata, _, _ = sock.recvmsg(size, socket.CMSG_SPACE(struct.calcsize("3i")))
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            pid, _uid, _gid = struct.unpack("3i", data[: struct.calcsize("3i")])
            return msg, int(pid)
    return msg, 0
