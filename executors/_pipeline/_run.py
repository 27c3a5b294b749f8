"""A whole pipeline: :func:`run_programs` builds a dataset of rows, maps it through
:class:`SandboxMapper` and returns the output rows, in place or, from a Ray Client driver, in a
task on the cluster."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from executors._pipeline._mapper import SandboxMapper, start_mapper_pool
from executors._pipeline._rows import to_plain

__all__ = ["run_programs"]


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
    reserving ``mapper_num_cpus`` (it only waits on the executors) and running two batches at
    once; a local pool is started here, before the dataset (see :mod:`executors._pipeline`),
    and bad options or a reservation that cannot be met raise here; ``batch_size`` rows per
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

    # Started first, the local pool's process and sandboxes start while Ray Data starts the
    # mappers, which find it by name. Held until the rows are back: it ends with this call.
    pool = start_mapper_pool(mapper_options)
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
            # Two batches at once per mapper (their rows share its max_in_flight): the pool
            # runs the next batch's rows while the last of a batch finish.
            compute=ActorPoolStrategy(
                size=mappers, max_concurrent_calls_per_actor=2, enable_true_multi_threading=True
            ),
            num_cpus=mapper_num_cpus,
            batch_size=batch_size,
            batch_format=batch_format,
        )
        return [dict(row) for row in dataset.take_all()]
    finally:
        context.execution_options = saved
        del pool
