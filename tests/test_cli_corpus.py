"""`exec-agent run - --json` on the whole adversarial corpus: the command line's records.

Each entry is piped to the command as a program, the way a person would, and its JSON
record must be the API's record and meet the same expectation as in the engine's tests
(tests/support/corpus_checks.py). The commands run a few at a time, each with its own
one-slot pool, as separate invocations do.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from executors import ExecutionRecord
from tests.support.corpus import CORPUS, ENGINE_ENTRIES, host_ports, program
from tests.support.corpus_checks import CHECKS

pytestmark = pytest.mark.sandbox

EXEC_AGENT = Path(sys.executable).with_name("exec-agent")
PROGRAM_ENTRIES = [name for name in ENGINE_ENTRIES if "test_code" not in CORPUS[name]]
"""The entries that are programs alone: ``exec-agent run`` judges nothing (no ``test_code``)."""
PARALLEL_COMMANDS = 6
COMMAND_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def loopback_ports() -> Iterator[dict[str, int]]:
    """TCP listeners on 127.0.0.1 and ::1 for the network probes (loopback only)."""
    with host_ports() as ports:
        yield ports


def _run_command(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(EXEC_AGENT), "run", "-", "--json"],
        input=code,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        check=False,
    )


@pytest.fixture(scope="module")
def command_results(
    loopback_ports: dict[str, int],
) -> dict[str, subprocess.CompletedProcess[str]]:
    programs = {name: program(name, loopback_ports) for name in PROGRAM_ENTRIES}
    with ThreadPoolExecutor(max_workers=PARALLEL_COMMANDS) as executor:
        results = executor.map(_run_command, programs.values())
        return dict(zip(programs, results, strict=True))


@pytest.mark.parametrize("name", PROGRAM_ENTRIES)
def test_the_command_line_record_meets_the_entry(
    name: str, command_results: dict[str, subprocess.CompletedProcess[str]]
) -> None:
    result = command_results[name]
    assert result.returncode == 0, result.stderr[-2000:]
    record_json = json.loads(result.stdout)
    record = ExecutionRecord.model_validate(record_json)
    assert record_json == record.to_api(), "not the API's record, field for field"
    CHECKS[name](record)
