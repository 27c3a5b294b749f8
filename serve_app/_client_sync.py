"""The sync client: :class:`Client` (one ``httpx.Client`` pool) and its :class:`Session`.

What each method sends is :mod:`serve_app._client_calls`; retries are
:class:`~serve_app._client_retry.RetryPolicy`'s. See :mod:`serve_app.client` for use.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Generator, Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any, Self, TypeVar, Unpack
from uuid import UUID

import httpx

from executors import TERMINAL_STATUSES, ExecutionRecord, RuntimeInfo
from serve_app import _client_calls as calls
from serve_app._client_calls import CallOptions, RunOptions, SessionOptions, execution_body
from serve_app._client_events import StreamEvent
from serve_app._client_http import (
    TIMEOUT,
    Call,
    auth_headers,
    checked_server,
    key_from_env,
    session_route,
)
from serve_app._client_retry import RetryPolicy
from serve_app._client_stream import stream_events
from serve_app._client_ws import ExecutionSocket, InteractiveRun, run_interactive
from serve_app.api import SessionInfo
from serve_app.api.answers import BatchAccepted, BatchAnswer, ExecutionPage
from serve_app.errors import ServerUnreachableError

__all__ = ["DEFAULT_MAX_BATCH_ITEMS", "Client", "Session", "chunked"]

DEFAULT_MAX_BATCH_ITEMS = 1000
"""The server's ``MAX_BATCH_ITEMS`` by default: a larger batch is sent as several."""

_T = TypeVar("_T")


class Client:
    """A client of one server: ``key`` (else ``$EXEC_AGENT_API_KEY``) on every request, one
    pool of connections (close it, or use the client as a context manager)."""

    def __init__(
        self,
        server: str,
        key: str | None = None,
        *,
        max_batch_items: int = DEFAULT_MAX_BATCH_ITEMS,
        retry: RetryPolicy | None = None,
        timeout: httpx.Timeout = TIMEOUT,
    ) -> None:
        self.server = checked_server(server)
        self.key = key_from_env(key)
        self.max_batch_items = max_batch_items
        self.retry = retry or RetryPolicy()
        self.http = httpx.Client(
            base_url=self.server, headers=auth_headers(self.key), timeout=timeout
        )

    # --- executions

    def run(
        self, code: str, *, idempotency_key: str | None = None, **options: Unpack[RunOptions]
    ) -> ExecutionRecord:
        """Run ``code`` and return its finished record (``POST /v1/executions``)."""
        body = execution_body(code, **options)
        record = self.send(calls.create_execution(body, wait=True, idempotency_key=idempotency_key))
        # A replayed Idempotency-Key answers the first execution, finished or not.
        return record if record.status in TERMINAL_STATUSES else self.wait(record.id)

    def submit(
        self, code: str, *, idempotency_key: str | None = None, **options: Unpack[RunOptions]
    ) -> ExecutionRecord:
        """Start ``code`` in the background: its record, ``queued`` (``wait: false``)."""
        body = execution_body(code, **options)
        return self.send(calls.create_execution(body, wait=False, idempotency_key=idempotency_key))

    def get(self, execution_id: str | UUID, *, wait_s: float = 0.0) -> ExecutionRecord:
        """The record now, or once terminal within ``wait_s`` (at most 60) seconds."""
        return self.send(calls.execution(execution_id, wait_s))

    def wait(self, execution_id: str | UUID, *, timeout_s: float | None = None) -> ExecutionRecord:
        """The record once terminal (``timeout_s``: give up then, the record as it is)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            left = calls.MAX_WAIT_S if deadline is None else deadline - time.monotonic()
            record = self.get(execution_id, wait_s=max(0.0, left))
            if record.status in TERMINAL_STATUSES or left <= 0:
                return record

    def executions_page(self, *, limit: int = 100, cursor: str | None = None) -> ExecutionPage:
        """One page of the key's executions, newest first, and the next page's cursor."""
        return self.send(calls.executions_page(limit, cursor))

    def executions(self, *, page_size: int = 100) -> Iterator[ExecutionRecord]:
        """Every execution of the key, newest first, read a page at a time."""
        cursor: str | None = None
        while True:
            page = self.executions_page(limit=page_size, cursor=cursor)
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def artifact(self, execution_id: str | UUID, path: str) -> bytes:
        """The bytes of the artifact ``path`` (``out/plot.png``) of an execution."""
        return self.send(calls.artifact(execution_id, path))

    def stream(
        self, code: str, **options: Unpack[RunOptions]
    ) -> Generator[StreamEvent, None, None]:
        """Run ``code`` streamed: :class:`OutputEvent` s as it writes, then a
        :class:`RecordEvent`. Leaving the loop early (closing the generator) cancels the run."""
        return stream_events(self.http, "/v1/executions", execution_body(code, **options))

    def interactive(
        self, code: str, **options: Unpack[RunOptions]
    ) -> contextlib.AbstractContextManager[InteractiveRun]:
        """Run ``code`` over the WebSocket, its standard input sent as it runs (a connection
        of its own, closed at the block's end)."""
        return run_interactive(self.server, self.key, execution_body(code, **options))

    def socket(self) -> ExecutionSocket:
        """A WebSocket connection for several interactive runs, one after another."""
        return ExecutionSocket.connect(self.server, self.key)

    # --- batches

    def submit_batch(self, items: Iterable[Mapping[str, Any]]) -> BatchAccepted:
        """One ``POST /v1/batches`` (at most the server's ``MAX_BATCH_ITEMS`` items)."""
        return self.send(calls.create_batch(items))

    def get_batch(self, batch_id: str, *, wait_s: float = 0.0) -> BatchAnswer:
        """The batch now, or once done within ``wait_s`` (at most 60) seconds."""
        return self.send(calls.batch(batch_id, wait_s))

    def wait_batch(self, batch_id: str) -> BatchAnswer:
        """The batch once every item is terminal."""
        while True:
            answer = self.get_batch(batch_id, wait_s=calls.MAX_WAIT_S)
            if answer.status == "done":
                return answer

    def batch(self, items: Iterable[Mapping[str, Any]]) -> list[ExecutionRecord]:
        """Run ``items`` (execution requests, e.g. :func:`execution_body`'s) as batches of at
        most ``max_batch_items``, all sent before any is waited for; their records in order."""
        accepted = [self.submit_batch(chunk) for chunk in chunked(items, self.max_batch_items)]
        return [record for batch in accepted for record in self.wait_batch(batch.id).items]

    # --- sessions

    def create_session(self, **options: Unpack[SessionOptions]) -> Session:
        """A new live interpreter (``POST /v1/sessions``), as a :class:`Session`."""
        return Session(self, self.send(calls.create_session(options)))

    def get_session(self, session_id: str) -> SessionInfo:
        return self.send(calls.session(session_id))

    def sessions_page(
        self, *, limit: int = 100, cursor: str | None = None
    ) -> tuple[list[SessionInfo], str | None]:
        """One page of the key's sessions, newest first, and the next page's cursor."""
        return self.send(calls.sessions_page(limit, cursor))

    def delete_session(self, session_id: str) -> None:
        """End a session at once (an ended one: nothing)."""
        self.send(calls.delete_session(session_id))

    # --- the server

    def runtimes(self) -> list[RuntimeInfo]:
        """``GET /v1/runtimes``: the Python environments programs may run in."""
        return self.send(calls.runtimes())

    def health(self, *, ready: bool = False) -> dict[str, Any]:
        """``/health`` (``{"status": "ok"}``), or with ``ready`` ``/health/ready``'s checks."""
        return self.send(calls.health(ready=ready))

    def send(self, call: Call[_T]) -> _T:
        """Send ``call``, retried as :attr:`retry` allows; its answer."""
        answer: _T = self.retry.sync(idempotent=call.idempotent)(self._once, call)
        return answer

    def _once(self, call: Call[_T]) -> _T:
        try:
            response = self.http.request(call.method, call.route, **call.options())
        except httpx.HTTPError as exc:
            raise ServerUnreachableError(f"cannot reach {self.server}: {exc}") from None
        return call.answer(response)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class Session:
    """A live interpreter of :meth:`Client.create_session`: ``run`` calls keep its state;
    ``close`` (or the ``with`` block's end) ends it."""

    def __init__(self, client: Client, info: SessionInfo) -> None:
        self.client = client
        self.info = info

    @property
    def id(self) -> str:
        return str(self.info.id)

    def run(self, code: str, **options: Unpack[CallOptions]) -> ExecutionRecord:
        """Run ``code`` in the session (``options``: ``stdin``, ``files``, ``limits``); its
        record, ``result`` the ``repr`` of a final expression's value."""
        return self.client.send(calls.session_call(self.id, execution_body(code, **options)))

    def stream(
        self, code: str, **options: Unpack[CallOptions]
    ) -> Generator[StreamEvent, None, None]:
        """Run ``code`` in the session, streamed (as :meth:`Client.stream`)."""
        route = f"{session_route(self.id)}/executions"
        return stream_events(self.client.http, route, execution_body(code, **options))

    def interactive(
        self, code: str, **options: Unpack[CallOptions]
    ) -> contextlib.AbstractContextManager[InteractiveRun]:
        """Run ``code`` in the session over the WebSocket, its input interactive."""
        body = execution_body(code, **options)
        return run_interactive(self.client.server, self.client.key, body, session_id=self.id)

    def refresh(self) -> SessionInfo:
        """The session as it is now (ended by the server, perhaps: ``status``)."""
        self.info = self.client.get_session(self.id)
        return self.info

    def close(self) -> None:
        """End the session (nothing if it had ended)."""
        self.client.delete_session(self.id)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def chunked(items: Iterable[_T], size: int) -> Iterator[list[_T]]:
    """``items`` in lists of at most ``size``."""
    chunk: list[_T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
