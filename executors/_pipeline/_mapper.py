"""The mapper: :class:`SandboxMapper`, the callable class ``Dataset.map_batches`` runs, which
sends a batch's rows to an executor, as many per call as it has slots (at most
``max_in_flight`` rows at once), and adds their records' columns to the batch; and
:func:`start_mapper_pool`, which starts the local pool such a mapper would use ahead of it."""

from __future__ import annotations

import inspect
import threading
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Literal

from executors._config import SandboxConfig
from executors._models import Limits
from executors._pipeline._backends import (
    EXECUTOR_APP_NAME,
    EXECUTOR_DEPLOYMENT_NAME,
    LOCAL_POOL_NAME,
    local_pool,
    serve_handle,
    start_local_pool,
)
from executors._pipeline._batch import OUTPUT_COLUMNS, batch_rows, record_values, with_columns
from executors._pipeline._defaults import service_defaults
from executors._pipeline._rows import describe_error, row_to_request

__all__ = ["Backend", "SandboxMapper", "start_mapper_pool"]

Backend = Literal["auto", "serve", "local"]


class SandboxMapper:
    """Runs each row's program in a sandbox; a callable class for ``Dataset.map_batches``.

    ``backend``: ``"auto"`` (the deployed executor if there is one, else a local pool),
    ``"serve"`` (the deployed executor, or fail) or ``"local"`` (always a local pool).
    ``app_name``/``deployment_name`` name the executor deployment. ``max_in_flight`` bounds
    the rows this mapper has sent and not yet got back, over all the batches it runs at once
    (Ray Data runs several on one mapper with ``ActorPoolStrategy(max_concurrent_calls_per_actor=N,
    enable_true_multi_threading=True)``). Rows go in calls of as many rows as the executor has
    slots (a Serve replica's, the local pool's; at most ``max_in_flight``), which run side by side.
    ``default_limits``/``max_limits``: see :mod:`executors._pipeline`. ``timeout_s`` bounds one
    call (None: wait for its records, which the rows' own wall limits bound once they run).

    The local pool: ``local_slots`` sandboxes, built from ``sandbox_config`` (default the
    service's ``SANDBOX_*`` settings), reserving ``local_num_cpus`` CPUs. The default is none:
    the pool is created from inside a running dataset whose actors and tasks already hold
    CPUs, and a reservation that waits for them would wait forever (on a 2-core laptop the
    mapper's own share is enough to block a 2-CPU pool); its sandboxes still run under their
    own limits, sharing the CPUs with the rest. A reservation that no node has free fails at
    once, saying what to change; ``local_start_timeout_s`` bounds the pool's start.
    """

    def __init__(
        self,
        *,
        backend: Backend = "auto",
        app_name: str = EXECUTOR_APP_NAME,
        deployment_name: str = EXECUTOR_DEPLOYMENT_NAME,
        max_in_flight: int = 8,
        default_limits: Limits | None = None,
        max_limits: Limits | None = None,
        timeout_s: float | None = None,
        prefix: str = "",
        local_pool_name: str = LOCAL_POOL_NAME,
        local_slots: int = 2,
        local_num_cpus: float = 0.0,
        sandbox_config: SandboxConfig | None = None,
        local_start_timeout_s: float = 120.0,
    ) -> None:
        _check_options(max_in_flight, local_slots, backend, local_num_cpus)
        if default_limits is None or max_limits is None or sandbox_config is None:
            defaults = service_defaults()
            default_limits = default_limits or defaults.default_limits
            max_limits = max_limits or defaults.max_limits
            sandbox_config = sandbox_config or defaults.sandbox_config
        self.default_limits = default_limits
        self.max_limits = max_limits
        self._sandbox_config = sandbox_config
        self._timeout_s = timeout_s
        self._prefix = prefix
        self._local_name = local_pool_name
        self._local_slots = local_slots
        self._local_num_cpus = float(local_num_cpus)
        self._local_start_timeout_s = local_start_timeout_s
        self._lock = threading.Lock()
        self._handle: Any = None
        self._actor: Any = None
        if backend != "local":
            self._handle = serve_handle(app_name, deployment_name, required=backend == "serve")
        if self._handle is None:
            self._actor, slots = self._local_pool()
        else:
            slots = self._serve_slots()
        self.executor = "serve" if self._handle is not None else "local"
        self._rows_per_call = min(slots, max_in_flight)
        self._threads = ThreadPoolExecutor(
            max_workers=max_in_flight // self._rows_per_call, thread_name_prefix="sandbox-rows"
        )

    def __call__(self, batch: Any) -> Any:
        form, length, rows = batch_rows(batch)
        results: list[dict[str, Any]] = [{} for _ in range(length)]
        runnable: list[tuple[int, dict[str, Any]]] = []
        for index, row in enumerate(rows):
            try:
                request = row_to_request(row, self.default_limits, self.max_limits)
            except ValueError as exc:
                results[index] = record_values(None, describe_error(exc), None)
            else:
                runnable.append((index, request.model_dump(mode="json")))
        size = self._rows_per_call
        calls: list[tuple[list[int], Future[list[dict[str, Any]]]]] = []
        for start in range(0, len(runnable), size):
            chunk = runnable[start : start + size]
            call = self._threads.submit(self._run, [request for _, request in chunk])
            calls.append(([index for index, _ in chunk], call))
        for indexes, call in calls:
            try:
                records = call.result()
            except Exception as exc:  # noqa: BLE001 - a failed call is its rows' error, not the dataset's
                error = describe_error(exc)
                for index in indexes:
                    results[index] = record_values(None, error, None)
            else:
                for index, record in zip(indexes, records, strict=True):
                    results[index] = record_values(record, None, self.executor)
        values = {name: [result[name] for result in results] for name in OUTPUT_COLUMNS}
        return with_columns(batch, form, values, self._prefix)

    def _run(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The rows' records (JSON-able dicts, in order), from the deployment or the local
        pool, in one call."""
        if self._handle is not None:
            records: list[dict[str, Any]] = self._handle.run_batch.remote(requests).result(
                timeout_s=self._timeout_s
            )
            return records
        import ray

        actor = self._actor
        try:
            records = ray.get(actor.run_batch.remote(requests), timeout=self._timeout_s)
        except ray.exceptions.RayActorError:
            # The shared pool died with the mapper that created it: get or create a new one.
            replaced = self._replace_pool(actor)
            records = ray.get(replaced.run_batch.remote(requests), timeout=self._timeout_s)
        return records

    def _replace_pool(self, dead: Any) -> Any:
        with self._lock:
            if self._actor is dead:
                self._actor, _ = self._local_pool()
            return self._actor

    def _local_pool(self) -> tuple[Any, int]:
        """The job's shared local pool, created if missing, once it answers; its slots."""
        return local_pool(
            self._local_name,
            self._local_slots,
            self._local_num_cpus,
            self._sandbox_config,
            self._local_start_timeout_s,
        )

    def _serve_slots(self) -> int:
        """A replica's slots; 1 if it does not say (its rows then go one per call, and fail
        one by one if the deployment does)."""
        try:
            stats: dict[str, Any] = self._handle.stats.remote().result(timeout_s=self._timeout_s)
            return int(stats["slots"])
        except Exception:  # noqa: BLE001 - the rows' calls report what is wrong
            return 1

    def __del__(self) -> None:
        threads = getattr(self, "_threads", None)
        if threads is not None:
            threads.shutdown(wait=False, cancel_futures=True)


def _check_options(
    max_in_flight: int, local_slots: int, backend: str, local_num_cpus: float
) -> None:
    if max_in_flight < 1:
        raise ValueError("max_in_flight must be at least 1")
    if local_slots < 1:
        raise ValueError("local_slots must be at least 1")
    if backend not in ("auto", "serve", "local"):
        raise ValueError(f"backend must be auto, serve or local, not {backend!r}")
    if local_num_cpus < 0:
        raise ValueError("local_num_cpus must be at least 0")


def start_mapper_pool(options: Mapping[str, Any]) -> Any:
    """Start the local pool that a :class:`SandboxMapper` built with ``options`` would use,
    without waiting for it; None when its rows would go to the deployed executor.

    Called before the dataset starts, the pool's process and sandboxes start while Ray Data
    starts its mapper actors (each takes about a second) instead of after them. Raises what
    the mapper would: ``TypeError``/``ValueError`` for bad options,
    :class:`PipelineConfigurationError` for a deployment or a reservation that is not there.
    """
    bound = inspect.signature(SandboxMapper).bind(**options)
    bound.apply_defaults()
    given = bound.arguments
    _check_options(
        given["max_in_flight"], given["local_slots"], given["backend"], given["local_num_cpus"]
    )
    backend = given["backend"]
    if backend != "local":
        required = backend == "serve"
        if serve_handle(given["app_name"], given["deployment_name"], required=required):
            return None
    sandbox_config = given["sandbox_config"] or service_defaults().sandbox_config
    return start_local_pool(
        given["local_pool_name"],
        given["local_slots"],
        float(given["local_num_cpus"]),
        sandbox_config,
    )
