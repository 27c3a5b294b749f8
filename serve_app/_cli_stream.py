"""``exec-agent run --server`` without ``--json``: the program's output shown as it comes.

Over Server-Sent Events, the program's standard input sent with the request; or, when this
command's standard input is a terminal (and ``--stdin`` was not given), over the WebSocket,
each line typed sent to the program as it waits for it (Ctrl-D: end of input).
"""

from __future__ import annotations

import codecs
import os
import threading
from collections.abc import Callable, Iterable
from typing import Any

from serve_app.client import (
    ApiClientError,
    Client,
    InteractiveEvent,
    InteractiveRun,
    OutputEvent,
    RecordEvent,
    RunOptions,
    ServerUnreachableError,
)

__all__ = ["Echo", "run_streamed"]

Write = Callable[[str, str], None]
"""``write(stream, text)``: ``text`` to this command's ``stdout`` or ``stderr``, flushed."""

READ_BYTES = 65536


class Echo:
    """Shows each output chunk as it arrives, and at the end what the stream left out."""

    def __init__(self, write: Write) -> None:
        self.write = write
        self.shown: dict[str, list[str]] = {"stdout": [], "stderr": []}

    def output(self, event: OutputEvent) -> None:
        self.write(event.stream, event.text)
        self.shown[event.stream].append(event.text)

    def finish(self, record: dict[str, Any]) -> None:
        """Complete each stream from the record: its tail if the stream stopped short (a
        server that does not stream sends no chunk at all); a note if chunks were lost
        in the middle (this client fell behind the program)."""
        for stream, shown in self.shown.items():
            text, seen = record.get(stream) or "", "".join(shown)
            if text.startswith(seen):
                if len(text) > len(seen):
                    self.write(stream, text[len(seen) :])
            else:
                dropped = record.get("stream_dropped_bytes") or "some"
                self.write(
                    "stderr",
                    f"exec-agent run: {dropped} bytes of output were not shown (this client "
                    "fell behind the program); --json prints the whole record\n",
                )


def run_streamed(
    client: Client, code: str, options: RunOptions, write: Write, *, terminal_fd: int | None
) -> dict[str, Any]:
    """Run ``code`` through ``client``'s server, its output written as it comes; the record
    (API form). ``terminal_fd``: a terminal to read the program's standard input from,
    interactively."""
    echo = Echo(write)
    if terminal_fd is None:
        record = _shown(client.stream(code, **options), echo)
    else:
        with client.interactive(code, **options) as run:
            threading.Thread(
                target=_forward, args=(terminal_fd, run), name="stdin", daemon=True
            ).start()
            record = _shown(run, echo)
    echo.finish(record.data)
    return record.data


def _shown(events: Iterable[InteractiveEvent], echo: Echo) -> RecordEvent:
    for event in events:
        if isinstance(event, RecordEvent):
            return event
        if isinstance(event, OutputEvent):
            echo.output(event)
        else:  # typed input the service refused: say so, the run goes on
            echo.write("stderr", f"exec-agent run: input not sent: {event.error}\n")
    raise ServerUnreachableError("the run ended without its record")


def _forward(fd: int, run: InteractiveRun) -> None:
    """What is typed, to the program, until end of input or the run's end. Raw reads, not
    ``sys.stdin``: a thread still blocked in one when the command exits holds no lock."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    try:
        while not run.finished:
            data = os.read(fd, READ_BYTES)  # a line at a time from a terminal
            if not data:
                run.end_stdin()
                return
            text = decoder.decode(data)
            if text and not run.finished:
                run.send_stdin(text)
    except (OSError, ApiClientError):
        return  # the terminal or the connection went away: the run's own end reports it
