"""The mapper: :class:`SandboxMapper`, the callable class ``Dataset.map_batches`` runs, which
sends each row of a batch to an executor (at most ``max_in_flight`` at once) and adds its
record's columns to the batch."""

from __future__ import annotations

import threading
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
)
from executors._pipeline._batch import OUTPUT_COLUMNS, batch_rows, record_values, with_columns
from executors._pipeline._defaults import service_defaults
from executors._pipeline._rows import describe_error, row_to_request

__all__ = ["Backend", "SandboxMapper"]

Backend = Literal["auto", "serve", "local"]


class SandboxMapper:
    """Runs each row's program in a sandbox; a callable class for ``Dataset.map_batches``.

    ``backend``: ``"auto"`` (the deployed executor if there is one, else a local pool),
    ``"serve"`` (the deployed executor, or fail) or ``"local"`` (always a local pool).
    ``app_name``/``deployment_name`` name the executor deployment. ``max_in_flight`` bounds
    the rows this mapper has sent and not yet got back. ``default_limits``/``max_limits``:
    see :mod:`executors._pipeline`. ``timeout_s`` bounds one row's call (None: wait for its
    record, which the row's own wall limit bounds once it runs).

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
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        if local_slots < 1:
            raise ValueError("local_slots must be at least 1")
        if backend not in ("auto", "serve", "local"):
            raise ValueError(f"backend must be auto, serve or local, not {backend!r}")
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
        if local_num_cpus < 0:
            raise ValueError("local_num_cpus must be at least 0")
        self._local_num_cpus = float(local_num_cpus)
        self._local_start_timeout_s = local_start_timeout_s
        self._lock = threading.Lock()
        self._handle: Any = None
        self._actor: Any = None
        if backend != "local":
            self._handle = serve_handle(app_name, deployment_name, required=backend == "serve")
        if self._handle is None:
            self._actor = self._local_pool()
        self.executor = "serve" if self._handle is not None else "local"
        self._threads = ThreadPoolExecutor(
            max_workers=max_in_flight, thread_name_prefix="sandbox-row"
        )

    def __call__(self, batch: Any) -> Any:
        form, length, rows = batch_rows(batch)
        results: list[dict[str, Any]] = [{} for _ in range(length)]
        pending: list[tuple[int, Future[dict[str, Any]]]] = []
        for index, row in enumerate(rows):
            try:
                request = row_to_request(row, self.default_limits, self.max_limits)
            except ValueError as exc:
                results[index] = record_values(None, describe_error(exc), None)
                continue
            pending.append(
                (index, self._threads.submit(self._run, request.model_dump(mode="json")))
            )
        for index, future in pending:
            try:
                record = future.result()
            except Exception as exc:  # noqa: BLE001 - a failed call is the row's error, not the dataset's
                results[index] = record_values(None, describe_error(exc), None)
            else:
                results[index] = record_values(record, None, self.executor)
        values = {name: [result[name] for result in results] for name in OUTPUT_COLUMNS}
        return with_columns(batch, form, values, self._prefix)

    def _run(self, request: dict[str, Any]) -> dict[str, Any]:
        """One row's record (a JSON-able dict), from the deployment or the local pool."""
        if self._handle is not None:
            record: dict[str, Any] = self._handle.run.remote(request).result(
                timeout_s=self._timeout_s
            )
            return record
        import ray

        actor = self._actor
        try:
            record = ray.get(actor.run.remote(request), timeout=self._timeout_s)
        except ray.exceptions.RayActorError:
            # The shared pool died with the mapper that created it: get or create a new one.
            record = ray.get(self._replace_pool(actor).run.remote(request), timeout=self._timeout_s)
        return record

    def _replace_pool(self, dead: Any) -> Any:
        with self._lock:
            if self._actor is dead:
                self._actor = self._local_pool()
            return self._actor

    def _local_pool(self) -> Any:
        """The job's shared local pool, created if missing, once it answers."""
        return local_pool(
            self._local_name,
            self._local_slots,
            self._local_num_cpus,
            self._sandbox_config,
            self._local_start_timeout_s,
        )

    def __del__(self) -> None:
        threads = getattr(self, "_threads", None)
        if threads is not None:
            threads.shutdown(wait=False, cancel_futures=True)
