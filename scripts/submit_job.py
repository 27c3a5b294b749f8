"""Submit ``scripts/pipeline_example.py`` to a Ray cluster as a Ray job, wait, print its logs.

    python scripts/submit_job.py --address http://127.0.0.1:8265 [-- --rows 20 --backend local]

``--address`` is the cluster's dashboard (the Jobs API); arguments after ``--`` go to the
example. The job's working directory is this ``scripts/`` directory (uploaded by Ray); the
``executors`` package must already be installed on the cluster (it is in the service's image).
A cluster with token authentication needs Ray's own variables here: ``RAY_AUTH_MODE=token`` and
``RAY_AUTH_TOKEN`` (or the token file ``RAY_AUTH_TOKEN_PATH``, default ``~/.ray/auth_token``).

Prints the submission id and final status on stderr, the job's logs on stdout. Exit status 0
when the job succeeded, 1 when it failed or was stopped, 2 on bad arguments, 3 when it did not
finish within ``--timeout-s`` (it is then stopped).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

SCRIPTS_DIR = Path(__file__).resolve().parent
EXAMPLE = "pipeline_example.py"
POLL_S = 1.0
EXIT_TIMED_OUT = 3


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--address", required=True, help="the dashboard's URL, e.g. http://127.0.0.1:8265"
    )
    parser.add_argument(
        "--python", default="python", help="the cluster's Python for the entrypoint"
    )
    parser.add_argument(
        "--timeout-s", type=float, default=600.0, help="how long to wait for the job"
    )
    parser.add_argument(
        "--entrypoint-num-cpus",
        type=float,
        default=0.0,
        help="CPUs reserved for the job's driver (it mostly waits)",
    )
    parser.add_argument("example_args", nargs=argparse.REMAINDER, help="-- then the example's")
    args = parser.parse_args(argv)
    if args.example_args and args.example_args[0] == "--":
        args.example_args = args.example_args[1:]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(args.address)
    entrypoint = shlex.join([args.python, EXAMPLE, *args.example_args])
    submission_id = client.submit_job(
        entrypoint=entrypoint,
        runtime_env={
            "working_dir": str(SCRIPTS_DIR),
            "excludes": ["__pycache__", "*.pyc"],
            "env_vars": {"PYTHONUNBUFFERED": "1"},
        },
        entrypoint_num_cpus=args.entrypoint_num_cpus,
    )
    print(f"submitted {submission_id}: {entrypoint}", file=sys.stderr, flush=True)
    terminal = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}
    deadline = time.monotonic() + args.timeout_s
    status = client.get_job_status(submission_id)
    while status not in terminal:
        if time.monotonic() > deadline:
            client.stop_job(submission_id)
            print(f"{submission_id}: not done in {args.timeout_s} s, stopped", file=sys.stderr)
            sys.stdout.write(client.get_job_logs(submission_id))
            return EXIT_TIMED_OUT
        time.sleep(POLL_S)
        status = client.get_job_status(submission_id)
    sys.stdout.write(client.get_job_logs(submission_id))
    sys.stdout.flush()
    info = client.get_job_info(submission_id)
    print(f"{submission_id}: {status.value} {info.message or ''}".rstrip(), file=sys.stderr)
    return 0 if status == JobStatus.SUCCEEDED else 1


if __name__ == "__main__":
    sys.exit(main())
