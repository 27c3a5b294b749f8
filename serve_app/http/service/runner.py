"""The executor call: one run through the executor handle (or a batch's chunk of runs in one
call), tried again once if its executor replica died under it, each attempt's runs counted as
active executions and (tracing on) in an ``executor.run`` span whose context goes to the
executor replica with the request. The handle is the run's runtime's own executor
deployment's if it has one, else the main one's (:meth:`Runner.lane`; a chunk's runs share
theirs).

A run is never tried again after the program reported a result; a second failure, or any
other failure of the executors, answers ``internal_error``: the service failed, not the code.
The executors' refusal of a first attempt (``BackPressureError``) is the caller's to handle.

A run an executor replica handed back (``replica_draining``: Serve began stopping the replica,
in a rolling update or a downscale, before the run started there, so it never will) is sent
again, for Serve's router to place on another replica, up to :data:`HAND_BACKS` times; this
is not a retry (nothing ran) and costs none of the :data:`EXECUTOR_ATTEMPTS`. Of a batch's
chunk, only the handed-back runs are sent again; the others keep their records.

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

from executors import ExecutionRecord, ExecutionRequest, ReplicaDrainingError, record_event
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

__all__ = ["EXECUTOR_ATTEMPTS", "HAND_BACKS", "Event", "Runner"]

logger = logging.getLogger(__name__)

EXECUTOR_ATTEMPTS = 2
"""A run is tried again once if its executor replica dies under it (issue: "retried once
where safe"); never after the program reported a result."""
HAND_BACKS = 8
"""How many times a run handed back by a draining executor replica is sent again: in a rolling
update it may land on another old replica that drains next (the router prefers the new ones,
whose queues are short)."""
HAND_BACK_PAUSE_S = 0.1
"""Before the n-th resend, n times this: the routers hear of a stopping replica within moments,
and a resend to it before they have is handed back again."""
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
        attempt = handed_back = 0  # attempts (their replica may die under them); hand-backs
        while attempt < EXECUTOR_ATTEMPTS and handed_back <= HAND_BACKS:
            attempt += 1
            stream = self._open_stream(execution_id, request, stdin, attempt + handed_back)
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
                        if not delivered and _handed_back(exc) is not None:
                            # Never started: send it again, as if this call had not been.
                            handed_back += 1
                            logger.info("%s: handed back by a draining executor", described)
                            attempt -= 1
                            await asyncio.sleep(HAND_BACK_PAUSE_S * handed_back)
                            break
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
        records: list[ExecutionRecord | None] = [None] * len(requests)
        lost = handed_back = 0  # attempts whose replica died; calls handed back
        while True:
            pending = [index for index, record in enumerate(records) if record is None]
            ids = [execution_ids[index] for index in pending]
            runs = [requests[index] for index in pending]
            described = f"execution {ids[0]}" + (
                f" and {len(ids) - 1} more" if len(ids) > 1 else ""
            )
            try:
                results = await self._call(ids, runs, attempt=lost + handed_back + 1)
            except BackPressureError:
                if (background or lost == 0) and all(record is None for record in records):
                    raise  # nothing ran: the refusal is the caller's, as a first one's
                logger.warning("%s: no executor for the retry", described)
                break
            except RayActorError as exc:
                lost += 1
                logger.warning(
                    "%s: executor replica lost (attempt %d): %s",
                    described,
                    lost,
                    type(exc).__name__,
                )
                if lost >= EXECUTOR_ATTEMPTS:
                    break
                continue
            except Exception as exc:  # noqa: BLE001 - any executor failure ends as internal_error
                drained = _handed_back(exc)
                if drained is None:
                    # The type only (no traceback): a remote error may carry the program's text.
                    logger.error("%s failed in the executors: %s", described, type(exc).__name__)
                    break
                handed_back += 1
                done: list[Any] = list(getattr(drained, "records", None) or [])
                for index, result in zip(pending, done, strict=False):
                    if result is not None:
                        records[index] = ExecutionRecord.model_validate(result)
                logger.info("%s: handed back by a draining executor (%d)", described, handed_back)
                if handed_back > HAND_BACKS:
                    break
                await asyncio.sleep(HAND_BACK_PAUSE_S * handed_back)
                continue
            for index, result in zip(pending, results, strict=True):
                records[index] = ExecutionRecord.model_validate(result)
            break
        return [
            ExecutionRecord.internal_error(request) if record is None else record
            for request, record in zip(requests, records, strict=True)
        ]

    async def _call(
        self,
        execution_ids: Sequence[uuid.UUID],
        requests: Sequence[ExecutionRequest],
        *,
        attempt: int,
    ) -> list[Any]:
        """One call to the executors for ``requests`` (one lane), within their wall timeouts
        and :data:`HANDLE_MARGIN_S`: their results (records in API form), in order."""
        tracer = current_tracer()
        # Runs on one replica share its slots: the longest may wait for all the others.
        timeout_s = sum(request.limits.wall_timeout_s for request in requests) + HANDLE_MARGIN_S
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
        return list(results)

    def _send(
        self, requests: Sequence[ExecutionRequest], carriers: list[dict[str, str]] | None
    ) -> Any:
        """One run through the handle, or several (of one lane) in one ``run_batch`` call."""
        executor = self.executor_for(requests[0])
        if len(requests) == 1:
            if carriers is None:
                return executor.run.remote(requests[0])
            return executor.run.remote(requests[0], trace_context=carriers[0])
        return executor.run_batch.remote(list(requests), trace_contexts=carriers, hand_back=True)

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


def _handed_back(exc: BaseException) -> ReplicaDrainingError | None:
    """The executors' ``ReplicaDrainingError`` that ``exc`` is (or that Ray raised it for: the
    cause carries its ``records``: a batch's, None where handed back), None if it is another
    failure."""
    for candidate in (getattr(exc, "cause", None), exc):
        if isinstance(candidate, ReplicaDrainingError):
            return candidate
    return None


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
