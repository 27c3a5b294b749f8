"""The asyncio client: :class:`AsyncClient` (one ``httpx.AsyncClient`` pool) and its
:class:`AsyncSession`, the same requests as the sync :class:`~serve_app.client.Client`
(:mod:`serve_app._client_calls`), awaited. See :mod:`serve_app.client` for use.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Mapping
from types import TracebackType
from typing import Any, Self, TypeVar, Unpack
from uuid import UUID

import httpx

from executors import TERMINAL_STATUSES, ExecutionRecord, RuntimeInfo
from serve_app import _client_calls as calls
from serve_app._client_async_ws import AsyncInteractiveRun, arun_interactive
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
from serve_app._client_stream import astream_events
from serve_app._client_sync import DEFAULT_MAX_BATCH_ITEMS, chunked
from serve_app.api import SessionInfo
from serve_app.api.answers import BatchAccepted, BatchAnswer, ExecutionPage
from serve_app.errors import ServerUnreachableError

__all__ = ["AsyncClient", "AsyncSession"]

_T = TypeVar("_T")


class AsyncClient:
    """The asyncio twin of :class:`~serve_app.client.Client`: the same constructor, the same
    methods, awaited (``stream`` and ``executions`` are async iterators); ``async with``."""

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
        self.http = httpx.AsyncClient(
            base_url=self.server, headers=auth_headers(self.key), timeout=timeout
        )

    # --- executions

    async def run(
        self, code: str, *, idempotency_key: str | None = None, **options: Unpack[RunOptions]
    ) -> ExecutionRecord:
        body = execution_body(code, **options)
        call = calls.create_execution(body, wait=True, idempotency_key=idempotency_key)
        record = await self.send(call)
        return record if record.status in TERMINAL_STATUSES else await self.wait(record.id)

    async def submit(
        self, code: str, *, idempotency_key: str | None = None, **options: Unpack[RunOptions]
    ) -> ExecutionRecord:
        body = execution_body(code, **options)
        return await self.send(
            calls.create_execution(body, wait=False, idempotency_key=idempotency_key)
        )

    async def get(self, execution_id: str | UUID, *, wait_s: float = 0.0) -> ExecutionRecord:
        return await self.send(calls.execution(execution_id, wait_s))

    async def wait(
        self, execution_id: str | UUID, *, timeout_s: float | None = None
    ) -> ExecutionRecord:
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        while True:
            left = calls.MAX_WAIT_S if deadline is None else deadline - loop.time()
            record = await self.get(execution_id, wait_s=max(0.0, left))
            if record.status in TERMINAL_STATUSES or left <= 0:
                return record

    async def executions_page(
        self, *, limit: int = 100, cursor: str | None = None
    ) -> ExecutionPage:
        return await self.send(calls.executions_page(limit, cursor))

    async def executions(self, *, page_size: int = 100) -> AsyncIterator[ExecutionRecord]:
        cursor: str | None = None
        while True:
            page = await self.executions_page(limit=page_size, cursor=cursor)
            for record in page.items:
                yield record
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def artifact(self, execution_id: str | UUID, path: str) -> bytes:
        return await self.send(calls.artifact(execution_id, path))

    def stream(self, code: str, **options: Unpack[RunOptions]) -> AsyncGenerator[StreamEvent, None]:
        """``async for event in client.stream(code)``: as :meth:`Client.stream`."""
        return astream_events(self.http, "/v1/executions", execution_body(code, **options))

    def interactive(
        self, code: str, **options: Unpack[RunOptions]
    ) -> contextlib.AbstractAsyncContextManager[AsyncInteractiveRun]:
        """``async with client.interactive(code) as run``: as :meth:`Client.interactive`."""
        return arun_interactive(self.server, self.key, execution_body(code, **options))

    # --- batches

    async def submit_batch(self, items: Iterable[Mapping[str, Any]]) -> BatchAccepted:
        return await self.send(calls.create_batch(items))

    async def get_batch(self, batch_id: str, *, wait_s: float = 0.0) -> BatchAnswer:
        return await self.send(calls.batch(batch_id, wait_s))

    async def wait_batch(self, batch_id: str) -> BatchAnswer:
        while True:
            answer = await self.get_batch(batch_id, wait_s=calls.MAX_WAIT_S)
            if answer.status == "done":
                return answer

    async def batch(self, items: Iterable[Mapping[str, Any]]) -> list[ExecutionRecord]:
        accepted = [
            await self.submit_batch(chunk) for chunk in chunked(items, self.max_batch_items)
        ]
        answers = await asyncio.gather(*(self.wait_batch(batch.id) for batch in accepted))
        return [record for answer in answers for record in answer.items]

    # --- sessions

    async def create_session(self, **options: Unpack[SessionOptions]) -> AsyncSession:
        return AsyncSession(self, await self.send(calls.create_session(options)))

    async def get_session(self, session_id: str) -> SessionInfo:
        return await self.send(calls.session(session_id))

    async def sessions_page(
        self, *, limit: int = 100, cursor: str | None = None
    ) -> tuple[list[SessionInfo], str | None]:
        return await self.send(calls.sessions_page(limit, cursor))

    async def delete_session(self, session_id: str) -> None:
        await self.send(calls.delete_session(session_id))

    # --- the server

    async def runtimes(self) -> list[RuntimeInfo]:
        return await self.send(calls.runtimes())

    async def health(self, *, ready: bool = False) -> dict[str, Any]:
        return await self.send(calls.health(ready=ready))

    async def send(self, call: Call[_T]) -> _T:
        """Send ``call``, retried as :attr:`retry` allows; its answer."""
        retrying = self.retry.asynchronous(idempotent=call.idempotent)
        return await retrying(self._once, call)

    async def _once(self, call: Call[_T]) -> _T:
        try:
            response = await self.http.request(call.method, call.route, **call.options())
        except httpx.HTTPError as exc:
            raise ServerUnreachableError(f"cannot reach {self.server}: {exc}") from None
        return call.answer(response)

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


class AsyncSession:
    """A live interpreter of :meth:`AsyncClient.create_session` (``async with``)."""

    def __init__(self, client: AsyncClient, info: SessionInfo) -> None:
        self.client = client
        self.info = info

    @property
    def id(self) -> str:
        return str(self.info.id)

    async def run(self, code: str, **options: Unpack[CallOptions]) -> ExecutionRecord:
        body = execution_body(code, **options)
        return await self.client.send(calls.session_call(self.id, body))

    def stream(
        self, code: str, **options: Unpack[CallOptions]
    ) -> AsyncGenerator[StreamEvent, None]:
        route = f"{session_route(self.id)}/executions"
        return astream_events(self.client.http, route, execution_body(code, **options))

    def interactive(
        self, code: str, **options: Unpack[CallOptions]
    ) -> contextlib.AbstractAsyncContextManager[AsyncInteractiveRun]:
        body = execution_body(code, **options)
        return arun_interactive(self.client.server, self.client.key, body, session_id=self.id)

    async def refresh(self) -> SessionInfo:
        self.info = await self.client.get_session(self.id)
        return self.info

    async def close(self) -> None:
        await self.client.delete_session(self.id)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
