"""Soak test of the Python Execution Agent: ``scripts/soak [options]``.

Loads one service, on loopback only, for a bounded time (``--duration-s``, default 300) and then
checks that nothing was lost or leaked. The service is ``exec-agent serve`` started here
(embedded: SQLite in a temporary directory, a Ray of its own on free loopback ports, one
executor replica of ``--slots`` slots, ``--executor-queue`` waiting) or, with ``--url`` and one
``--key`` or more, one already running on 127.0.0.1 or ::1 (any other host is refused).

The load: ``--workers`` threads, each sending one request after another, spread over the keys
(``--keys`` of them when the service is ours), drawn from a fixed mix:

    ordinary programs   print, a small computation, stdin echoed, code judged by test_code
                        (passing and failing), a background run (``wait: false``)
    adversarial corpus  tests/data/security_corpus.json (its non-HTTP entries), each expected to
                        end in the statuses its ``expect`` names (``status=...``; the API's table
                        wins where the corpus and the API disagree, as in the tests), never
                        ``internal_error``, never with a breach marker (CONNECTED, OPEN, ...)
    bad HTTP input      malformed JSON, a body over MAX_BODY_BYTES, a wrong media type, unknown
                        fields, missing or unknown keys, an unknown id; and listing
A warm-up (``--warmup-s``) comes first; its figures are kept apart from the run's.

Reported (``--out``, default bench-results/soak.json; the same JSON on stdout, a summary on
stderr): requests by kind, HTTP status, error code and execution status; latency p50/p99 (all
requests, and per kind); the service's memory: the RSS of the serve process tree (the
``exec-agent serve`` driver, Ray's daemons, the Ray workers holding the replicas, Serve's
controller and proxy, and the sandboxes), at start, after the warm-up (the baseline) and at the
end, idle each time; the tree's sandbox processes left at the end beyond each slot's zygote and
spare; after the service stopped (when it is ours), whatever of its process tree survived, the
job cgroups and temporary files its sandboxes left, and its exit status; and records against
answers: every execution accepted (200 or 202) must end with one terminal record (read through
the API, and from the SQLite database once the service stopped), and no record may exist that
was not accepted.

Exit status: 1 on any loss (an accepted execution without a terminal record, or a record
nobody was told of), leak (a sandbox process or cgroup left behind, RSS grown by more than
``--max-rss-growth-mib`` from the baseline), unexpected 5xx (503 ``overloaded`` is expected
under load, a 500 never), ``internal_error`` record, or wrong answer; 0 otherwise; 2 on bad
arguments. The results are written either way.

This file is the entry point; the soak lives in ``soaklib/`` (its docstring maps it). The names
below are re-exported for the drills (tests/test_drills.py), which load this file by path.
"""

from __future__ import annotations

import sys
from pathlib import Path

SCRIPTS_DIR = str(Path(__file__).resolve().parent)
if SCRIPTS_DIR not in sys.path:  # loaded by path (as the tests do), not run as a script
    sys.path.insert(0, SCRIPTS_DIR)
from serve_process import ServeProcess  # noqa: E402
from soaklib.cli import main  # noqa: E402
from soaklib.host import all_processes, cgroup_bases, pool_cgroups, process_tree  # noqa: E402
from soaklib.records import stored_records  # noqa: E402

__all__ = [
    "ServeProcess",
    "all_processes",
    "cgroup_bases",
    "main",
    "pool_cgroups",
    "process_tree",
    "stored_records",
]

if __name__ == "__main__":
    sys.exit(main())
