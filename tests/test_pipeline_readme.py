"""The README's Ray Data example runs as written on a 2-core machine, and a local pool's CPU
reservation that cannot be met fails at once, saying what to change.

The example runs verbatim in a subprocess of its own, where its ``ray.init()`` starts a new
local Ray pinned to 2 CPUs (the machine a newcomer has), on loopback with a small object store.
"""

from __future__ import annotations

import ast
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from executors import PipelineConfigurationError, SandboxMapper, run_programs

pytestmark = pytest.mark.sandbox

README = Path(__file__).resolve().parents[1] / "README.md"
EXAMPLE_TIMEOUT_S = 600

TWO_CPU_RAY = """\
import ray

_init = ray.init


def _on_two_cpus(*args, **kwargs):
    # What `ray.init()` gives on a 2-core laptop, on loopback and small.
    pinned = {
        "address": "local",
        "num_cpus": 2,
        "object_store_memory": 100 * 1024 * 1024,
        "include_dashboard": False,
        "_node_ip_address": "127.0.0.1",
    }
    return _init(*args, **{**pinned, **kwargs})


ray.init = _on_two_cpus
"""


def readme_pipeline_example() -> str:
    """The Python block of the README's "Pipelines (Ray Data)" section, as written."""
    text = README.read_text(encoding="utf-8")
    section = text.split("## Pipelines (Ray Data)", 1)[1].split("\n## ", 1)[0]
    found = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert found, "no python block in the README's pipelines section"
    return found.group(1)


def test_the_readme_example_is_python_that_starts_its_own_ray() -> None:
    calls = {
        node.func.attr
        for node in ast.walk(ast.parse(readme_pipeline_example()))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
    }
    assert {"init", "map_batches", "take_all"} <= calls


def test_the_readme_example_runs_as_written_on_two_cpus(tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(TWO_CPU_RAY + "\n" + readme_pipeline_example(), encoding="utf-8")
    environment = {name: value for name, value in os.environ.items() if not name.startswith("RAY_")}
    process = subprocess.Popen(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=EXAMPLE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"the README's example did not finish:\n{stdout[-3000:]}\n{stderr[-3000:]}")
    assert process.returncode == 0, f"{stdout[-3000:]}\n{stderr[-5000:]}"
    lines = [line for line in stdout.splitlines() if not line.startswith("(")]
    assert "[('ok', 'cba\\n', None), ('ok', '', True)]" in lines, stdout
    assert "cba" in lines, stdout


@pytest.fixture
def cpus_held(ray_session: None) -> Iterator[float]:
    """1.5 of the session's 2 CPUs held by an idle actor, as a dataset's actors hold them."""
    import ray

    @ray.remote(num_cpus=1.5)
    class Holder:
        def ready(self) -> bool:
            return True

    holder = Holder.remote()  # type: ignore[attr-defined]
    ray.get(holder.ready.remote(), timeout=60)
    yield 0.5
    ray.kill(holder)


@pytest.mark.parametrize(
    ("num_cpus", "message"),
    [(3.0, "the largest node has 2 CPUs"), (1.0, "only 0.5 CPUs are free")],
    ids=["more_than_any_node", "more_than_is_free"],
)
def test_a_reservation_that_cannot_be_met_fails_at_once(
    cpus_held: float, num_cpus: float, message: str
) -> None:
    with pytest.raises(PipelineConfigurationError, match=message) as failure:
        SandboxMapper(backend="local", local_num_cpus=num_cpus, local_pool_name="never-started")
    assert "pass local_num_cpus=0" in str(failure.value)


def test_run_programs_refuses_such_a_reservation_before_its_dataset_starts(
    cpus_held: float,
) -> None:
    # run_programs starts the pool from the driver, so the mapper's error comes from the call.
    with pytest.raises(PipelineConfigurationError, match=r"only 0\.5 CPUs are free"):
        run_programs(
            [{"code": "print(1)"}],
            mapper_options={
                "backend": "local",
                "local_num_cpus": 1.0,
                "local_pool_name": "never-started",
            },
        )


def test_a_negative_reservation_is_refused() -> None:
    with pytest.raises(ValueError, match="local_num_cpus"):
        SandboxMapper(backend="local", local_num_cpus=-1)
