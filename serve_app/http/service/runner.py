"""The executor call: one run through the executor handle, tried again once if its executor
replica died under it, each attempt counted as an active execution and (tracing on) in an
``executor.run`` span whose context goes to the executor replica with the request.

A run is never tried again after the program reported a result; a second failure, or any
other failure of the executors, answers ``internal_error``: the service failed, not the code.
The executors' refusal of a first attempt (``BackPressureError``) is the caller's to handle.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

from opentelemetry.trace import SpanKind, Tracer
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError

from executors import ExecutionRecord, ExecutionRequest
from executors.telemetry import (
    ATTEMPT,
    EXECUTION_ID,
    REQUEST_ID,
    STATUS,
    current_tracer,
    inject_context,
    mark_failed,
)
from serve_app.api import current_request_id
from serve_app.http._metrics import IngressMetrics

__all__ = ["EXECUTOR_ATTEMPTS", "Runner"]

logger = logging.getLogger(__name__)

EXECUTOR_ATTEMPTS = 2
"""A run is tried again once if its executor replica dies under it (issue: "retried once
where safe"); never after the program reported a result."""
HANDLE_MARGIN_S = 60.0
"""How long past its wall timeout a run may take through the handle (queueing included)."""


class Runner:
    """Runs requests through the executor deployment's handle."""

    def __init__(self, executor: Any, metrics: IngressMetrics) -> None:
        self.executor = executor
        self._metrics = metrics

    async def run(
        self, execution_id: uuid.UUID, request: ExecutionRequest, *, background: bool
    ) -> ExecutionRecord:
        """The executors' record of ``request`` (or ``internal_error``). Raises
        ``BackPressureError`` when the executors refuse it: always in the ``background``, else
        only on the first attempt (a retry's run was accepted and started: it ends as a
        record, not as a refusal that forgets it)."""
        tracer = current_tracer()
        record = ExecutionRecord.internal_error(request)
        for attempt in range(1, EXECUTOR_ATTEMPTS + 1):
            try:
                call = (
                    self._at_executors(self.executor.run.remote(request))
                    if tracer is None
                    else self._traced(tracer, execution_id, request, attempt)
                )
                result = await asyncio.wait_for(
                    call, timeout=request.limits.wall_timeout_s + HANDLE_MARGIN_S
                )
                return ExecutionRecord.model_validate(result)
            except BackPressureError:
                if background or attempt == 1:
                    raise
                logger.warning("execution %s: no executor for the retry", execution_id)
                return ExecutionRecord.internal_error(request)
            except RayActorError as exc:
                logger.warning(
                    "execution %s: executor replica lost (attempt %d): %s",
                    execution_id,
                    attempt,
                    type(exc).__name__,
                )
            except Exception as exc:  # noqa: BLE001 - any executor failure ends as internal_error
                # The type only (no traceback): a remote error may carry the program's text.
                logger.error(
                    "execution %s failed in the executors: %s", execution_id, type(exc).__name__
                )
                return ExecutionRecord.internal_error(request)
        return record

    async def _at_executors(self, call: Any) -> Any:
        """Await the executors' answer to ``call``, counted as an active execution meanwhile."""
        self._metrics.run_started()
        try:
            return await call
        finally:
            self._metrics.run_ended()

    async def _traced(
        self, tracer: Tracer, execution_id: uuid.UUID, request: ExecutionRequest, attempt: int
    ) -> Any:
        """:meth:`_at_executors` of the run, in an ``executor.run`` span; ids and the status
        only."""
        with tracer.start_as_current_span(
            "executor.run",
            kind=SpanKind.CLIENT,
            attributes={EXECUTION_ID: str(execution_id), ATTEMPT: attempt},
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            request_id = current_request_id()
            if request_id:
                span.set_attribute(REQUEST_ID, request_id)
            carrier = inject_context(str(execution_id))
            try:
                result = await self._at_executors(
                    self.executor.run.remote(request, trace_context=carrier)
                )
            except BaseException as exc:
                mark_failed(span, exc)
                raise
            status = result.get("status") if isinstance(result, dict) else None
            if isinstance(status, str):
                span.set_attribute(STATUS, status)
            return result
