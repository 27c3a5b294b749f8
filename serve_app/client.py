"""The Python client of the HTTP API (API.md), sync and asyncio, with the server's own models.

Usage (the key: ``key=``, else ``$EXEC_AGENT_API_KEY``)::

    import asyncio

    from serve_app.client import AsyncClient, Client, NotFoundResponse, OutputEvent

    with Client("http://127.0.0.1:8000") as client:
        record = client.run("print(6 * 7)", runtime="minimal")  # an ExecutionRecord
        assert record.status == "ok" and record.stdout == "42\\n"

        judged = client.run("def add(a, b):\\n    return a + b", test_code="assert add(2, 3) == 5")
        assert judged.passed

        queued = client.submit("import time; time.sleep(1)", runtime="minimal")  # at once
        assert client.wait(queued.id).status == "ok"  # polled until terminal

        records = client.batch({"code": f"print({i})"} for i in range(3))  # in request order
        assert [r.stdout for r in records] == ["0\\n", "1\\n", "2\\n"]

        with client.create_session(runtime="minimal") as session:  # a live interpreter
            session.run("x = 40")
            assert session.run("x + 2").result == "42"

        for event in client.stream("print('a'); print('b')", runtime="minimal"):
            if isinstance(event, OutputEvent):
                print(event.text, end="")  # as the program writes it
            else:
                assert event.record.stdout == "a\\nb\\n"  # a RecordEvent, always the last

        try:
            client.get("00000000-0000-0000-0000-000000000000")
        except NotFoundResponse as exc:  # every error answer: ApiErrorResponse
            assert exc.code == "not_found" and exc.http_status == 404


    async def main() -> list[str]:
        async with AsyncClient("http://127.0.0.1:8000") as client:
            runs = [client.run(f"print({i})", runtime="minimal") for i in range(3)]
            return [record.stdout for record in await asyncio.gather(*runs)]


    assert asyncio.run(main()) == ["0\\n", "1\\n", "2\\n"]

Also: ``client.executions()`` (every record, page by page; ``executions_page``), ``get``,
``artifact(id, "out/plot.png")``, ``runtimes()``, ``health()``, ``submit_batch``/``get_batch``,
``get_session``/``sessions_page``/``delete_session``, ``session.stream``, and over the
WebSocket ``client.interactive(code)`` (``async with`` in asyncio), whose standard input is
sent as it runs (``run.send_stdin``), and ``client.socket()`` for several runs (sync only).

Judging fields (``test_code``, ``cases``, ``judge``) and ``cache`` go with ``run``, ``submit``,
``stream`` and batch items. ``run`` and ``submit`` send a fresh ``Idempotency-Key`` (or
``idempotency_key=``), so that a retry never runs the program twice.

Retries (:class:`RetryPolicy`: ``max_attempts``, ``max_wait_s`` asleep in all): ``429
rate_limited``, ``503 overloaded`` and ``unavailable``, after their ``Retry-After``; a failed
connection, for a request safe to send again (reads, deletes, ``run``/``submit``). A batch
past ``max_batch_items`` (default 1000, the server's ``MAX_BATCH_ITEMS``) is sent as several.

Errors (:mod:`serve_app.errors`): :class:`ServerUnreachableError` (no answer), or an
:class:`ApiErrorResponse` subclass by its ``code``: :class:`RateLimitedResponse`,
:class:`OverloadedResponse`, :class:`UnavailableResponse`, :class:`NotFoundResponse`,
:class:`SessionBusyResponse`, :class:`SessionTerminatedResponse`,
:class:`SessionLimitResponse`, :class:`InvalidRequestResponse` (``details``),
:class:`PolicyViolationResponse`, :class:`UnauthorizedResponse`; each with ``code``,
``http_status``, ``message`` and ``retry_after_s``.
"""

from __future__ import annotations

from executors import ExecutionRecord, RuntimeInfo
from serve_app._client_async import AsyncClient, AsyncSession
from serve_app._client_async_ws import AsyncInteractiveRun
from serve_app._client_calls import CallOptions, RunOptions, SessionOptions, execution_body
from serve_app._client_events import (
    InteractiveEvent,
    OutputEvent,
    RecordEvent,
    RefusalEvent,
    StreamEvent,
)
from serve_app._client_http import KEY_ENV_VAR
from serve_app._client_retry import RetryPolicy
from serve_app._client_sync import DEFAULT_MAX_BATCH_ITEMS, Client, Session
from serve_app._client_ws import ExecutionSocket, InteractiveRun
from serve_app.api import SessionInfo
from serve_app.api.answers import BatchAccepted, BatchAnswer, ExecutionPage
from serve_app.errors import (
    ApiClientError,
    ApiErrorResponse,
    InvalidRequestResponse,
    NotFoundResponse,
    OverloadedResponse,
    PolicyViolationResponse,
    RateLimitedResponse,
    ServerUnreachableError,
    SessionBusyResponse,
    SessionLimitResponse,
    SessionTerminatedResponse,
    UnauthorizedResponse,
    UnavailableResponse,
)

__all__ = [
    "DEFAULT_MAX_BATCH_ITEMS",
    "KEY_ENV_VAR",
    "ApiClientError",
    "ApiErrorResponse",
    "AsyncClient",
    "AsyncInteractiveRun",
    "AsyncSession",
    "BatchAccepted",
    "BatchAnswer",
    "CallOptions",
    "Client",
    "ExecutionPage",
    "ExecutionRecord",
    "ExecutionSocket",
    "InteractiveEvent",
    "InteractiveRun",
    "InvalidRequestResponse",
    "NotFoundResponse",
    "OutputEvent",
    "OverloadedResponse",
    "PolicyViolationResponse",
    "RateLimitedResponse",
    "RecordEvent",
    "RefusalEvent",
    "RetryPolicy",
    "RunOptions",
    "RuntimeInfo",
    "ServerUnreachableError",
    "Session",
    "SessionBusyResponse",
    "SessionInfo",
    "SessionLimitResponse",
    "SessionOptions",
    "SessionTerminatedResponse",
    "StreamEvent",
    "UnauthorizedResponse",
    "UnavailableResponse",
    "execution_body",
]
