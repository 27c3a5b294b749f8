"""The engine on Ray: a sandbox pool as a Ray actor or a Ray Serve deployment.

:class:`SandboxExecutor` is a plain class, so the same code runs both ways::

    actor = ray.remote(SandboxExecutor).options(num_cpus=2).remote(config, 2)
    record = ray.get(actor.run.remote(request))                  # a JSON-able dict

    handle = serve.run(build_executor_app(config, 2, min_replicas=1, max_replicas=4))
    record = handle.run.remote(request).result()

Records travel as the API's JSON objects; callers re-validate them with
``ExecutionRecord.model_validate``. Ray is imported only inside :func:`build_executor_app`:
the rest of the engine (and ``exec-agent run``) works without it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Self

from opentelemetry.trace import SpanKind
from pydantic import BaseModel, ConfigDict, Field, model_validator

from executors._config import SandboxConfig
from executors._errors import ExecutorError, PoolClosedError, ReplicaDrainingError
from executors._logging import configure_json_logging, serve_request_id
from executors._metrics import executor_metrics
from executors._models import ExecutionRecord, ExecutionRequest
from executors._pool import SandboxPool
from executors._sandbox import LiveIO, StdinFeed
from executors._stdin_relay import StdinChannel, pull_stdin
from executors._streaming import STREAM_BUFFER_BYTES, StreamBuffer, record_event
from executors._tracing import (
    EXECUTION_ID,
    QUEUE_WAIT_S,
    REQUEST_ID,
    carried_execution_id,
    current_tracer,
    extract_context,
    flush_tracing,
    init_tracing_from_env,
    mark_failed,
    set_record_attributes,
)

if TYPE_CHECKING:
    from opentelemetry.trace import Span
    from ray import serve

__all__ = [
    "DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT_S",
    "DRAIN_POLL_S",
    "ExecutorAppArgs",
    "ReplicaRange",
    "SandboxExecutor",
    "app_builder",
    "build_executor_app",
    "serve_replica_draining",
]

logger = logging.getLogger("executors.deployment")

DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT_S = 35.0
"""How long a stopping replica may drain, seconds: the default of every deployment and of the
service's ``GRACEFUL_SHUTDOWN_TIMEOUT_S`` (the longest default wall timeout, 30 s, and some)."""

DRAIN_POLL_S = 0.2
"""How often a replica looks whether Serve has begun stopping it, seconds: how long a queued
run may wait before it is handed back to another replica."""

RequestLike = ExecutionRequest | dict[str, Any]


class SandboxExecutor:
    """A pool of ``slots`` sandboxes behind async methods; one replica or actor holds one.

    Each job runs on a thread of its own (one per slot), so up to ``slots`` jobs run at
    once while the actor keeps answering ``stats`` and health checks. A request cancelled
    before its job starts never runs; a started job runs to its own limits.

    Shutdown: ``close`` (or ``__del__``, which Ray Serve calls once a replica has drained)
    stops taking work, lets running jobs finish for ``shutdown_grace_s``, then kills them;
    killed jobs end as records, never as lost requests.

    Drain: once Serve begins stopping this replica (a rolling update, a downscale, a delete),
    every run still waiting for a slot is handed back: its job is cancelled before it starts
    (so it never runs here) and its call raises :class:`ReplicaDrainingError`, which its
    caller sends again for Serve's router to place on another replica; runs that started
    finish. So the replica's queue drains at once, and Serve's ``graceful_shutdown_timeout_s``
    only has to cover the runs in progress.
    """

    def __init__(self, config: SandboxConfig, slots: int, *, shutdown_grace_s: float = 5.0) -> None:
        configure_json_logging(component="executor")  # level: LOG_LEVEL; see _logging.py
        init_tracing_from_env(component="executor")  # OTEL_EXPORTER_OTLP_ENDPOINT; _tracing.py
        self._closed = True  # until the pool runs: __del__ must not touch a half-built object
        self._closing = threading.Lock()
        self._pool = SandboxPool(config, slots)
        self._metrics = self._pool.metrics = executor_metrics()  # no-ops outside Ray
        # Raises SandboxStartError or SandboxUnavailableError: a replica without sandboxes
        # must fail to start, not accept work.
        self._report = self._pool.start()
        # One thread per slot, so up to ``slots`` jobs run at once whatever the size of
        # the event loop's default executor.
        self._threads = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="sandbox-job")
        self._shutdown_grace_s = shutdown_grace_s
        # The jobs waiting for a slot (handed back on drain), and whether the drain began.
        self._queue_lock = threading.Lock()
        self._queued: set[Future[ExecutionRecord]] = set()
        self._draining = False
        self._handed_back: set[Future[ExecutionRecord]] = set()
        self._stop_watching = threading.Event()
        self._closed = False
        threading.Thread(target=self._watch_drain, name="drain-watch", daemon=True).start()

    async def run(
        self, request: RequestLike, trace_context: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        """Run one program in the next free slot; return its record in API form.

        ``trace_context``: the caller's W3C trace context (``traceparent``, ``baggage``); with
        tracing on, the run is a ``sandbox.run`` span under it (``executors/_tracing.py``)."""
        return (await self._traced(request, trace_context, None)).to_api()

    async def run_stream(
        self,
        request: RequestLike,
        trace_context: Mapping[str, str] | None = None,
        stdin: StdinChannel | None = None,
        buffer_bytes: int | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """:meth:`run`, streamed: the program's output as it writes it, then its record
        (``executors/_streaming.py``); through Serve, ``handle.options(stream=True)``.

        ``stdin``: a channel of an API replica's relay (``executors/_stdin_relay.py``) whose text
        the program reads after the request's ``stdin``, until the channel ends. At most
        ``buffer_bytes`` (default :data:`STREAM_BUFFER_BYTES`) of output wait for the caller;
        past it, chunks are dropped and counted in the record's ``stream_dropped_bytes``.
        Closing the stream (the caller went away) kills the run. A request with ``cases``
        streams its record alone."""
        checked = ExecutionRequest.model_validate(request)
        buffer = StreamBuffer(buffer_bytes or STREAM_BUFFER_BYTES)
        feed = None if stdin is None else StdinFeed()
        live = LiveIO(on_output=buffer.put_output, stdin=feed)
        run = asyncio.ensure_future(self._traced(checked, trace_context, live))
        run.add_done_callback(lambda done: _finish_stream(buffer, done))
        pull = (
            None
            if stdin is None or feed is None
            else asyncio.ensure_future(pull_stdin(stdin, feed))
        )
        try:
            async for event in buffer.events():
                yield event
        finally:
            for task in (run, pull):
                if task is not None and not task.done():
                    task.cancel()  # the caller went away: the run is killed
            if feed is not None:
                feed.close()

    async def _traced(
        self,
        request: RequestLike,
        trace_context: Mapping[str, str] | None,
        live: LiveIO | None,
        *,
        hand_back: bool = True,
    ) -> ExecutionRecord:
        tracer = current_tracer()
        if tracer is None:  # tracing off: the run and nothing else
            return await self._run(request, None, live, hand_back=hand_back)
        parent = extract_context(trace_context)
        with tracer.start_as_current_span(
            "sandbox.run",
            context=parent,
            kind=SpanKind.SERVER,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            request_id = serve_request_id()
            if request_id:
                span.set_attribute(REQUEST_ID, request_id)
            execution_id = carried_execution_id(parent)
            if execution_id:
                span.set_attribute(EXECUTION_ID, execution_id)
            try:
                record = await self._run(request, span, live, hand_back=hand_back)
            except BaseException as exc:
                mark_failed(span, exc)
                raise
            set_record_attributes(span, record)
        return record

    async def _run(
        self,
        request: RequestLike,
        span: Span | None,
        live: LiveIO | None = None,
        *,
        hand_back: bool = True,
    ) -> ExecutionRecord:
        checked = ExecutionRequest.model_validate(request)
        if hand_back and self._draining:  # a router had not yet heard this replica stops
            raise ReplicaDrainingError()
        received_at = self._metrics.received()
        cancel = threading.Event()
        try:
            job = self._threads.submit(
                self._run_job, checked, cancel, received_at, span, time.perf_counter(), live
            )
        except RuntimeError:  # the threads are shut down: close() ran
            self._metrics.dropped()
            raise PoolClosedError("the executor is shut down") from None
        job.add_done_callback(self._dropped_if_cancelled)  # cancelled while still queued
        if hand_back:
            self._queue(job)
        try:
            record = await asyncio.wrap_future(job)
        except asyncio.CancelledError:
            if job in self._handed_back and not _cancelling():
                # Cancelled by the drain before it started: it never runs here.
                self._handed_back.discard(job)
                raise ReplicaDrainingError() from None
            cancel.set()  # the caller went away (e.g. its client disconnected): stop the run
            raise
        self._metrics.finished(record)
        return record

    def _queue(self, job: Future[ExecutionRecord]) -> None:
        """Count ``job`` as waiting for a slot until it starts or ends; hand it back at once
        if the drain has begun."""
        with self._queue_lock:
            self._queued.add(job)
            draining = self._draining
        job.add_done_callback(self._unqueue)
        if draining:
            self._hand_back([job])

    def _unqueue(self, job: Future[ExecutionRecord]) -> None:
        with self._queue_lock:
            self._queued.discard(job)

    def _hand_back(self, jobs: Sequence[Future[ExecutionRecord]]) -> None:
        """Cancel every job of ``jobs`` that has not started: ``Future.cancel`` fails for one
        a thread already took, which then runs to its end (never both)."""
        for job in jobs:
            self._handed_back.add(job)
            if not job.cancel():
                self._handed_back.discard(job)  # started: it runs here, to its end

    def _watch_drain(self) -> None:
        """On a thread of its own: when Serve begins stopping this replica, hand back every
        job still waiting for a slot, and every job queued from then on."""
        draining = serve_replica_draining()
        if draining is None:  # a plain Ray actor, or no Ray: Serve never drains it
            return
        while not self._stop_watching.wait(DRAIN_POLL_S):
            if draining():
                if not deployment_goes_on():
                    # Deleted with its application (the service stopping): no replica would
                    # take a run handed back, so the waiting ones keep their places here.
                    logger.info("replica stopping with its deployment: waiting runs stay")
                    return
                with self._queue_lock:
                    self._draining = True
                    waiting = list(self._queued)
                logger.info("replica draining: %d waiting run(s) handed back", len(waiting))
                self._hand_back(waiting)
                return

    def _run_job(
        self,
        request: ExecutionRequest,
        cancel: threading.Event,
        received_at: float,
        span: Span | None = None,
        submitted_at: float = 0.0,
        live: LiveIO | None = None,
    ) -> ExecutionRecord:
        """On a job thread: one per slot, so the request leaves the replica's queue here
        (``span``, with tracing on, gets how long it waited for a slot)."""
        self._metrics.started(received_at)
        if span is not None:
            span.set_attribute(QUEUE_WAIT_S, max(0.0, time.perf_counter() - submitted_at))
        return self._pool.run(request, cancel, live)

    def _dropped_if_cancelled(self, job: Future[ExecutionRecord]) -> None:
        if job.cancelled():
            self._metrics.dropped()

    async def run_batch(
        self,
        requests: Sequence[RequestLike],
        trace_contexts: Sequence[Mapping[str, str] | None] | None = None,
        *,
        hand_back: bool = False,
    ) -> list[dict[str, Any]]:
        """Run ``requests`` concurrently, at most one per slot; records in request order.

        A run that fails here (the pool shut down under it) is that request's
        ``internal_error`` record, not the batch's failure: the others keep their results.
        ``trace_contexts``: one carrier per request, as ``run``'s ``trace_context``.
        ``hand_back``: if the replica drains before some runs started, raise
        :class:`ReplicaDrainingError` with the other runs' records (the caller sends the
        handed-back ones again); without it, they wait for a slot here, as long as the drain
        lets them.

        A batch is one request to Serve: its replica cannot drain until the whole batch is
        done, so callers send batches of about ``slots`` items, not thousands.
        """
        checked = [ExecutionRequest.model_validate(request) for request in requests]
        contexts = list(trace_contexts) if trace_contexts is not None else [None] * len(checked)
        if len(contexts) != len(checked):
            raise ValueError("one trace context per request, or none")
        results = await asyncio.gather(
            *(
                self._batch_run(request, context, hand_back)
                for request, context in zip(checked, contexts, strict=True)
            ),
            return_exceptions=True,
        )
        records: list[dict[str, Any] | None] = []
        for request, result in zip(checked, results, strict=True):
            if isinstance(result, asyncio.CancelledError):
                raise result  # the caller went away: every run was cancelled
            if isinstance(result, ReplicaDrainingError):
                records.append(None)
                continue
            if isinstance(result, BaseException):
                logger.error("a batch's run failed in the executor: %s", type(result).__name__)
                result = ExecutionRecord.internal_error(request).to_api()
            records.append(result)
        if any(record is None for record in records):
            raise ReplicaDrainingError(records)
        return [record for record in records if record is not None]

    async def _batch_run(
        self, request: ExecutionRequest, context: Mapping[str, str] | None, hand_back: bool
    ) -> dict[str, Any]:
        return (await self._traced(request, context, None, hand_back=hand_back)).to_api()

    def isolation(self) -> dict[str, Any]:
        """The isolation layers in force in this pool (the ``sandbox`` readiness check)."""
        return self._report.summary()

    def stats(self) -> dict[str, Any]:
        """Slot counts for metrics and readiness; ``pid`` is the process holding the pool."""
        return {
            "slots": self._pool.size,
            "free_slots": self._pool.free_slots,
            "busy_slots": self._pool.busy_slots,
            "alive_slots": self._pool.alive_slots,
            "closed": self._closed,
            "pid": os.getpid(),
        }

    def check_health(self) -> None:
        """Ray Serve's health check: raise when this replica can no longer run jobs."""
        if self._closed:
            raise PoolClosedError("the executor is shut down")
        if self._pool.alive_slots == 0:
            # A dead slot restarts on its next use; all of them dead at once means the
            # sandbox itself is broken here, and Serve should replace the replica.
            raise ExecutorError("no sandbox slot is alive")

    async def close(self, grace_s: float | None = None) -> None:
        """Stop taking work; let running jobs finish for ``grace_s`` (default: the
        constructor's ``shutdown_grace_s``), then kill them. Idempotent."""
        await asyncio.to_thread(self._close, grace_s)

    def __del__(self) -> None:
        # Ray Serve calls this on replica shutdown, after it has waited (up to the
        # deployment's graceful_shutdown_timeout_s) for ongoing requests to finish.
        # Ray's actor-class wrapper inherits this method without running __init__.
        if not getattr(self, "_closed", True):
            self._close(None)

    def _close(self, grace_s: float | None) -> None:
        with self._closing:
            if self._closed:
                return
            self._closed = True
        self._stop_watching.set()
        self._pool.close(self._shutdown_grace_s if grace_s is None else grace_s)
        # Jobs still queued for a thread find the pool closed and raise PoolClosedError.
        self._threads.shutdown(wait=False)
        logger.info("sandbox executor closed")
        flush_tracing()  # Ray ends the process without atexit: send the last spans now


def deployment_goes_on() -> bool:
    """Inside a stopping Serve replica: whether its deployment goes on without it (a rolling
    update, a downscale), so that other replicas take what it hands back; False when the
    deployment or its application is being deleted, or Serve's controller cannot say."""
    try:
        from ray import serve

        context = serve.get_replica_context()
        application = serve.status().applications[context.app_name]
        deployment = application.deployments[context.deployment]
    except Exception:  # noqa: BLE001 - no answer: keep the runs here, as before hand-backs
        logger.warning("replica draining: Serve's status unavailable, waiting runs stay")
        return False
    deleting = "DELETING"  # ApplicationStatus.DELETING, DeploymentStatusTrigger.DELETING
    return application.status != deleting and deployment.status_trigger != deleting


def serve_replica_draining() -> Callable[[], bool] | None:
    """Inside a Ray Serve replica: a check of whether Serve has begun stopping it; None
    elsewhere (a plain actor, no Ray).

    Serve gives a replica's code no hook for this: it calls ``__del__`` only after the drain.
    The check reads the flag Serve's replica sets first thing in its graceful shutdown
    (``_shutting_down``, "may be used by replica subclass implementations", Ray 2.60's
    ``serve/_private/replica.py``), on the actor instance Ray's worker holds. If a Ray upgrade
    moves it, the check is None and replicas drain as before (queued runs wait, then fail).
    """
    try:
        import ray
        from ray._private import worker
    except ImportError:
        return None
    if not ray.is_initialized():
        return None
    actor_id = ray.get_runtime_context().get_actor_id()
    if actor_id is None:
        return None
    actors: dict[Any, Any] = getattr(worker.global_worker, "actors", {})
    for key, instance in list(actors.items()):
        replica: Any = getattr(instance, "_replica_impl", None)
        if key.hex() == actor_id and hasattr(replica, "_shutting_down"):
            return lambda: bool(replica._shutting_down)
    return None


def _cancelling() -> bool:
    """Whether the current task is being cancelled (its caller went away)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _finish_stream(buffer: StreamBuffer, run: asyncio.Future[ExecutionRecord]) -> None:
    """The end of a streamed run: its record last, or its failure."""
    if run.cancelled():
        buffer.fail(asyncio.CancelledError())
    elif (error := run.exception()) is not None:
        buffer.fail(error)
    else:
        buffer.finish(record_event(run.result()))


class ReplicaRange(BaseModel):
    """The bounds of Serve's autoscaler for a deployment: the one check that
    ``min_replicas <= max_replicas`` (as Ray's ``AutoscalingConfig`` checks its own), on every
    model of deployment arguments (this package's and the service's) and on
    :func:`build_executor_app`'s. ``None``: left to a default the caller resolves (then checked
    again, resolved)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_replicas: int | None = Field(default=None, ge=1)
    max_replicas: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _min_within_max(self) -> Self:
        low, high = self.min_replicas, self.max_replicas
        if low is not None and high is not None and low > high:
            raise ValueError("min_replicas must not exceed max_replicas")
        return self


def build_executor_app(
    config: SandboxConfig,
    slots: int,
    *,
    min_replicas: int,
    max_replicas: int,
    name: str = "SandboxExecutor",
    num_cpus: float | None = None,
    memory_bytes: int | None = None,
    max_ongoing_requests: int | None = None,
    target_ongoing_requests: float | None = None,
    max_queued_requests: int = -1,
    graceful_shutdown_timeout_s: float = DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT_S,
    graceful_shutdown_wait_loop_s: float = 0.5,
    shutdown_grace_s: float = 5.0,
    health_check_period_s: float = 10.0,
    health_check_timeout_s: float = 30.0,
    max_constructor_retry_count: int = 3,
    label_selector: dict[str, str] | None = None,
    runtime_env: dict[str, Any] | None = None,
    upscale_delay_s: float | None = None,
    downscale_delay_s: float | None = None,
) -> serve.Application:
    """The executor as a Ray Serve application, ready for ``serve.run``.

    Every replica holds ``slots`` sandboxes (``config``). Sizing and scaling:

    - ``num_cpus`` (default ``slots``: a core per running job) and ``memory_bytes`` (Ray's
      ``memory`` resource per replica; default none reserved) are what Ray schedules a
      replica by, and what a cluster autoscaler adds nodes for.
    - ``min_replicas``/``max_replicas`` bound Serve's autoscaler, which aims at
      ``target_ongoing_requests`` per replica (default ``slots``: every slot busy), and adds
      or removes replicas once it has wanted to for ``upscale_delay_s`` or
      ``downscale_delay_s`` (None: Serve's defaults, 30 and 600 s).
    - ``max_ongoing_requests`` (default ``2 * slots``) is how many requests a replica takes
      at once: one job per slot plus one waiting per slot, so a slot never idles between
      jobs. ``max_queued_requests`` caps the requests waiting in each caller (handle or
      proxy) beyond that; more raise ``BackPressureError`` (``-1``: no cap).

    Shutdown: a stopping replica takes no new requests and waits, checking every
    ``graceful_shutdown_wait_loop_s``, for its ongoing ones; after
    ``graceful_shutdown_timeout_s`` Serve kills it. The runs still waiting for a slot are handed
    back at once (:class:`SandboxExecutor`'s drain), so this need only cover one run of the
    longest wall timeout, however deep the queue. Then the pool closes, giving stragglers
    ``shutdown_grace_s`` before killing them.

    Health: Serve calls ``check_health`` every ``health_check_period_s`` (failing after
    ``health_check_timeout_s``) and replaces a replica that keeps failing. A replica whose
    sandboxes cannot start is retried ``max_constructor_retry_count`` times, then the
    deployment fails: a broken host should fail fast, not loop.

    Placement: ``label_selector`` (Ray node labels, e.g. ``{"exec-agent/role": "sandbox"}``)
    keeps replicas on the nodes it matches; default anywhere with the resources.

    ``runtime_env``: the replicas' Ray runtime environment (default: the node's), for instance
    ``{"env_vars": {"OTEL_EXPORTER_OTLP_ENDPOINT": ...}}`` where the replicas would not
    inherit a variable from the process that started Ray.
    """
    from ray import serve

    if slots < 1:
        raise ValueError("a replica needs at least one slot")
    ReplicaRange(min_replicas=min_replicas, max_replicas=max_replicas)  # raises ValueError
    actor_options: dict[str, Any] = {"num_cpus": float(slots) if num_cpus is None else num_cpus}
    if memory_bytes is not None:
        actor_options["memory"] = memory_bytes
    if label_selector:
        actor_options["label_selector"] = dict(label_selector)
    if runtime_env:
        actor_options["runtime_env"] = dict(runtime_env)
    autoscaling: dict[str, Any] = {
        "min_replicas": min_replicas,
        "initial_replicas": min_replicas,
        "max_replicas": max_replicas,
        "target_ongoing_requests": (
            slots if target_ongoing_requests is None else target_ongoing_requests
        ),
    }
    delays = {"upscale_delay_s": upscale_delay_s, "downscale_delay_s": downscale_delay_s}
    autoscaling |= {option: value for option, value in delays.items() if value is not None}
    deployment = serve.deployment(
        name=name,
        ray_actor_options=actor_options,
        max_ongoing_requests=2 * slots if max_ongoing_requests is None else max_ongoing_requests,
        max_queued_requests=max_queued_requests,
        autoscaling_config=autoscaling,
        graceful_shutdown_timeout_s=graceful_shutdown_timeout_s,
        graceful_shutdown_wait_loop_s=graceful_shutdown_wait_loop_s,
        health_check_period_s=health_check_period_s,
        health_check_timeout_s=health_check_timeout_s,
        max_constructor_retry_count=max_constructor_retry_count,
    )(SandboxExecutor)
    app: serve.Application = deployment.bind(config, slots, shutdown_grace_s=shutdown_grace_s)
    return app


class ExecutorAppArgs(ReplicaRange):
    """The ``args`` of the executor application in a Serve config file (``serve run``)."""

    slots: int = Field(default=2, ge=1)
    num_cpus: float | None = Field(default=None, gt=0)
    """CPUs Ray reserves per replica; default one per slot."""
    memory_bytes: int | None = Field(default=None, gt=0)
    """Memory Ray reserves per replica: the replica itself plus each slot's largest job."""
    min_replicas: int = Field(default=1, ge=1)
    max_replicas: int = Field(default=2, ge=1)
    max_queued_requests: int = -1
    graceful_shutdown_timeout_s: float = Field(default=DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT_S, gt=0)
    require_full_isolation: bool = False
    python_executable: str | None = None
    runtimes_dir: str | None = None
    """Where the runtimes are built (default: ``RUNTIMES_DIR``, else the checkout's)."""
    default_runtime: str | None = None
    """The runtime of requests naming none (default: ``scientific``)."""


def app_builder(args: dict[str, Any]) -> serve.Application:
    """Serve's application builder: ``import_path: executors._deployment:app_builder``."""
    parsed = ExecutorAppArgs.model_validate(args)
    paths = {
        name: value
        for name in ("python_executable", "runtimes_dir", "default_runtime")
        if (value := getattr(parsed, name))
    }
    config = SandboxConfig.model_validate(
        {"require_full_isolation": parsed.require_full_isolation, **paths}
    )
    return build_executor_app(
        config,
        parsed.slots,
        num_cpus=parsed.num_cpus,
        memory_bytes=parsed.memory_bytes,
        min_replicas=parsed.min_replicas,
        max_replicas=parsed.max_replicas,
        max_queued_requests=parsed.max_queued_requests,
        graceful_shutdown_timeout_s=parsed.graceful_shutdown_timeout_s,
    )
