"""Interactive runs over the WebSocket ``GET /v1/ws`` (API.md, "Streaming output"): the
program's ``input()`` waits for the client's next ``stdin`` message; one connection carries
runs one after another.

Usage::

    with run_interactive(server, key, execution_body("print(int(input()) * 2)")) as run:
        run.send_stdin("21\\n")
        run.end_stdin()                       # optional: the program's next read sees EOF
        for event in run:                     # OutputEvent('stdout', '42\\n'), RecordEvent(...)
            ...

    with ExecutionSocket.connect(server, key) as socket:     # several runs, one connection
        first = socket.run(execution_body("print(1)")).wait()
        second = socket.run({"code": "x"}, session_id=session.id).wait()
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from types import TracebackType
from typing import Any, Self

from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
from websockets.sync.client import ClientConnection, connect

from serve_app._client_events import (
    InteractiveEvent,
    RecordEvent,
    RefusalEvent,
    api_error,
    event_from,
    parse_json,
)
from serve_app._client_http import (
    CONNECT_TIMEOUT_S,
    api_error_response,
    auth_headers,
    retry_after_s,
    url,
)
from serve_app.errors import (
    ApiClientError,
    ApiErrorResponse,
    ServerUnreachableError,
)

__all__ = [
    "MAX_MESSAGE_BYTES",
    "ExecutionSocket",
    "InteractiveRun",
    "event_of",
    "refusal",
    "run_interactive",
    "run_message",
    "ws_url",
]

MAX_MESSAGE_BYTES = 64 * 2**20
"""Largest message taken from the server: a record holds up to MAX_RECORD_BYTES (16 MiB by
default) of JSON, artifacts included."""


GOING_ON = ("stdin", "stdin_eof")
"""An error in reply to these leaves the run going; to any other (``run``, ``auth``, one the
service could not read), the run is over."""


def ws_url(server: str) -> str:
    """``http://h:p`` -> ``ws://h:p/v1/ws`` (``https`` -> ``wss``)."""
    address = url(server, "/v1/ws")
    scheme, separator, rest = address.partition("://")
    schemes = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}
    if not separator or scheme.lower() not in schemes:
        raise ServerUnreachableError(f"cannot reach {server}: not an http(s) URL")
    return f"{schemes[scheme.lower()]}://{rest}"


class ExecutionSocket:
    """A connection to ``/v1/ws``, authenticated by its header; :meth:`run` starts a run,
    which must end (its record read) before the next starts."""

    def __init__(self, connection: ClientConnection, owned: contextlib.ExitStack) -> None:
        self.connection = connection
        self._owned = owned  # what closes the connection
        self._running: InteractiveRun | None = None

    @classmethod
    def connect(
        cls, server: str, key: str | None, *, open_timeout_s: float = CONNECT_TIMEOUT_S
    ) -> Self:
        address = ws_url(server)
        owned = contextlib.ExitStack()
        try:
            # Entered as a context manager, as websockets wants its connections (>= 17.1).
            connection = owned.enter_context(
                connect(
                    address,
                    additional_headers=auth_headers(key),
                    open_timeout=open_timeout_s,
                    max_size=MAX_MESSAGE_BYTES,
                )
            )
        except InvalidStatus as exc:
            raise refusal(exc) from None
        except (WebSocketException, OSError, TimeoutError) as exc:
            raise ServerUnreachableError(f"cannot reach {address}: {exc}") from None
        return cls(connection, owned)

    def run(self, body: dict[str, Any], *, session_id: str | None = None) -> InteractiveRun:
        """Start a run of ``body`` (an execution request; with ``session_id``, a call in that
        session). Its errors (refusals too) come out of iterating it."""
        if self._running is not None and not self._running.finished:
            raise ApiClientError("a run is still going on this connection")
        self._running = InteractiveRun(self.connection)
        # A closed connection (a refused key, say) tells why in the messages it left: they,
        # or its close, come out of the iteration.
        with contextlib.suppress(ServerUnreachableError):
            self._running.send(run_message(body, session_id))
        return self._running

    def close(self) -> None:
        """Close the connection (a run still going is cancelled by the server)."""
        self._owned.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class InteractiveRun:
    """One run on an :class:`ExecutionSocket`: iterate it for its events (the last a
    :class:`RecordEvent`; a :class:`RefusalEvent` when text sent was refused, the run going
    on); :meth:`send_stdin` and :meth:`end_stdin` may be called from another thread meanwhile
    (a thread reading a terminal, say). An error that ends the run (a refused request, a
    failure) is raised as :class:`ApiErrorResponse`."""

    def __init__(self, connection: ClientConnection) -> None:
        self.connection = connection
        self.record_event: RecordEvent | None = None  # the last event, once come
        self.finished = False

    def send_stdin(self, text: str) -> None:
        """Give the program ``text`` on its standard input."""
        self.send({"type": "stdin", "text": text})

    def end_stdin(self) -> None:
        """End the program's standard input: its reads see EOF once they took what was sent."""
        self.send({"type": "stdin_eof"})

    def send(self, message: dict[str, Any]) -> None:
        try:
            self.connection.send(json.dumps(message))
        except ConnectionClosed as exc:
            raise ServerUnreachableError(f"the connection closed: {exc}") from None

    def __iter__(self) -> Iterator[InteractiveEvent]:
        while not self.finished:
            event = self._next()
            if event is not None:
                yield event

    def wait(self) -> RecordEvent:
        """Read the run to its end, the output left behind; its record."""
        for _ in self:
            pass
        if self.record_event is None:  # its error was raised already
            raise ApiClientError("the run ended without a record")
        return self.record_event

    def _next(self) -> InteractiveEvent | None:
        try:
            message = self.connection.recv()
        except ConnectionClosed as exc:
            self.finished = True
            raise ServerUnreachableError(
                f"the connection closed before the record: {exc}"
            ) from None
        try:
            event = event_of(message)
        except ApiClientError:
            self.finished = True  # the run is over: refused, failed, or the stream broken
            raise
        if isinstance(event, RecordEvent):
            self.finished, self.record_event = True, event
        return event


def event_of(message: str | bytes) -> InteractiveEvent | None:
    """A message of the service as the event it is (None: a kind this client does not know);
    an error that ends the run raised as :class:`ApiErrorResponse`."""
    if isinstance(message, bytes):
        raise ServerUnreachableError("the server sent a binary message")
    payload = parse_json(message, "a message of the server")
    kind = payload.get("type") if isinstance(payload, dict) else None
    if kind == "error" and payload.get("in_reply_to") in GOING_ON:
        return RefusalEvent(str(payload["in_reply_to"]), api_error(payload))
    if kind == "record":  # the record sits beside the type, not in its place
        payload = payload.get("record")
    return event_from(str(kind), payload)


def run_message(body: dict[str, Any], session_id: str | None) -> dict[str, Any]:
    """The ``run`` message of ``body`` (with ``session_id``, a call in that session)."""
    message: dict[str, Any] = {"type": "run", "request": body}
    if session_id is not None:
        message["session_id"] = session_id
    return message


@contextlib.contextmanager
def run_interactive(
    server: str, key: str | None, body: dict[str, Any], *, session_id: str | None = None
) -> Iterator[InteractiveRun]:
    """One run on a connection of its own, closed at the end of the block (which cancels the
    run if it was still going)."""
    with ExecutionSocket.connect(server, key) as socket:
        yield socket.run(body, session_id=session_id)


def refusal(exc: InvalidStatus) -> ApiErrorResponse:
    """The HTTP answer that refused the handshake (401 without a valid key, say)."""
    response = exc.response
    body = response.body.decode("utf-8", "replace") if response.body else ""
    try:
        error = json.loads(body)["error"]
        code, message = str(error["code"]), str(error["message"])
    except (json.JSONDecodeError, KeyError, TypeError):
        code, message = "http_error", response.reason_phrase
    retry = retry_after_s(response.headers)  # case-insensitive, as httpx's
    return api_error_response(response.status_code, code, message, body, retry)
