"""``exec-agent serve --demo``: Ray, the executor deployment, a demo run.

Starts a local Ray (or joins ``RAY_ADDRESS``), deploys the sandbox executor on Ray Serve, runs
each given program (or three samples: one that succeeds, one that fails, one that times out)
through the deployment handle, and prints each execution record as one JSON line on stdout
(Ray may add lines of its own); progress and the Ray dashboard's address go to stderr. Then it stops Serve and Ray.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from executors import ExecutionRecord, ExecutionRequest, Limits
from serve_app import _exit
from serve_app.deployment._apps import executor_app
from serve_app.deployment._ray import APP_NAME, start_ray
from serve_app.deployment._secrets import scrub_secret_environment

if TYPE_CHECKING:
    from serve_app.settings import Settings

__all__ = ["run_demo"]

SAMPLE_TIMEOUT_S = 1.0
SAMPLES: tuple[tuple[str, str, float | None], ...] = (  # name, code, wall timeout
    ("sample: hello", 'print("hello from the sandbox")', None),
    ("sample: failing", 'raise ValueError("this program fails on purpose")', None),
    ("sample: timeout", "import time\ntime.sleep(60)", SAMPLE_TIMEOUT_S),
)


def run_demo(settings: Settings, files: list[str]) -> int:
    """Run the demo; 0 when every program produced a record."""
    try:
        programs: list[tuple[str, str, float | None]] = [
            (path, Path(path).read_text(), None) for path in files
        ] or list(SAMPLES)
    except (OSError, UnicodeDecodeError) as exc:
        print(f"exec-agent serve: cannot read a program: {exc}", file=sys.stderr)
        return _exit.EX_USAGE
    import ray
    from ray import serve

    joined = settings.ray_address is not None
    scrub_secret_environment(os.environ)  # the executors need none; a local Ray would pass them on
    context = start_ray(settings)
    try:
        if context.dashboard_url:
            print(f"Ray dashboard: http://{context.dashboard_url}", file=sys.stderr)
        serve.start(http_options={"host": settings.host, "port": settings.port})
        # No route prefix: the executor takes no HTTP traffic; only callers inside Ray reach it.
        handle = serve.run(executor_app(settings), name=APP_NAME, route_prefix=None)
        limits = settings.default_limits()
        responses = [
            handle.run.remote(ExecutionRequest(code=code, limits=_with_timeout(limits, wall_s)))
            for _, code, wall_s in programs
        ]
        produced = [
            _report(name, response)
            for (name, _, _), response in zip(programs, responses, strict=True)
        ]
    finally:
        if joined:
            serve.delete(APP_NAME)  # a shared cluster's other applications stay up
        else:
            serve.shutdown()  # type: ignore[no-untyped-call]
        ray.shutdown()
    return _exit.EX_OK if all(produced) else _exit.EX_SOFTWARE


def _with_timeout(limits: Limits, wall_timeout_s: float | None) -> Limits:
    if wall_timeout_s is None:
        return limits
    return Limits.model_validate({**limits.model_dump(), "wall_timeout_s": wall_timeout_s})


def _report(name: str, response: Any) -> bool:
    """Print one program's record (stdout) under its name (stderr); False if there is none."""
    print(f"== {name}", file=sys.stderr)
    try:
        record = ExecutionRecord.model_validate(response.result())
    except Exception as exc:  # noqa: BLE001 - one lost record must not hide the others
        print(f"no record: {type(exc).__name__}: {exc}", file=sys.stderr)
        return False
    print(json.dumps(record.to_api()), flush=True)
    return True
