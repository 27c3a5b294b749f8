"""Interactive runs over the WebSocket ``GET /v1/ws`` for the asyncio client: the same
messages as :mod:`serve_app._client_ws`, on websockets' asyncio connection.

Usage::

    async with client.interactive("print(int(input()) * 2)") as run:
        await run.send_stdin("21\\n")
        async for event in run:               # OutputEvent('stdout', '42\\n'), RecordEvent(...)
            ...
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from serve_app._client_events import InteractiveEvent, RecordEvent
from serve_app._client_http import CONNECT_TIMEOUT_S, auth_headers
from serve_app._client_ws import MAX_MESSAGE_BYTES, event_of, refusal, run_message, ws_url
from serve_app.errors import ApiClientError, ServerUnreachableError

__all__ = ["AsyncInteractiveRun", "arun_interactive"]


class AsyncInteractiveRun:
    """One run on its own connection: ``async for`` its events (the last a
    :class:`RecordEvent`); :meth:`send_stdin` and :meth:`end_stdin` meanwhile, from another
    task if need be. An error that ends the run is raised as :class:`ApiErrorResponse`."""

    def __init__(self, connection: ClientConnection) -> None:
        self.connection = connection
        self.record_event: RecordEvent | None = None
        self.finished = False

    async def send_stdin(self, text: str) -> None:
        """Give the program ``text`` on its standard input."""
        await self.send({"type": "stdin", "text": text})

    async def end_stdin(self) -> None:
        """End the program's standard input."""
        await self.send({"type": "stdin_eof"})

    async def send(self, message: dict[str, Any]) -> None:
        try:
            await self.connection.send(json.dumps(message))
        except ConnectionClosed as exc:
            raise ServerUnreachableError(f"the connection closed: {exc}") from None

    async def __aiter__(self) -> AsyncIterator[InteractiveEvent]:
        while not self.finished:
            event = await self._next()
            if event is not None:
                yield event

    async def wait(self) -> RecordEvent:
        """Read the run to its end, the output left behind; its record."""
        async for _ in self:
            pass
        if self.record_event is None:  # its error was raised already
            raise ApiClientError("the run ended without a record")
        return self.record_event

    async def _next(self) -> InteractiveEvent | None:
        try:
            message = await self.connection.recv()
        except ConnectionClosed as exc:
            self.finished = True
            raise ServerUnreachableError(
                f"the connection closed before the record: {exc}"
            ) from None
        try:
            event = event_of(message)
        except ApiClientError:
            self.finished = True
            raise
        if isinstance(event, RecordEvent):
            self.finished, self.record_event = True, event
        return event


@contextlib.asynccontextmanager
async def arun_interactive(
    server: str, key: str | None, body: dict[str, Any], *, session_id: str | None = None
) -> AsyncIterator[AsyncInteractiveRun]:
    """One run of ``body`` on a connection of its own, closed at the block's end (which
    cancels the run if it was still going)."""
    address = ws_url(server)
    try:
        connection = await connect(
            address,
            additional_headers=auth_headers(key),
            open_timeout=CONNECT_TIMEOUT_S,
            max_size=MAX_MESSAGE_BYTES,
        )
    except InvalidStatus as exc:
        raise refusal(exc) from None
    except (WebSocketException, OSError, TimeoutError) as exc:
        raise ServerUnreachableError(f"cannot reach {address}: {exc}") from None
    async with connection:
        run = AsyncInteractiveRun(connection)
        # A connection the server closed at once tells why in what it left: see __aiter__.
        with contextlib.suppress(ServerUnreachableError):
            await run.send(run_message(body, session_id))
        yield run
