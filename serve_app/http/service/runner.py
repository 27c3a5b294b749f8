"""The executor call: one run through the executor handle (or a batch's chunk of runs in one
call), tried again once if its executor replica died under it, each attempt's runs counted as
active executions and (tracing on) in an ``executor.run`` span whose context goes to the
executor replica with the request. The handle is the run's runtime's own executor
deployment's if it has one, else the main one's (:meth:`Runner.lane`; a chunk's runs share
theirs).

A run is never tried again after the program reported a result; a second failure, or any
other failure of the executors, answers ``internal_error``: the service failed, not the code.
The executors' refusal of a first attempt (``BackPressureError``) is the caller's to handle.

A streamed run (:meth:`Runner.run_stream`) follows the same rules event by event: tried again
only if its replica was lost before it sent anything, and once output went out, any failure
ends the stream with an ``internal_error`` record event, never in silence.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry.trace import Span, SpanKind, Tracer, use_span
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError

from executors import ExecutionRecord, ExecutionRequest, record_event
from executors.telemetry import (
    ATTEMPT,
    BATCH_RUNS,
    EXECUTION_ID,
    REQUEST_ID,
    STATUS,
    current_tracer,
    inject_context,
    mark_failed,
)
from serve_app.api import current_request_id
from serve_app.http._metrics import IngressMetrics

if TYPE_CHECKING:
    from executors import StdinChannel

__all__ = ["EXECUTOR_ATTEMPTS", "Event", "Runner"]

logger = logging.getLogger(__name__)

EXECUTOR_ATTEMPTS = 2
"""A run is tried again once if its executor replica dies under it (issue: "retried once
where safe"); never after the program reported a result."""
HANDLE_MARGIN_S = 60.0
"""How long past its wall timeout a run may take through the handle (queueing included)."""

Event = dict[str, Any]
"""A streamed run's event: ``{"type": "stdout"|"stderr", "text": ...}``, and last
``{"type": "record", "record": <the record's API form>}`` (executors' streaming interface)."""


class Runner:
    """Runs requests through the executor deployment's handle, or through their runtime's own
    executor deployment's (``runtime_executors``: runtime to handle)."""

    def __init__(
        self,
        executor: Any,
        metrics: IngressMetrics,
        runtime_executors: Mapping[str, Any] | None = None,
        *,
        stream_buffer_bytes: int | None = None,
    ) -> None:
        self.executor = executor
        self.runtime_executors: Mapping[str, Any] = dict(runtime_executors or {})
        self._metrics = metrics
        self._stream_buffer_bytes = stream_buffer_bytes
        """What an executor replica holds of a streamed run's output for us (None: its own
        default)."""

    def lane(self, request: ExecutionRequest) -> str | None:
        """The runtime whose own executors run ``request``; None: the main executors. Runs
        sent in one call (a batch's chunk) must share their lane."""
        return request.runtime if request.runtime in self.runtime_executors else None

    def executor_for(self, request: ExecutionRequest) -> Any:
        """The handle of the executors that run ``request`` (:meth:`lane`)."""
        lane = self.lane(request)
        return self.executor if lane is None else self.runtime_executors[lane]

    async def run(
        self, execution_id: uuid.UUID, request: ExecutionRequest, *, background: bool
    ) -> ExecutionRecord:
        """The executors' record of ``request`` (or ``internal_error``). Raises
        ``BackPressureError`` when the executors refuse it: always in the ``background``, else
        only on the first attempt (a retry's run was accepted and started: it ends as a
        record, not as a refusal that forgets it)."""
        (record,) = await self._attempts([execution_id], [request], background=background)
        return record

    async def run_many(
        self, execution_ids: Sequence[uuid.UUID], requests: Sequence[ExecutionRequest]
    ) -> list[ExecutionRecord]:
        """:meth:`run` (in the background) of several requests of one :meth:`lane` as one call
        to one executor replica (``run_batch``: a batch's chunk); their records in order."""
        if len({self.lane(request) for request in requests}) > 1:
            raise ValueError("the runs of one call must share their lane")
        return await self._attempts(execution_ids, requests, background=True)

    async def run_stream(
        self,
        execution_id: uuid.UUID,
        request: ExecutionRequest,
        *,
        stdin: StdinChannel | None = None,
    ) -> AsyncIterator[Event]:
        """The events of ``request``'s run as the executors stream them, the last always a
        ``record`` event (validated; ``internal_error`` if the executors failed). Raises
        ``BackPressureError`` at the first event when the executors refuse the run. ``stdin``:
        more standard input the run reads as it comes (:class:`executors.StdinChannel`).
        Closing the iterator early (its client went away) cancels the run.

        >>> async for event in runner.run_stream(execution_id, request):  # doctest: +SKIP
        ...     send(event)
        """
        described = f"execution {execution_id}"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + request.limits.wall_timeout_s + HANDLE_MARGIN_S
        internal_error = record_event(ExecutionRecord.internal_error(request))
        for attempt in range(1, EXECUTOR_ATTEMPTS + 1):
            stream = self._open_stream(execution_id, request, stdin, attempt)
            delivered = False
            try:
                while True:
                    try:
                        async with asyncio.timeout_at(deadline):
                            event = await anext(stream.events)
                        record = _record_of(event)
                    except BackPressureError:
                        if attempt == 1:
                            raise
                        logger.warning("%s: no executor for the retry", described)
                        yield internal_error
                        return
                    except RayActorError as exc:
                        name = type(exc).__name__
                        logger.warning(
                            "%s: executor replica lost (attempt %d): %s", described, attempt, name
                        )
                        stream.failed(exc)
                        if delivered:
                            yield internal_error
                            return
                        break  # nothing went out yet: the next attempt starts over
                    except StopAsyncIteration:
                        logger.error("%s: the executors' stream ended without a record", described)
                        yield internal_error
                        return
                    except Exception as exc:  # noqa: BLE001 - any failure ends as internal_error
                        # The type only (no traceback): a remote error may carry the program's text.
                        logger.error(
                            "%s failed in the executors: %s", described, type(exc).__name__
                        )
                        stream.failed(exc)
                        yield internal_error
                        return
                    if record is not None:
                        stream.ended(record)
                        yield record_event(record)
                        return
                    delivered = True
                    yield event
            finally:
                stream.close()
        yield internal_error

    def _open_stream(
        self,
        execution_id: uuid.UUID,
        request: ExecutionRequest,
        stdin: StdinChannel | None,
        attempt: int,
    ) -> _ExecutorStream:
        """One attempt of :meth:`run_stream`: the streaming call through the request's handle,
        its trace context that of a span of its own."""
        span = _stream_span(execution_id, attempt)
        carrier = None
        if span is not None:
            with use_span(span, end_on_exit=False):
                carrier = inject_context(str(execution_id))
        executor = self.executor_for(request).options(stream=True)
        events = executor.run_stream.remote(
            request, trace_context=carrier, stdin=stdin, buffer_bytes=self._stream_buffer_bytes
        )
        return _ExecutorStream(events, span, self._metrics)

    async def _attempts(
        self,
        execution_ids: Sequence[uuid.UUID],
        requests: Sequence[ExecutionRequest],
        *,
        background: bool,
    ) -> list[ExecutionRecord]:
        tracer = current_tracer()
        internal_errors = [ExecutionRecord.internal_error(request) for request in requests]
        # Runs on one replica share its slots: the longest may wait for all the others.
        timeout_s = sum(request.limits.wall_timeout_s for request in requests) + HANDLE_MARGIN_S
        described = f"execution {execution_ids[0]}" + (
            f" and {len(execution_ids) - 1} more" if len(execution_ids) > 1 else ""
        )
        for attempt in range(1, EXECUTOR_ATTEMPTS + 1):
            try:
                call = (
                    self._at_executors(self._send(requests, None), len(requests))
                    if tracer is None
                    else self._traced(tracer, execution_ids, requests, attempt)
                )
                results = await asyncio.wait_for(call, timeout=timeout_s)
                if len(requests) == 1:
                    results = [results]
                if len(results) != len(requests):
                    raise ValueError("the executors answered a different number of records")
                return [ExecutionRecord.model_validate(result) for result in results]
            except BackPressureError:
                if background or attempt == 1:
                    raise
                logger.warning("%s: no executor for the retry", described)
                return internal_errors
            except RayActorError as exc:
                logger.warning(
                    "%s: executor replica lost (attempt %d): %s",
                    described,
                    attempt,
                    type(exc).__name__,
                )
            except Exception as exc:  # noqa: BLE001 - any executor failure ends as internal_error
                # The type only (no traceback): a remote error may carry the program's text.
                logger.error("%s failed in the executors: %s", described, type(exc).__name__)
                return internal_errors
        return internal_errors

    def _send(
        self, requests: Sequence[ExecutionRequest], carriers: list[dict[str, str]] | None
    ) -> Any:
        """One run through the handle, or several (of one lane) in one ``run_batch`` call."""
        executor = self.executor_for(requests[0])
        if len(requests) == 1:
            if carriers is None:
                return executor.run.remote(requests[0])
            return executor.run.remote(requests[0], trace_context=carriers[0])
        return executor.run_batch.remote(list(requests), trace_contexts=carriers)

    async def _at_executors(self, call: Any, runs: int) -> Any:
        """Await the executors' answer to ``call``, its ``runs`` counted as active executions
        meanwhile."""
        for _ in range(runs):
            self._metrics.run_started()
        try:
            return await call
        finally:
            for _ in range(runs):
                self._metrics.run_ended()

    async def _traced(
        self,
        tracer: Tracer,
        execution_ids: Sequence[uuid.UUID],
        requests: Sequence[ExecutionRequest],
        attempt: int,
    ) -> Any:
        """:meth:`_at_executors` of the runs, in an ``executor.run`` span; ids and the status
        only (of several runs: the first id, and their count)."""
        with tracer.start_as_current_span(
            "executor.run",
            kind=SpanKind.CLIENT,
            attributes={EXECUTION_ID: str(execution_ids[0]), ATTEMPT: attempt},
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            if len(requests) > 1:
                span.set_attribute(BATCH_RUNS, len(requests))
            request_id = current_request_id()
            if request_id:
                span.set_attribute(REQUEST_ID, request_id)
            carriers = [inject_context(str(execution_id)) for execution_id in execution_ids]
            try:
                result = await self._at_executors(self._send(requests, carriers), len(requests))
            except BaseException as exc:
                mark_failed(span, exc)
                raise
            status = result.get("status") if isinstance(result, dict) else None
            if isinstance(status, str):
                span.set_attribute(STATUS, status)
            return result


class _ExecutorStream:
    """One attempt of a streamed run: the handle's generator (``events``), counted as an active
    execution (and, tracing on, in its ``executor.run`` span) until :meth:`close`, which
    cancels the run unless it :meth:`ended`."""

    def __init__(self, events: Any, span: Span | None, metrics: IngressMetrics) -> None:
        self.events = events
        self._span = span
        self._metrics = metrics
        self._done = False
        metrics.run_started()

    def ended(self, record: ExecutionRecord) -> None:
        """The run ended with ``record``: nothing to cancel."""
        self._done = True
        if self._span is not None:
            self._span.set_attribute(STATUS, record.status.value)

    def failed(self, exc: BaseException) -> None:
        if self._span is not None:
            mark_failed(self._span, exc)

    def close(self) -> None:
        if not self._done:
            self.events.cancel()  # best effort: the executor replica kills the run
        self._metrics.run_ended()
        if self._span is not None:
            self._span.end()


def _record_of(event: Event) -> ExecutionRecord | None:
    """The record a ``record`` event carries (validated), None for any other event."""
    if event.get("type") != "record":
        return None
    return ExecutionRecord.model_validate(event.get("record"))


def _stream_span(execution_id: uuid.UUID, attempt: int) -> Span | None:
    """An ``executor.run`` span for a streamed attempt (tracing on), child of the current one.
    Never made current: a stream's events are read across tasks, and a context attached in
    one cannot be detached in another."""
    tracer = current_tracer()
    if tracer is None:
        return None
    span = tracer.start_span(
        "executor.run",
        kind=SpanKind.CLIENT,
        attributes={EXECUTION_ID: str(execution_id), ATTEMPT: attempt},
        record_exception=False,
        set_status_on_exception=False,
    )
    request_id = current_request_id()
    if request_id:
        span.set_attribute(REQUEST_ID, request_id)
    return span
