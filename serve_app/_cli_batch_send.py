"""Sending the lines of ``exec-agent batch``: ``/v1/batches`` of at most ``chunk_size`` items,
a few in flight at once, their records written in input order as they finish.

Usage::

    sender = Sender(client, lines, writer, chunk_size=1000)
    sender.run()          # KeyboardInterrupt: sender.finish() writes what had finished
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from executors import TERMINAL_STATUSES
from serve_app._cli_batch_lines import Line, error_line
from serve_app.client import BatchAnswer, Client, InvalidRequestResponse

__all__ = ["IN_FLIGHT_BATCHES", "POLL_WAIT_S", "Sender"]

IN_FLIGHT_BATCHES = 2
"""Batches sent and not yet done: the next is queued while one runs, and Ctrl-C leaves few."""
POLL_WAIT_S = 1.0
"""How long one read of a batch waits for it to finish: how often the progress moves."""

_ITEM_FIELD = re.compile(r"(?:^|\.)items\.(\d+)(?:\.|$)")
"""A 422's field naming one item of the batch (``items.3.limits``)."""
_BATCH_FIELD = re.compile(r"(?:^|\.)items$")
"""A 422's field naming the items as a whole: more than the server's ``MAX_BATCH_ITEMS``."""

Write = Callable[[dict[str, Any]], None]
"""Write one output line (a record or a line's error) and flush it."""


@dataclass
class _Batch:
    id: str
    lines: list[Line]


@dataclass
class Sender:
    """Sends ``lines`` through ``client``; ``write`` gets each one's output line in order,
    ``progress`` the number of lines finished so far."""

    client: Client
    lines: Sequence[Line]
    write: Write
    chunk_size: int
    progress: Callable[[int], None] = lambda _done: None
    outputs: dict[int, dict[str, Any]] = field(default_factory=dict)
    written: int = 0
    in_flight: list[_Batch] = field(default_factory=list)
    pending: list[Line] = field(default_factory=list)

    def run(self) -> None:
        """Send every line and write every output line (errors of the server raised)."""
        for line in self.lines:
            if line.error is not None:
                self.outputs[line.number] = line.error
        self.pending = [line for line in self.lines if line.body is not None]
        self._flush()
        while self.pending or self.in_flight:
            while self.pending and len(self.in_flight) < IN_FLIGHT_BATCHES:
                chunk, self.pending = (
                    self.pending[: self.chunk_size],
                    self.pending[self.chunk_size :],
                )
                self._submit(chunk)
                self._flush()
            if self.in_flight:
                self._poll(self.in_flight[0], POLL_WAIT_S)

    def finish(self) -> None:
        """After an interruption: read each batch in flight once more, write what finished."""
        for batch in list(self.in_flight):
            self._poll(batch, 0.0)

    @property
    def remaining(self) -> int:
        return len(self.lines) - self.written

    def _submit(self, lines: list[Line]) -> None:
        """Send ``lines`` as one batch. Refused as too large (over the server's
        ``MAX_BATCH_ITEMS``), they go back to be sent in halves from then on; items the server
        refuses get its error in their place (named by its ``details``, else found by halving
        the batch) and the rest go on."""
        try:
            accepted = self.client.submit_batch([line.body or {} for line in lines])
        except InvalidRequestResponse as exc:
            fields = [str(detail.get("field")) for detail in exc.details]
            if len(lines) > 1 and any(_BATCH_FIELD.search(name) for name in fields):
                self.chunk_size = len(lines) // 2
                self.pending = lines + self.pending
                return
            named = {int(m.group(1)) for name in fields if (m := _ITEM_FIELD.search(name))}
            refused = [lines[i] for i in sorted(named) if i < len(lines)]
            if not refused and len(lines) > 1:
                half = len(lines) // 2
                self._submit(lines[:half])
                self._submit(lines[half:])
                return
            for line in refused or lines:
                details = exc.details or None
                self.outputs[line.number] = error_line(line.number, exc.code, exc.message, details)
            rest = [line for line in lines if line.number not in self.outputs]
            if rest:
                self._submit(rest)
            return
        self.in_flight.append(_Batch(accepted.id, lines))

    def _poll(self, batch: _Batch, wait_s: float) -> None:
        answer: BatchAnswer = self.client.get_batch(batch.id, wait_s=wait_s)
        for line, record in zip(batch.lines, answer.items, strict=True):
            if record.status in TERMINAL_STATUSES:
                self.outputs[line.number] = record.to_api()
        if answer.status == "done":
            self.in_flight.remove(batch)
        self._flush()

    def _flush(self) -> None:
        """Write the output lines that are ready, in input order, up to the first not ready."""
        while self.written < len(self.lines):
            output = self.outputs.pop(self.lines[self.written].number, None)
            if output is None:
                break
            self.write(output)
            self.written += 1
        self.progress(self.written + len(self.outputs))
