"""Server-Sent Events read from a byte stream, as the HTML standard's event-stream parser does.

No dependency: the format is small. What the standard says and this does: the stream is UTF-8
(a leading BOM skipped); lines end with CRLF, LF or CR (a CR is a line end at once, so an
event is not held back waiting to see whether LF follows); ``:`` starts a comment; ``field:
value`` loses one space after the colon; ``data`` lines join with LF; a blank line dispatches
the event unless it has no data; an unfinished event at the end of the stream is dropped.

Usage::

    parser = SseParser()
    for chunk in response.iter_bytes():
        for event in parser.feed(chunk):
            print(event.event, event.data)
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass

__all__ = ["ServerSentEvent", "SseParser"]

_LINE_END = re.compile(r"\r\n|\r|\n")
_BOM = "\ufeff"


@dataclass(frozen=True)
class ServerSentEvent:
    """One dispatched event: its type (``message`` when the stream named none), its data and
    the last event id seen."""

    event: str
    data: str
    id: str = ""


class SseParser:
    """Bytes in, events out, incrementally (a chunk may end anywhere, mid-character too)."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._partial: list[str] = []  # the line begun and not yet ended
        self._skip_lf = False
        self._started = False
        self._event = ""
        self._data: list[str] = []
        self._last_id = ""

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """The events ``chunk`` completes."""
        text = self._decoder.decode(chunk)
        if not text:
            return []
        if not self._started:
            self._started = True
            text = text.removeprefix(_BOM)
        if self._skip_lf:
            self._skip_lf = False
            text = text.removeprefix("\n")
        *ended, rest = _LINE_END.split(text)
        # A CR last ended a line at once: an LF opening the next chunk only completes it.
        self._skip_lf = text.endswith("\r")
        events: list[ServerSentEvent] = []
        for piece in ended:
            self._partial.append(piece)
            event = self._line("".join(self._partial))
            self._partial = []
            if event is not None:
                events.append(event)
        if rest:
            self._partial.append(rest)
        return events

    def _line(self, line: str) -> ServerSentEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None  # a comment (servers send them to keep a connection alive)
        name, colon, value = line.partition(":")
        if colon:
            value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\x00" not in value:
            self._last_id = value
        return None  # retry, and fields the standard does not know: ignored

    def _dispatch(self) -> ServerSentEvent | None:
        event, data = self._event or "message", self._data
        self._event, self._data = "", []
        if not data:
            return None
        return ServerSentEvent(event, "\n".join(data), self._last_id)
