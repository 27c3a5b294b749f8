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
-> text), ``runtime`` (``scientific``, ``minimal``; default: the executor's), ``test_code``,
``judge`` (``isolated``, the default, or ``in_process``), ``cases`` (a list of
``{"stdin", "expected_stdout"}``) and ``limits``
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
creator was scaled down) fetches or creates it again and retries the call once. A mapper sends
a batch's rows in calls of as many rows as the executor has slots (``run_batch``: a replica's,
the local pool's), which run side by side; a call that fails is the error of each of its rows.
Each mapper keeps at most ``max_in_flight`` rows in flight, whatever the batch size and however
many batches it runs at once.

:func:`run_programs` builds such a dataset from a list of rows and returns the output rows, from
any driver: one in the cluster (a script on a node, a Ray Jobs submission) runs it in place; one
connected with Ray Client (``ray://``), where Ray Data itself does not work, runs it in a task
on the cluster. It starts the local pool itself, before the dataset, so that the pool's process
and sandboxes start while Ray Data starts the mappers (each some half a second to a second);
the pool is then the call's, and ends when it returns. Its mappers run two batches at once, so
the pool starts a batch's rows while the last rows of the one before finish.

Rows run as the executor's callers: no API key, no import policy, no rate limit, nothing
stored. Only code that is already trusted to run on the cluster should build such a pipeline.

Its modules: ``_rows`` (one row's values to a request), ``_batch`` (a batch's rows in, its output
columns out), ``_backends`` (the Serve handle, the local pool), ``_defaults`` (the service's
defaults, through the entry point), ``_mapper`` (:class:`SandboxMapper`) and ``_run``
(:func:`run_programs`).
"""

from executors._pipeline._backends import (
    EXECUTOR_APP_NAME,
    EXECUTOR_DEPLOYMENT_NAME,
    LOCAL_POOL_NAME,
)
from executors._pipeline._batch import INPUT_COLUMNS, OUTPUT_COLUMNS
from executors._pipeline._defaults import DEFAULTS_ENTRY_POINTS, PipelineDefaults, service_defaults
from executors._pipeline._mapper import SandboxMapper
from executors._pipeline._rows import row_to_request, to_plain
from executors._pipeline._run import run_programs

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
