"""A job's output streams, read on the host: each pipe read as its bytes arrive, kept up to its
cap (the rest dropped, and said), handed on as text while the program runs when the run is
streamed (``on_text``), and given back as valid text."""

from __future__ import annotations

import codecs
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from executors._models import cut_utf8
from executors._sandbox._stdin import StdinFeed

__all__ = ["READ_CHUNK_BYTES", "LiveIO", "OutputStream"]

READ_CHUNK_BYTES = 65536


@dataclass(frozen=True)
class LiveIO:
    """A run's input and output while it runs (a streamed or interactive run)."""

    on_output: Callable[[str, str], None] | None = None
    """Called from the job's thread with ``("stdout" | "stderr", text)`` as the program writes
    (what the record keeps, as :attr:`OutputStream.on_text` hands it on); must not block."""
    stdin: StdinFeed | None = None
    """Standard input that stays open for more after the request's ``stdin`` (None: it ends
    there)."""

    def stream_to(self, name: str) -> Callable[[str], None] | None:
        """The ``on_text`` of the output stream ``name``."""
        on_output = self.on_output
        if on_output is None:
            return None
        return lambda text: on_output(name, text)


@dataclass
class OutputStream:
    """One of a job's output pipes (stdout or stderr), read up to ``cap`` bytes."""

    fd: int
    cap: int
    on_text: Callable[[str], None] | None = None
    """Called with each piece of the kept output as it arrives (a streamed run): whole
    characters only (one split across reads waits for its end), NUL removed, invalid bytes
    replaced, as in :meth:`text`."""
    data: bytearray = field(default_factory=bytearray)
    truncated: bool = False
    eof: bool = False
    _decoder: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace")
    )

    def read(self) -> bool:
        """Read what is there; True when the cap was crossed."""
        chunk = os.read(self.fd, READ_CHUNK_BYTES)
        if not chunk:
            self.eof = True
            if not self.truncated:  # a character cut by the end reads as U+FFFD, as in text()
                self._hand_on(b"", final=True)
            return False
        if self.truncated:
            return True
        room = self.cap - len(self.data)
        kept = chunk[:room]
        self.data += kept
        self._hand_on(kept, final=False)
        if len(chunk) > room:
            self.truncated = True  # a character cut by the cap stays out, as in text()
        return self.truncated

    def _hand_on(self, kept: bytes, *, final: bool) -> None:
        if self.on_text is not None:
            text = self._decoder.decode(kept, final).replace("\x00", "")
            if text:
                self.on_text(text)

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
