"""A job's output streams, read on the host: each pipe read as its bytes arrive, kept up to its
cap (the rest dropped, and said), and given back as valid text."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from executors._models import cut_utf8

__all__ = ["READ_CHUNK_BYTES", "OutputStream"]

READ_CHUNK_BYTES = 65536


@dataclass
class OutputStream:
    """One of a job's output pipes (stdout or stderr), read up to ``cap`` bytes."""

    fd: int
    cap: int
    data: bytearray = field(default_factory=bytearray)
    truncated: bool = False
    eof: bool = False

    def read(self) -> bool:
        """Read what is there; True when the cap was crossed."""
        chunk = os.read(self.fd, READ_CHUNK_BYTES)
        if not chunk:
            self.eof = True
            return False
        room = self.cap - len(self.data)
        self.data += chunk[:room]
        if len(chunk) > room:
            self.truncated = True
        return self.truncated

    def text(self) -> str:
        """Valid text of at most ``cap`` UTF-8 bytes: invalid bytes replaced, NUL removed.

        A replacement character takes 3 bytes, so replacing can lengthen the output:
        cut again after decoding, on a character boundary, and say so.
        """
        text, cut = cut_utf8(
            self.data.decode("utf-8", errors="replace").replace("\x00", ""), self.cap
        )
        self.truncated = self.truncated or cut
        return text
