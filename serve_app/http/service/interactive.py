"""One ``/v1/ws`` connection (API.md, "Streaming output"): authentication, then runs one after
another, each with interactive standard input.

    conversation = Conversation(service, peer, bounds, presented=key_or_None, ...)
    await conversation.serve()          # returns when the connection is over

The client authenticates with its handshake's header or, without one, with an ``auth`` message
first, within ``WS_AUTH_TIMEOUT_S``: through :meth:`ExecutionService.authenticate`, so a
failure is audited and counted against the address exactly as over HTTP; a refusal is an error
event, then the connection closes (1008).

Each ``run`` is charged to the key's rate as an HTTP request is, then goes through the
service's streaming methods (every other check, the record, the audit of a refusal) under a
request id of its own. Its standard input stays open to ``stdin`` messages (through the
replica's :class:`executors.StdinRelays`) until ``stdin_eof``; its events go out as they come,
the ``record`` last. A client that goes away mid-run cancels the run (its event stream is
closed, as when an HTTP client leaves).

Messages are checked by :mod:`.interactive_messages`; a refused message is an error event and
the connection goes on, except a message over ``WS_MAX_MESSAGE_BYTES`` (closed with 1009). No
run going and no message for ``WS_IDLE_TIMEOUT_S``: closed (1000).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Protocol

from starlette.types import Message as AsgiMessage

from executors import StdinChannel, StdinRelays
from serve_app.api import ApiError, ExecutionCreate, RequestBounds, SessionCall, api_error
from serve_app.api.errors import log_error
from serve_app.db.models import ApiKey
from serve_app.errors import InvalidRequestError
from serve_app.http.service.interactive_input import RunInput
from serve_app.http.service.interactive_messages import (
    AuthMessage,
    RunMessage,
    StdinEofMessage,
    StdinMessage,
    claimed_type,
    decode_frame,
    error_event,
    parse_message,
    run_body,
    too_large,
    validate_message,
)
from serve_app.observability import capture_internal_error, reset_request_id, set_request_id
from serve_app.ratelimit import RateDecision
from serve_app.settings import Settings

__all__ = [
    "CLOSE_INTERNAL_ERROR",
    "CLOSE_NORMAL",
    "CLOSE_POLICY",
    "CLOSE_TOO_BIG",
    "CLOSE_TRY_LATER",
    "Conversation",
    "InteractiveService",
    "Peer",
]

logger = logging.getLogger(__name__)

CLOSE_NORMAL = 1000  # idle
CLOSE_POLICY = 1008  # authentication refused
CLOSE_TOO_BIG = 1009  # a message over WS_MAX_MESSAGE_BYTES
CLOSE_INTERNAL_ERROR = 1011
CLOSE_TRY_LATER = 1013  # authentication could not be checked (a dependency is down)

Events = AsyncIterator[dict[str, Any]]
Frame = str | bytes


class Peer(Protocol):
    """The client's end, as Starlette's ``WebSocket`` (already accepted) offers it."""

    async def receive(self) -> AsgiMessage: ...

    async def send_text(self, data: str) -> None: ...

    async def close(self, code: int = 1000, reason: str | None = None) -> None: ...


class InteractiveService(Protocol):
    """What a conversation needs of :class:`~serve_app.http.service.ExecutionService`."""

    settings: Settings

    @property
    def stdin_relays(self) -> StdinRelays: ...

    async def authenticate(
        self, presented: str | None, *, source_address: str | None = None
    ) -> ApiKey: ...

    async def hit(self, key: ApiKey, executions: int = 1) -> RateDecision: ...

    def admit(self, decision: RateDecision, key: ApiKey | None = None) -> None: ...

    async def stream_execution(
        self,
        key: ApiKey,
        body: ExecutionCreate,
        *,
        idempotency_key: str | None = None,
        request_id: str | None = None,
        stdin: StdinChannel | None = None,
    ) -> Events: ...

    async def stream_session_call(
        self,
        key: ApiKey,
        session_id: str,
        body: SessionCall,
        *,
        request_id: str | None = None,
        stdin: StdinChannel | None = None,
    ) -> Events: ...


class _Closed(Exception):
    """The conversation is over: the client left, or the service closed the connection."""


@dataclass
class _Run:
    """The run going on: its request id, standard input and the task forwarding its events."""

    request_id: str
    input: RunInput
    task: asyncio.Task[None] = field(init=False)


@contextlib.contextmanager
def _request_id(request_id: str) -> Iterator[None]:
    token = set_request_id(request_id)
    try:
        yield
    finally:
        reset_request_id(token)


class Conversation:
    """One connection's protocol; ``presented`` is the header's key (``None``: none sent, so
    the first message must be ``auth``; ``""``: a header that holds no usable key)."""

    def __init__(
        self,
        service: InteractiveService,
        peer: Peer,
        bounds: RequestBounds,
        *,
        presented: str | None,
        source_address: str | None,
        connection_id: str,
    ) -> None:
        self._service = service
        self._peer = peer
        self._bounds = bounds
        self._settings = service.settings
        self._presented = presented
        self._source = source_address
        self._connection_id = connection_id
        self._sending = asyncio.Lock()
        self._run: _Run | None = None

    async def serve(self) -> None:
        """Hold the conversation until the client leaves or the service closes it."""
        try:
            with _request_id(self._connection_id):
                key = await self._authenticate()
            await self._converse(key)
        except _TooLarge as too_big:
            with contextlib.suppress(_Closed):
                await self._send(error_event(too_big.error, too_big.request_id, None))
            await self._close(CLOSE_TOO_BIG, "message too big")
        except _Closed:
            pass
        except Exception as exc:  # noqa: BLE001 - a fault of ours: said generically, then closed
            with contextlib.suppress(_Closed):
                await self._refuse(exc, self._connection_id, None)
            await self._close(CLOSE_INTERNAL_ERROR, "internal error")
        finally:
            await self._stop_run()

    # --- authentication

    async def _authenticate(self) -> ApiKey:
        presented = self._presented
        if presented is None:
            presented = await self._first_message_key()
        try:
            return await self._service.authenticate(presented or None, source_address=self._source)
        except Exception as exc:  # noqa: BLE001 - every refusal is answered, then closed
            error = api_error(exc)
            log_error(error, exc)
            code = CLOSE_POLICY if error.status < 500 else CLOSE_TRY_LATER
            code = CLOSE_INTERNAL_ERROR if error.status == 500 else code
            await self._send(error_event(error, self._connection_id, "auth"))
            await self._close(code, "authentication failed")
            raise _Closed from None

    async def _first_message_key(self) -> str | None:
        """The key of the ``auth`` message that must come first; ``None`` (refused as a missing
        key, audited) for anything else or nothing within ``WS_AUTH_TIMEOUT_S``."""
        try:
            async with asyncio.timeout(self._settings.ws_auth_timeout_s):
                frame = await self._receive()
        except TimeoutError:
            return None
        self._check_size(frame)
        try:
            message = parse_message(frame, self._bounds)
        except Exception:  # noqa: BLE001 - not an auth message: no key
            return None
        return message.api_key if isinstance(message, AuthMessage) else None

    # --- the conversation

    async def _converse(self, key: ApiKey) -> None:
        receiving: asyncio.Future[Any] = asyncio.ensure_future(self._receive())
        try:
            while True:
                if self._run is None:
                    done, _ = await asyncio.wait({receiving}, timeout=self._idle_s)
                    if not done:
                        idle = f"idle for {self._idle_s:g} s"
                        await self._close(CLOSE_NORMAL, idle)
                        return
                else:
                    waited: set[asyncio.Future[Any]] = {receiving, self._run.task}
                    done, _ = await asyncio.wait(waited, return_when=asyncio.FIRST_COMPLETED)
                    if self._run.task in done:
                        await self._finish_run()
                    if receiving not in done:
                        continue
                frame = receiving.result()  # raises _Closed when the client left
                receiving = asyncio.ensure_future(self._receive())
                await self._handle(key, frame)
        finally:
            receiving.cancel()
            with contextlib.suppress(BaseException):
                await receiving

    @property
    def _idle_s(self) -> float:
        return self._settings.ws_idle_timeout_s

    async def _handle(self, key: ApiKey, frame: Frame) -> None:
        self._check_size(frame)
        request_id = self._run.request_id if self._run is not None else uuid.uuid4().hex
        kind = None
        try:
            data = decode_frame(frame, self._bounds)
            kind = claimed_type(data)
            message = validate_message(data)
        except Exception as exc:  # noqa: BLE001 - answered; the connection goes on
            await self._refuse(exc, request_id, kind)
            return
        if isinstance(message, RunMessage):
            await self._start(key, message)
        elif isinstance(message, StdinMessage):
            await self._stdin(message.text, request_id)
        elif isinstance(message, StdinEofMessage):
            await self._stdin(None, request_id)
        else:
            await self._refuse(InvalidRequestError("already authenticated"), request_id, "auth")

    def _check_size(self, frame: Frame) -> None:
        """A message over ``WS_MAX_MESSAGE_BYTES`` ends the connection (1009): a client that
        sends one is not speaking this protocol, and the next may be larger still."""
        limit = self._settings.ws_max_message_bytes
        if len(frame) <= limit // 4 or _size(frame) <= limit:
            return
        error = too_large(f"a message may hold at most {limit} bytes")
        request_id = self._run.request_id if self._run is not None else self._connection_id
        raise _TooLarge(error, request_id)

    # --- runs

    async def _start(self, key: ApiKey, message: RunMessage) -> None:
        """Accept a run: charged to the key's rate and validated here; opened (every other
        check, the insert, the first event) by its task, while the conversation goes on
        taking input: a program may read before it writes anything."""
        request_id = uuid.uuid4().hex
        if self._run is not None:
            # Not "run": the run going on is not the one refused.
            await self._refuse(InvalidRequestError("a run is in progress"), request_id, None)
            return
        with _request_id(request_id):  # the audit of a refusal, the record, the run's task
            try:
                # Charged first, as an HTTP request is before its body is read.
                self._service.admit(await self._service.hit(key), key)
                stream = self._stream(key, message, request_id)
                relays = self._service.stdin_relays
                run_input = RunInput(
                    relays, await relays.open(), max_bytes=self._settings.ws_max_stdin_bytes
                )
            except Exception as exc:  # noqa: BLE001 - the run is refused; the connection goes on
                await self._refuse(exc, request_id, "run")
                return
            run = _Run(request_id, run_input)
            run.task = asyncio.create_task(self._forward(stream, run_input.channel))
            self._run = run

    def _stream(
        self, key: ApiKey, message: RunMessage, request_id: str
    ) -> Callable[[StdinChannel], Awaitable[Events]]:
        """The run's request, validated, as the service call that starts it (given its input)."""
        service, bounds, session_id = self._service, self._bounds, message.session_id
        if session_id is None:
            body = run_body(ExecutionCreate, message, bounds)
            return lambda channel: service.stream_execution(
                key, body, request_id=request_id, stdin=channel
            )
        call = run_body(SessionCall, message, bounds)
        return lambda channel: service.stream_session_call(
            key, session_id, call, request_id=request_id, stdin=channel
        )

    async def _forward(
        self, stream: Callable[[StdinChannel], Awaitable[Events]], channel: StdinChannel
    ) -> None:
        """Open the run's stream (what refuses it is raised: :meth:`_finish_run` answers it)
        and send its events as they come; closing the stream (here, always) ends the run if it
        is still going."""
        events = await stream(channel)
        try:
            async for event in events:
                await self._send(_outgoing(event))
        finally:
            close = getattr(events, "aclose", None)
            if close is not None:
                await close()

    async def _finish_run(self) -> None:
        """The run's events are all out (or its stream failed: say so)."""
        run, self._run = self._run, None
        if run is None:
            return
        await run.input.close()
        failure = None if run.task.cancelled() else run.task.exception()
        if isinstance(failure, _Closed):
            raise _Closed
        if failure is not None:
            await self._refuse(failure, run.request_id, "run")

    async def _stop_run(self) -> None:
        """The client left (or the conversation failed) mid-run: cancel the run."""
        run, self._run = self._run, None
        if run is None:
            return
        run.task.cancel()
        with contextlib.suppress(BaseException):
            await run.task
        await run.input.close()

    # --- standard input

    async def _stdin(self, text: str | None, request_id: str) -> None:
        """Relay ``text`` to the run's program (``None``: end its input)."""
        kind = "stdin" if text is not None else "stdin_eof"
        if self._run is None:
            await self._refuse(InvalidRequestError("no run is going"), request_id, kind)
            return
        run_input = self._run.input
        try:
            refusal = await (run_input.end() if text is None else run_input.send(text))
        except Exception as exc:  # noqa: BLE001 - answered; the run goes on
            await self._refuse(exc, request_id, kind)
            return
        if refusal is not None:
            await self._send(error_event(refusal, request_id, kind))

    # --- the wire

    async def _receive(self) -> Frame:
        """The next message's text or bytes; :class:`_Closed` once the client left."""
        message = await self._peer.receive()
        if message["type"] == "websocket.disconnect":
            raise _Closed
        text = message.get("text")
        return text if text is not None else bytes(message.get("bytes") or b"")

    async def _send(self, event: dict[str, Any]) -> None:
        data = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
        try:
            async with self._sending:
                await self._peer.send_text(data)
        except Exception as exc:  # the client is gone (or going)
            raise _Closed from exc

    async def _refuse(self, exc: BaseException, request_id: str, in_reply_to: str | None) -> None:
        error = api_error(exc)
        if error.status == HTTPStatus.INTERNAL_SERVER_ERROR:
            capture_internal_error(exc)  # to Sentry, as the HTTP edge's last resort does
        log_error(error, exc)
        await self._send(error_event(error, request_id, in_reply_to))

    async def _close(self, code: int, reason: str) -> None:
        with contextlib.suppress(Exception):  # already closed by the client
            await self._peer.close(code, reason)


class _TooLarge(_Closed):
    """A message over the cap: answered, then the connection is closed with 1009."""

    def __init__(self, error: ApiError, request_id: str) -> None:
        self.error = error
        self.request_id = request_id
        super().__init__(error, request_id)


def _size(frame: Frame) -> int:
    return len(frame) if isinstance(frame, bytes) else len(frame.encode("utf-8", "surrogatepass"))


def _outgoing(event: dict[str, Any]) -> dict[str, Any]:
    """An engine event as the client gets it (only the protocol's fields)."""
    if event["type"] == "record":
        return {"type": "record", "record": event["record"]}
    return {"type": event["type"], "text": event["text"]}
