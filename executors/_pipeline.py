"""Ray Data on the sandbox: run a dataset's programs through the executor pool.

:class:`SandboxMapper` is a callable class for ``Dataset.map_batches``::

    ds = ray.data.from_items([{"code": "print(1)"}, {"code": "1/0", "test_code": "pass"}])
    out = ds.map_batches(
        SandboxMapper,
        fn_constructor_kwargs={"max_in_flight": 4},
        compute=ray.data.ActorPoolStrategy(size=1),  # mapper actors (Ray < 2.51: concurrency=1)
        num_cpus=0.25,           # a mapper only waits on the executors
        batch_size=16,
        batch_format="pandas",   # or "numpy"
    )
    out.groupby("status").count().take_all()

Input columns (others pass through untouched): ``code`` (required), ``stdin``, ``files`` (path
-> text), ``test_code``, ``judge`` (``isolated``, the default, or ``in_process``), ``cases`` (a list of ``{"stdin", "expected_stdout"}``) and ``limits``
(API units: ``wall_timeout_s``, ``cpu_time_s``, ``memory_mb``, ``max_output_bytes``,
``max_processes``, ``max_file_bytes``); ``files``, ``cases`` and ``limits`` may also be JSON
text. Missing values (``None``, NaN, a struct field another row has) mean "not given". Where
rows differ in which of them they have, or in their fields, give them as JSON text (as
:func:`run_programs` does): Ray Data (2.60) can hand a row that had no such struct a struct of
zeros once blocks with different struct fields are unified.
Limits a row leaves out come from ``default_limits`` and may not exceed ``max_limits`` (default:
the service's ``DEFAULT_*`` and ``MAX_*`` settings, read from the mapper's environment). The
engine does not import the service: the service offers its defaults through the entry point
group :data:`DEFAULTS_ENTRY_POINTS` (``pyproject.toml``), which the mapper reads when a
default is missing.

Output columns (:data:`OUTPUT_COLUMNS`, each after ``prefix``): the execution record's ``id``,
``status``, ``exit_code``, ``signal``, ``stdout``, ``stderr``, ``stdout_truncated``,
``stderr_truncated``, ``wall_time_s``, ``cpu_time_s``, ``peak_memory_bytes`` and ``passed``;
``case_results``, the record's ``cases`` as JSON text (its name keeps the input's ``cases``);
``error``; and ``executor`` (``"serve"`` or ``"local"``: which pool ran the row). A row that
produced no record (it failed validation, or the call to the executor failed) has ``error`` set
to a message and every record column null, so ``status`` is null exactly when ``error`` is not;
one bad row never fails the dataset. (Ray Data types a column that is null in every row of a
block as ``null``; it unifies that with the other blocks' types.)

Where rows run: the executor deployment of the service (``SandboxExecutor`` in the ``exec-agent``
application) through a Serve deployment handle, when it is deployed on the cluster; otherwise a
local pool: a Ray actor of :class:`~executors.SandboxExecutor` named ``local_pool_name`` in the
job's namespace, fetched or created (``get_if_exists``) by each mapper, so the mappers of one
job share it. It is not detached: it belongs to the mapper that created it and dies with it,
which is when Ray Data stops its mapper actors at the end of the dataset's execution (and at the
latest when the job ends); its sandboxes die with it. A mapper whose local pool died (its
creator was scaled down) fetches or creates it again and retries the row once. Each mapper keeps
at most ``max_in_flight`` rows in flight, whatever the batch size.

:func:`run_programs` builds such a dataset from a list of rows and returns the output rows, from
any driver: one in the cluster (a script on a node, a Ray Jobs submission) runs it in place; one
connected with Ray Client (``ray://``), where Ray Data itself does not work, runs it in a task
on the cluster.

Rows run as the executor's callers: no API key, no import policy, no rate limit, nothing
stored. Only code that is already trusted to run on the cluster should build such a pipeline.
"""

from __future__ import annotations

import copy
import json
import math
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Literal

from pydantic import ValidationError

from executors._config import SandboxConfig
from executors._errors import PipelineConfigurationError
from executors._models import ExecutionRequest, Limits, LimitsRequest

__all__ = [
    "DEFAULTS_ENTRY_POINTS",
    "EXECUTOR_APP_NAME",
    "EXECUTOR_DEPLOYMENT_NAME",
    "INPUT_COLUMNS",
    "LOCAL_POOL_NAME",
    "OUTPUT_COLUMNS",
    "PipelineDefaults",
    "SandboxMapper",
    "row_to_request",
    "run_programs",
    "service_defaults",
    "to_plain",
]

EXECUTOR_APP_NAME = "exec-agent"
"""The Serve application ``exec-agent serve`` deploys (``serve_app._serve.APP_NAME``)."""
EXECUTOR_DEPLOYMENT_NAME = "SandboxExecutor"
"""The executor deployment in it (``build_executor_app``'s default name)."""
LOCAL_POOL_NAME = "exec-agent-pipeline-executor"
INPUT_COLUMNS = ("code", "stdin", "files", "test_code", "judge", "cases", "limits")
RECORD_COLUMNS = (
    "id",
    "status",
    "exit_code",
    "signal",
    "stdout",
    "stderr",
    "stdout_truncated",
    "stderr_truncated",
    "wall_time_s",
    "cpu_time_s",
    "peak_memory_bytes",
    "passed",
    "case_results",
)
OUTPUT_COLUMNS = (*RECORD_COLUMNS, "error", "executor")
_KINDS: dict[str, str] = {
    "exit_code": "int",
    "signal": "int",
    "peak_memory_bytes": "int",
    "wall_time_s": "float",
    "cpu_time_s": "float",
    "stdout_truncated": "bool",
    "stderr_truncated": "bool",
    "passed": "bool",
}
"""Column kinds other than text, for the batch's column types."""
_PANDAS_DTYPES = {"int": "Int64", "float": "Float64", "bool": "boolean", "str": "string"}
Backend = Literal["auto", "serve", "local"]


# --------------------------------------------------------------------------- rows -> requests


def to_plain(value: Any) -> Any:
    """``value`` as plain Python: numpy scalars and arrays, pandas' missing values and Arrow's
    struct and map columns become ``int``/``float``/``str``/``bool``, lists, dicts and None.

    NaN and other missing markers become None; a ``(key, value)`` pair list (an Arrow map)
    stays a list of pairs (:func:`row_to_request` reads it as a mapping where one is expected).
    """
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return str(value)  # numpy's str_ too
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):  # numpy's float64 too
        return None if math.isnan(value) else float(value)
    import numpy as np

    if isinstance(value, np.ndarray):
        return [to_plain(item) for item in value.tolist()]
    if isinstance(value, np.generic):
        return to_plain(value.item())
    if isinstance(value, Mapping):
        return {str(key): to_plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [to_plain(item) for item in value]
    if _is_missing(value):
        return None
    return value


def _is_missing(value: Any) -> bool:
    """pandas' ``NA``/``NaT`` (without importing pandas when it is not loaded)."""
    import sys

    pandas = sys.modules.get("pandas")
    if pandas is None:
        return False
    try:
        return bool(pandas.isna(value))
    except (TypeError, ValueError):  # not a scalar
        return False


def _decoded(value: Any, what: str, kind: str) -> Any:
    """A column's value as plain Python: JSON text decoded (``kind`` names what it should
    hold, for the error), None when missing."""
    value = to_plain(value)
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError as exc:
            raise ValueError(f"{what}: not a JSON {kind} ({exc})") from None
    return value


def _mapping(value: Any, what: str) -> dict[str, Any] | None:
    """A mapping column's value: a dict, JSON text of one, or ``(key, value)`` pairs; keys
    whose value is missing are dropped (Arrow gives every row each struct field of the column)."""
    value = _decoded(value, what, "object")
    if value is None:
        return None
    if isinstance(value, list) and all(
        isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str) for pair in value
    ):
        value = dict(value)
    if not isinstance(value, dict):
        raise ValueError(f"{what}: expected an object, got {type(value).__name__}")
    return {key: item for key, item in value.items() if item is not None}


def _cases(value: Any) -> list[dict[str, Any]] | None:
    value = _decoded(value, "cases", "list")
    if value is None:
        return None
    if not isinstance(value, list):
        raise ValueError(f"cases: expected a list, got {type(value).__name__}")
    return [_mapping(case, f"cases[{index}]") or {} for index, case in enumerate(value)]


def row_to_request(row: Mapping[str, Any], defaults: Limits, maxima: Limits) -> ExecutionRequest:
    """The execution request of one dataset row (see the module's input columns).

    Raises ``ValueError`` (pydantic's ``ValidationError`` included) naming what is wrong.
    """
    fields: dict[str, Any] = {}
    for name in ("code", "stdin", "test_code", "judge"):
        value = to_plain(row.get(name))
        if value is not None:
            fields[name] = value
    if "code" not in fields:
        raise ValueError("code: missing")
    files = _mapping(row.get("files"), "files")
    if files:
        fields["files"] = files
    cases = _cases(row.get("cases"))
    if cases is not None:
        fields["cases"] = cases
    asked = _mapping(row.get("limits"), "limits") or {}
    fields["limits"] = LimitsRequest.model_validate(asked).resolve(defaults, maxima)
    return ExecutionRequest.model_validate(fields)


def describe_error(exc: BaseException) -> str:
    """A one-line message for a row's ``error`` column."""
    if isinstance(exc, ValidationError):
        return "invalid row: " + "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'row'}: {error['msg']}"
            for error in exc.errors(include_url=False)
        )
    if isinstance(exc, ValueError):
        return f"invalid row: {exc}"
    return f"executor failed: {type(exc).__name__}: {exc}"


# --------------------------------------------------------------------------- records -> columns


def _columns(
    record: Mapping[str, Any] | None, error: str | None, executor: str | None
) -> dict[str, Any]:
    """One row's output values (unprefixed)."""
    values: dict[str, Any] = dict.fromkeys(OUTPUT_COLUMNS)
    if record is not None:
        for name in RECORD_COLUMNS:
            if name != "case_results":
                values[name] = record.get(name)
        cases = record.get("cases")
        values["case_results"] = None if cases is None else json.dumps(cases)
        values["executor"] = executor
    values["error"] = error
    return values


def _rows(batch: Any) -> tuple[str, int, list[dict[str, Any]]]:
    """The batch's format (``pandas`` or ``numpy``), its length and its input columns as rows."""
    if isinstance(batch, Mapping):
        columns = {name: batch[name] for name in INPUT_COLUMNS if name in batch}
        length = len(next(iter(batch.values()))) if batch else 0
        return (
            "numpy",
            length,
            [{name: column[index] for name, column in columns.items()} for index in range(length)],
        )
    if hasattr(batch, "to_dict") and hasattr(batch, "columns"):  # a pandas DataFrame
        present = [name for name in INPUT_COLUMNS if name in batch.columns]
        return "pandas", len(batch), list(batch[present].to_dict("records"))
    raise TypeError(
        f"SandboxMapper takes pandas or numpy batches (batch_format='pandas' or 'numpy'), "
        f"not {type(batch).__name__}"
    )


def _with_columns(batch: Any, form: str, values: dict[str, list[Any]], prefix: str) -> Any:
    """``batch`` with the output columns added (or replaced): pandas' nullable types (a
    missing number stays null, not NaN), numpy object arrays."""
    if form == "pandas":
        import pandas as pd  # type: ignore[import-untyped,unused-ignore]

        batch = batch.copy(deep=False)
        for name, column in values.items():
            dtype = _PANDAS_DTYPES[_KINDS.get(name, "str")]
            batch[prefix + name] = pd.array(column, dtype=dtype)
        return batch
    import numpy as np

    out = dict(batch)
    for name, column in values.items():
        out[prefix + name] = np.array(column, dtype=object)
    return out


# --------------------------------------------------------------------------- the mapper


class SandboxMapper:
    """Runs each row's program in a sandbox; a callable class for ``Dataset.map_batches``.

    ``backend``: ``"auto"`` (the deployed executor if there is one, else a local pool),
    ``"serve"`` (the deployed executor, or fail) or ``"local"`` (always a local pool).
    ``app_name``/``deployment_name`` name the executor deployment. ``max_in_flight`` bounds
    the rows this mapper has sent and not yet got back. ``default_limits``/``max_limits``:
    see the module. ``timeout_s`` bounds one row's call (None: wait for its record, which
    the row's own wall limit bounds once it runs).

    The local pool: ``local_slots`` sandboxes, reserving ``local_num_cpus`` CPUs (default one
    per slot, as the service's executor does), built from ``sandbox_config`` (default the
    service's ``SANDBOX_*`` settings); ``local_start_timeout_s`` bounds its start (a pool
    Ray cannot place for lack of CPUs fails then, rather than hanging the dataset).
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
        local_num_cpus: float | None = None,
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
        self._local_num_cpus = float(local_slots) if local_num_cpus is None else local_num_cpus
        self._local_start_timeout_s = local_start_timeout_s
        self._lock = threading.Lock()
        self._handle: Any = None
        self._actor: Any = None
        if backend != "local":
            self._handle = _serve_handle(app_name, deployment_name, required=backend == "serve")
        if self._handle is None:
            self._actor = self._local_pool()
        self.executor = "serve" if self._handle is not None else "local"
        self._threads = ThreadPoolExecutor(
            max_workers=max_in_flight, thread_name_prefix="sandbox-row"
        )

    def __call__(self, batch: Any) -> Any:
        form, length, rows = _rows(batch)
        results: list[dict[str, Any]] = [{} for _ in range(length)]
        pending: list[tuple[int, Future[dict[str, Any]]]] = []
        for index, row in enumerate(rows):
            try:
                request = row_to_request(row, self.default_limits, self.max_limits)
            except ValueError as exc:
                results[index] = _columns(None, describe_error(exc), None)
                continue
            pending.append(
                (index, self._threads.submit(self._run, request.model_dump(mode="json")))
            )
        for index, future in pending:
            try:
                record = future.result()
            except Exception as exc:  # noqa: BLE001 - a failed call is the row's error, not the dataset's
                results[index] = _columns(None, describe_error(exc), None)
            else:
                results[index] = _columns(record, None, self.executor)
        values = {name: [result[name] for result in results] for name in OUTPUT_COLUMNS}
        return _with_columns(batch, form, values, self._prefix)

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
        import ray

        from executors._deployment import SandboxExecutor

        actor: Any = (
            ray.remote(SandboxExecutor)
            .options(
                name=self._local_name,
                get_if_exists=True,
                num_cpus=self._local_num_cpus,
                max_concurrency=1000,
            )
            .remote(self._sandbox_config, self._local_slots)
        )
        try:
            ray.get(actor.stats.remote(), timeout=self._local_start_timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise PipelineConfigurationError(
                f"the local executor pool {self._local_name!r} did not start within "
                f"{self._local_start_timeout_s} s: does the cluster have "
                f"{self._local_num_cpus} free CPUs for it (local_num_cpus)?"
            ) from None
        return actor

    def __del__(self) -> None:
        threads = getattr(self, "_threads", None)
        if threads is not None:
            threads.shutdown(wait=False, cancel_futures=True)


def _serve_handle(app_name: str, deployment_name: str, *, required: bool) -> Any:
    """A handle to the deployed executor; None when there is none and it is not ``required``."""
    from ray import serve
    from ray.serve.exceptions import RayServeException

    try:
        return serve.get_deployment_handle(deployment_name, app_name=app_name)
    except (RayServeException, KeyError) as exc:
        if required:
            raise PipelineConfigurationError(
                f"no executor deployment {deployment_name!r} in Serve application "
                f"{app_name!r}: {exc}"
            ) from exc
        return None


DEFAULTS_ENTRY_POINTS = "exec_agent.pipeline_defaults"
"""Where a service offers the pipeline its defaults: one entry point, a callable returning
:class:`PipelineDefaults` (``serve_app.settings:pipeline_defaults``)."""


@dataclass(frozen=True)
class PipelineDefaults:
    """What a mapper uses for what its caller left out."""

    default_limits: Limits
    max_limits: Limits
    sandbox_config: SandboxConfig


def service_defaults() -> PipelineDefaults:
    """The installed service's defaults (:data:`DEFAULTS_ENTRY_POINTS`); raise
    :class:`PipelineConfigurationError` when none is installed."""
    found = entry_points(group=DEFAULTS_ENTRY_POINTS)
    if not found:
        raise PipelineConfigurationError(
            "no service installed to take defaults from: pass default_limits, max_limits and "
            "sandbox_config"
        )
    defaults = next(iter(found)).load()()
    if not isinstance(defaults, PipelineDefaults):
        raise PipelineConfigurationError(f"{DEFAULTS_ENTRY_POINTS} gave {type(defaults).__name__}")
    return defaults


# --------------------------------------------------------------------------- a whole pipeline


def run_programs(
    rows: Sequence[Mapping[str, Any]],
    *,
    mapper_options: Mapping[str, Any] | None = None,
    mappers: int = 1,
    mapper_num_cpus: float = 0.25,
    batch_size: int | None = None,
    batch_format: Literal["pandas", "numpy"] = "pandas",
    max_cpus: float | None = None,
) -> list[dict[str, Any]]:
    """Run ``rows`` (dicts with the input columns) through :class:`SandboxMapper`; the output
    rows, in input order.

    ``mapper_options`` are the mapper's keyword arguments; ``mappers`` mapper actors, each
    reserving ``mapper_num_cpus`` (it only waits on the executors); ``batch_size`` rows per
    batch (None: Ray Data's choice); ``max_cpus`` caps the CPUs Ray Data's own tasks and actors
    may take (None: no cap beyond the cluster's). Needs ``ray.init()`` first; under Ray Client
    the pipeline runs in a task on the cluster (reserving no CPU) and only the rows travel.
    """
    import ray

    arguments = (
        [_structures_as_json(row) for row in rows],
        dict(mapper_options or {}),
        mappers,
        mapper_num_cpus,
        batch_size,
        batch_format,
        max_cpus,
    )
    if ray.util.client.ray.is_connected():  # type: ignore[no-untyped-call]
        task = ray.remote(num_cpus=0)(_run_programs_here)
        result: list[dict[str, Any]] = ray.get(task.remote(*arguments))
        return result
    return _run_programs_here(*arguments)


def _structures_as_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """``row`` with its ``files``, ``cases`` and ``limits`` as JSON text.

    Arrow would make them struct columns, and when Ray Data unifies blocks whose structs
    differ (one row has ``wall_timeout_s``, another ``memory_mb``) a row without the column
    can come back as a struct of zeros rather than null: text keeps every row its own.
    """
    plain = dict(row)
    for name in ("files", "cases", "limits"):
        value = plain.get(name)
        if isinstance(value, Mapping | list | tuple):
            plain[name] = json.dumps(to_plain(value))
    return plain


def _run_programs_here(
    rows: list[dict[str, Any]],
    mapper_options: dict[str, Any],
    mappers: int,
    mapper_num_cpus: float,
    batch_size: int | None,
    batch_format: str,
    max_cpus: float | None,
) -> list[dict[str, Any]]:
    import ray.data
    from ray.data import ActorPoolStrategy, DataContext, ExecutionResources

    # The driver's own context, changed for this run only.
    context = DataContext.get_current()
    saved = copy.deepcopy(context.execution_options)
    try:
        context.execution_options.preserve_order = True  # output rows in input order
        if max_cpus is not None:
            context.execution_options.resource_limits = ExecutionResources(cpu=max_cpus)
        blocks = max(1, math.ceil(len(rows) / batch_size)) if batch_size else None
        dataset = ray.data.from_items(rows, override_num_blocks=blocks).map_batches(
            SandboxMapper,
            fn_constructor_kwargs=mapper_options,
            compute=ActorPoolStrategy(size=mappers),
            num_cpus=mapper_num_cpus,
            batch_size=batch_size,
            batch_format=batch_format,
        )
        return [dict(row) for row in dataset.take_all()]
    finally:
        context.execution_options = saved
