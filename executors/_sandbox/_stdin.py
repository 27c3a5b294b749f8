"""Interactive standard input: text that reaches a running program as its client sends it.

A run's standard input is normally a sealed file (a memfd: the request's ``stdin``, then end of
file). An interactive run's is a pipe instead, kept open until its client says it is done: the
client's text goes into a :class:`StdinFeed` from any thread, and the job's own loop (which
already watches the program's output and limits) writes it into the pipe as the program takes
it, through a :class:`StdinPipe`. Nothing ever blocks: the feed holds at most
``max_pending_bytes``, refusing more (:class:`~executors._errors.StdinOverflowError`), and the
pipe is written only when it has room.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import threading

from executors._errors import StdinOverflowError

__all__ = ["MAX_PENDING_STDIN_BYTES", "StdinFeed", "StdinPipe"]

MAX_PENDING_STDIN_BYTES = 1024 * 1024
"""Standard input a feed holds for a program that has not read it yet."""


class StdinFeed:
    """Standard input for one run, given as it comes (thread-safe)::

    feed = StdinFeed()
    feed.put(b"Ada\\n")    # from any thread, at any time
    feed.end()             # the program's next read past what was given sees end of file
    """

    def __init__(self, max_pending_bytes: int = MAX_PENDING_STDIN_BYTES) -> None:
        self.max_pending_bytes = max_pending_bytes
        self._lock = threading.Lock()
        self._pending = bytearray()
        self._ended = False
        # Wakes the job's loop (a selector) when text or the end arrives.
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    @property
    def wake_fd(self) -> int:
        return self._wake_r

    @property
    def pending_bytes(self) -> int:
        with self._lock:
            return len(self._pending)

    def put(self, data: bytes) -> None:
        """Queue ``data`` for the program; :class:`StdinOverflowError` if more than
        ``max_pending_bytes`` would wait (nothing of ``data`` is queued then)."""
        with self._lock:
            if self._ended:
                return  # after the end (or the run's): nobody reads it
            if len(self._pending) + len(data) > self.max_pending_bytes:
                raise StdinOverflowError(self.max_pending_bytes)
            self._pending += data
        self._wake()

    def end(self) -> None:
        """No more input: once what is queued is read, the program sees end of file."""
        with self._lock:
            self._ended = True
        self._wake()

    def take(self) -> tuple[bytes, bool]:
        """(For the job's loop.) What is queued, and whether the input has ended."""
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_r, 4096):
                pass
        with self._lock:
            data, self._pending = bytes(self._pending), bytearray()
            return data, self._ended

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):  # full: it is awake already
            os.write(self._wake_w, b"\0")

    def close(self) -> None:
        """The run is over: refuse more, free the descriptors."""
        with self._lock:
            self._ended = True
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)


class StdinPipe:
    """The program's end of an interactive standard input, fed from a :class:`StdinFeed` by the
    job's loop: ``read_fd`` goes to the program; :meth:`watch` adds it to the loop's selector,
    whose events for it go to :meth:`ready`. ``first`` (the request's ``stdin``) comes first."""

    def __init__(self, feed: StdinFeed, first: bytes) -> None:
        self.feed = feed
        self.read_fd, self._write_fd = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(self._write_fd, False)
        self._buffer = bytearray(first)
        self._ended = False
        self._writing = False
        self._sel: selectors.BaseSelector | None = None

    def hand_over(self) -> int:
        """The read end, for the program; the caller closes this copy once it is sent."""
        fd, self.read_fd = self.read_fd, -1
        return fd

    def watch(self, sel: selectors.BaseSelector) -> None:
        self._sel = sel
        sel.register(self.feed.wake_fd, selectors.EVENT_READ, self)
        self._update()

    def ready(self, fd: int) -> None:
        """A selector event: new text in the feed, or room in the pipe."""
        if fd == self.feed.wake_fd:
            data, ended = self.feed.take()
            self._buffer += data
            self._ended = self._ended or ended
        elif self._write_fd >= 0 and self._buffer:
            try:
                written = os.write(self._write_fd, self._buffer)
            except BlockingIOError:
                written = 0
            except OSError:  # the program closed its standard input: nobody will read
                self._buffer.clear()
                self._close_write()
                return
            del self._buffer[:written]
        self._update()

    def _update(self) -> None:
        """Watch the pipe for room only while there is something to write; close it once the
        input ended and all of it was written."""
        if self._write_fd < 0 or self._sel is None:
            return
        if self._buffer and not self._writing:
            self._sel.register(self._write_fd, selectors.EVENT_WRITE, self)
            self._writing = True
        elif not self._buffer and self._writing:
            self._sel.unregister(self._write_fd)
            self._writing = False
        if not self._buffer and self._ended:
            self._close_write()

    def _close_write(self) -> None:
        if self._write_fd < 0:
            return
        if self._writing and self._sel is not None:
            self._sel.unregister(self._write_fd)
            self._writing = False
        os.close(self._write_fd)
        self._write_fd = -1

    def close(self) -> None:
        """The run is over (the loop's selector is closed by then)."""
        self._sel = None
        self._writing = False
        if self._write_fd >= 0:
            os.close(self._write_fd)
            self._write_fd = -1
        if self.read_fd >= 0:  # never handed over
            os.close(self.read_fd)
            self.read_fd = -1
