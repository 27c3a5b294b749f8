"""A job's artifacts: the regular files it left under ``out/``, read on the host once it ended.

The spare hands the host a descriptor of its working directory when it is ready, and the host
keeps it open: the job's tmpfs then outlives the job's mount namespace, and is read after every
process of the job is gone (no file grows or changes while it is read). The host is root, so
nothing here trusts the tree: every step opens one name beneath a descriptor without following
symbolic links (``O_NOFOLLOW``; a name never holds ``/``), only regular files are read (FIFOs,
sockets and device nodes are passed over: ``O_NONBLOCK`` keeps a FIFO's open from waiting), at
most their size as first seen, within the caps, and the walk itself is bounded in entries and
depth (a million tiny files cost one bounded scan, not a million reads).
"""

from __future__ import annotations

import base64
import contextlib
import mimetypes
import os
import stat
from dataclasses import dataclass, field

from executors._models import ARTIFACTS_DIR, Artifact

__all__ = ["MAX_DEPTH", "MAX_SCANNED_ENTRIES", "Artifacts", "collect_artifacts"]

MAX_SCANNED_ENTRIES = 100_000
"""Directory entries looked at, at most (a job's inodes are its disk over 4 KiB: 16,384 for the
default 64 MiB); past it the rest count as left out."""
MAX_DEPTH = 16
"""Directories deep, at most: ``out/`` and 15 below it."""
OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
# The standard library's own table, not the host's /etc/mime.types: the same answer everywhere.
_MEDIA_TYPES = mimetypes.MimeTypes()


@dataclass
class Artifacts:
    files: list[Artifact] = field(default_factory=list)
    truncated: bool = False
    """Whether a cap (or a name that cannot be returned) left something out."""


@dataclass(order=True)
class _Found:
    path: str
    size_bytes: int
    parts: tuple[str, ...] = field(compare=False)


def collect_artifacts(workdir_fd: int | None, *, max_files: int, max_bytes: int) -> Artifacts:
    """The files under ``out/`` of the working directory ``workdir_fd``, sorted by path, as
    many as fit both caps (the first file past either leaves it and the rest out)."""
    result = Artifacts()
    if workdir_fd is None:
        return result
    try:
        out = os.open(ARTIFACTS_DIR, OPEN_FLAGS | os.O_DIRECTORY, dir_fd=workdir_fd)
    except OSError:
        return result  # none, or not a directory (a symbolic link is not followed)
    found: list[_Found] = []
    try:
        result.truncated = _walk(out, (), found, [MAX_SCANNED_ENTRIES])
        total = 0
        for item in sorted(found):
            if len(result.files) == max_files or total + item.size_bytes > max_bytes:
                result.truncated = True
                break
            artifact = _read(out, item, max_bytes - total)
            if artifact is not None:
                result.files.append(artifact)
                total += artifact.size_bytes
    finally:
        os.close(out)
    return result


def _walk(dir_fd: int, parts: tuple[str, ...], found: list[_Found], budget: list[int]) -> bool:
    """Add the regular files beneath ``dir_fd`` to ``found``; whether something was left out.

    An entry that vanishes or cannot be read is passed over (without per-job namespaces, a
    job's stragglers may still be changing the tree): the job's fault, never the slot's."""
    left_out = False
    with os.scandir(dir_fd) as entries:
        for entry in entries:
            budget[0] -= 1
            if budget[0] < 0:
                return True
            name = _returnable(entry.name)
            if name is None:
                left_out = True
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                path = "/".join((ARTIFACTS_DIR, *parts, name))
                found.append(_Found(path, st.st_size, (*parts, name)))
            elif stat.S_ISDIR(st.st_mode):
                if len(parts) + 1 >= MAX_DEPTH:
                    left_out = True
                    continue
                try:
                    child = os.open(name, OPEN_FLAGS | os.O_DIRECTORY, dir_fd=dir_fd)
                except OSError:
                    continue
                try:
                    left_out |= _walk(child, (*parts, name), found, budget)
                finally:
                    os.close(child)
            # symbolic links, FIFOs, sockets, device nodes: not files to return
    return left_out


def _returnable(name: str) -> str | None:
    """``name`` if it can travel as a path of the record (valid UTF-8, no control
    characters), else None."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes come back as lone surrogates
        return None
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        return None
    return name


def _read(out_fd: int, item: _Found, room_bytes: int) -> Artifact | None:
    """The file at ``item`` beneath ``out_fd``, opened one name at a time; None if it is no
    longer a regular file."""
    fds: list[int] = []
    try:
        parent = out_fd
        for name in item.parts[:-1]:
            parent = os.open(name, OPEN_FLAGS | os.O_DIRECTORY, dir_fd=parent)
            fds.append(parent)
        fd = os.open(item.parts[-1], OPEN_FLAGS, dir_fd=parent)
        fds.append(fd)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        data = _read_at_most(fd, min(item.size_bytes, room_bytes))
    except OSError:
        return None
    finally:
        for fd in reversed(fds):
            with contextlib.suppress(OSError):
                os.close(fd)
    media_type, _ = _MEDIA_TYPES.guess_type(item.path, strict=False)
    return Artifact(
        path=item.path,
        size_bytes=len(data),
        media_type=media_type or "application/octet-stream",
        base64=base64.b64encode(data).decode("ascii"),
    )


def _read_at_most(fd: int, size: int) -> bytes:
    chunks: list[bytes] = []
    while size > 0 and (chunk := os.read(fd, min(size, 1 << 20))):
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)
