"""SandboxFusion's own client (``sandbox_fusion`` 0.3.7, from PyPI) against the service's
``/compat/sandbox-fusion`` routes: one deployment of the whole service on the session's Ray,
real sandboxes, real sessions. Nothing of the client is changed but its endpoint.

The client sends no header (its functions take an endpoint, a retry count and a timeout), so
it is pointed at the key-in-path form: ``{url}/compat/sandbox-fusion/k/{key}``. It retries
every answer that is not 200, and every ``SandboxError``, ``max_attempts`` times with
exponential back-off, then raises: a bad key (401) and another language (``SandboxError``)
are raised after the retries, which these tests cut to one attempt.
"""

from __future__ import annotations

import asyncio
import base64
import math
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import sandbox_fusion as sf
from pydantic import SecretStr
from sandbox_fusion import config as sf_config

from tests.support.api import auth
from tests.support.service import DeployedService, deployed_service, service_settings

pytestmark = [pytest.mark.ray, pytest.mark.sandbox]

APP_NAME = "exec-agent-compat-test"
SECRET = SecretStr("compat-test-api-key-secret-0123456789abcdef")
PREFIX = "/compat/sandbox-fusion"
IN_FLIGHT = 128
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def server(
    ray_session: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DeployedService]:
    directory: Path = tmp_path_factory.mktemp("compat")
    settings = service_settings(
        f"sqlite:///{directory / 'api.db'}",
        SECRET,
        sessions_per_host=4,
        session_reserved_memory_mb=16,
        session_hosts_min=1,
        session_placement_timeout_s=60.0,
    )
    try:
        with deployed_service(settings, APP_NAME) as database:
            yield DeployedService(database, settings)
    finally:
        _shut_down_hosts(settings)


def _shut_down_hosts(settings: Any) -> None:
    from executors import SessionHosts

    asyncio.run(SessionHosts(settings.sandbox_config(), settings.session_host_options()).shutdown())


@pytest.fixture
def key_name(request: pytest.FixtureRequest) -> str:
    return f"{request.node.name[:40]}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def key(server: DeployedService, key_name: str) -> str:
    return server.new_key(key_name)


@pytest.fixture
def endpoint(server: DeployedService, key: str) -> str:
    return f"{server.url}{PREFIX}/k/{key}"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _run(endpoint: str, code: str, **fields: Any) -> sf.RunCodeResponse:
    request = sf.RunCodeRequest(code=code, language="python", **fields)
    return sf.run_code(request, endpoint=endpoint, max_attempts=1, client_timeout=120)


# --------------------------------------------------------------------------- run_code


def test_print_succeeds_sync_and_async_with_the_endpoint_setting_alone(
    server: DeployedService,
    endpoint: str,
    key_name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sf_config, "SANDBOX_ENDPOINT", sf_config.SANDBOX_ENDPOINT)
    sf.set_endpoint(endpoint)  # what a user of the client changes, and nothing else
    request = sf.RunCodeRequest(code="print('hello')", language="python")
    for answer in (sf.run_code(request), asyncio.run(sf.run_code_async(request))):
        assert answer.status == sf.RunStatus.Success, answer
        assert answer.run_result is not None and answer.run_result.stdout == "hello\n"
        assert answer.run_result.status == sf.CommandRunStatus.Finished
        assert answer.run_result.return_code == 0 and answer.run_result.execution_time
        assert sf.summary_run_code_result(answer, sf.SummaryMapping()) == "Success"
    stored = server.stored(key_name)
    assert [row.status for row in stored] == ["ok", "ok"]


def test_the_header_authenticates_the_same_routes(server: DeployedService, key: str) -> None:
    body = {"code": "print(6 * 7)", "language": "python3"}
    with server.client() as client:
        for headers in (auth(key), {"X-API-Key": key}):
            answer = client.post(f"{PREFIX}/run_code", json=body, headers=headers)
            assert answer.status_code == 200, answer.text
            assert answer.json()["run_result"]["stdout"] == "42\n"
            assert "RateLimit-Remaining" in answer.headers
        refused = client.post(f"{PREFIX}/run_code", json=body)
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "unauthorized"


def test_a_timeout_is_time_limit_exceeded(endpoint: str) -> None:
    answer = _run(endpoint, "while True:\n    pass\n", run_timeout=1)
    assert answer.status == sf.RunStatus.Failed and answer.run_result is not None
    assert answer.run_result.status == sf.CommandRunStatus.TimeLimitExceeded
    assert answer.run_result.return_code is None
    mapping = sf.SummaryMapping(RunTimeout="timeout")
    assert sf.summary_run_code_result(answer, mapping) == "timeout"


def test_a_nonzero_exit_is_failed_with_its_return_code(endpoint: str) -> None:
    exited = _run(endpoint, "import sys\nprint('before')\nsys.exit(3)\n")
    assert exited.status == sf.RunStatus.Failed and exited.run_result is not None
    assert exited.run_result.status == sf.CommandRunStatus.Finished
    assert exited.run_result.return_code == 3 and exited.run_result.stdout == "before\n"
    raised = _run(endpoint, "raise ValueError('no')\n")
    assert raised.run_result is not None and raised.run_result.return_code == 1
    assert "ValueError: no" in str(raised.run_result.stderr)


def test_stdin_reaches_the_program(endpoint: str) -> None:
    answer = _run(endpoint, "a, b = map(int, input().split())\nprint(a + b)\n", stdin="20 22\n")
    assert answer.status == sf.RunStatus.Success and answer.run_result is not None
    assert answer.run_result.stdout == "42\n"


def test_files_go_in_and_come_back_from_out(endpoint: str) -> None:
    code = (
        "data = open('data/in.bin', 'rb').read()\n"
        "open('out/result.bin', 'wb').write(data[::-1])\n"
        "open('elsewhere.txt', 'w').write('x')\n"
    )
    answer = _run(
        endpoint,
        code,
        files={"data/in.bin": _b64(b"\x00\x01abc\xff")},
        fetch_files=["out/result.bin", "elsewhere.txt"],
    )
    assert answer.status == sf.RunStatus.Success, answer
    assert answer.files == {"out/result.bin": _b64(b"\xffcba\x01\x00")}
    assert "elsewhere.txt" in answer.message  # only files left under out/ come back


def test_another_language_is_a_sandbox_error_the_client_raises(
    server: DeployedService, endpoint: str, key: str
) -> None:
    request = sf.RunCodeRequest(code="console.log(1)", language="nodejs")
    with pytest.raises(Exception, match="not supported: this service runs Python"):
        sf.run_code(request, endpoint=endpoint, max_attempts=1)
    with server.client() as client:
        answer = client.post(f"{PREFIX}/run_code", json=request.dict(), headers=auth(key))
    assert answer.status_code == 200 and answer.json()["status"] == "SandboxError"


def test_a_bad_key_is_a_401_the_client_raises_after_its_retries(server: DeployedService) -> None:
    request = sf.RunCodeRequest(code="print(1)", language="python")
    with pytest.raises(Exception, match="responded with code 401"):
        sf.run_code(request, endpoint=f"{server.url}{PREFIX}/k/not-a-key", max_attempts=1)
    with pytest.raises(Exception, match="responded with code 401"):
        asyncio.run(
            sf.run_code_async(request, endpoint=f"{server.url}{PREFIX}/k/x", max_attempts=1)
        )


# --------------------------------------------------------------------------- run_jupyter


def test_jupyter_keeps_state_across_cells_and_answers_each(endpoint: str) -> None:
    cells = [
        "a = 123",
        "a",
        "print(a)",
        "import sys; sys.stderr.write('stderr message')",
        "raise RuntimeError('error message')",
        "a + 1",
    ]
    request = sf.RunJupyterRequest(cells=cells)
    answer = sf.run_jupyter(request, endpoint=endpoint, max_attempts=1)
    assert answer.status == sf.RunStatus.Success, answer
    assert answer.driver is not None and answer.driver.status == sf.CommandRunStatus.Finished
    assigned, shown, printed, warned, raised, after = answer.cells
    assert assigned.display == [] and assigned.error == []
    assert shown.display == [{"text/plain": "123"}]
    assert printed.stdout == "123\n" and printed.display == []
    assert warned.stderr == "stderr message"
    (error,) = raised.error
    assert (error["ename"], error["evalue"]) == ("RuntimeError", "error message")
    assert error["traceback"][0] == "Traceback (most recent call last):"
    assert after.display == [{"text/plain": "124"}]  # as Jupyter: an error stops nothing


def test_jupyter_async_draws_a_plot(endpoint: str) -> None:
    cells = ["import matplotlib.pyplot as plt", "plt.plot([1, 3, 2]); plt.title('t')"]
    request = sf.RunJupyterRequest(cells=cells)
    answer = asyncio.run(sf.run_jupyter_async(request, endpoint=endpoint, max_attempts=1))
    assert answer.status == sf.RunStatus.Success, answer
    shown = answer.cells[1].display
    assert shown[0]["text/plain"].startswith("Text(")
    assert base64.b64decode(shown[1]["image/png"]).startswith(PNG)


def test_jupyter_cell_timeout_stops_the_notebook(endpoint: str) -> None:
    cells = ["x = 1", "print('start', flush=True)\nwhile True:\n    pass", "x"]
    request = sf.RunJupyterRequest(cells=cells, cell_timeout=1)
    answer = sf.run_jupyter(request, endpoint=endpoint, max_attempts=1)
    assert answer.status == sf.RunStatus.Failed and answer.driver is not None
    assert answer.driver.status == sf.CommandRunStatus.TimeLimitExceeded
    assert len(answer.cells) == 2 and answer.cells[1].stdout == "start\n"


def test_jupyter_files_go_in_and_come_back_from_anywhere(endpoint: str) -> None:
    cells = [
        "text = open('in.txt').read()",
        "open('res.txt', 'w').write(text.upper())",
        "open('out/r2.txt', 'w').write(text[::-1])",
    ]
    request = sf.RunJupyterRequest(
        cells=cells,
        files={"in.txt": _b64(b"abc")},
        fetch_files=["res.txt", "out/r2.txt", "missing.txt"],
    )
    answer = sf.run_jupyter(request, endpoint=endpoint, max_attempts=1)
    assert answer.status == sf.RunStatus.Success, answer
    assert answer.files == {"res.txt": _b64(b"ABC"), "out/r2.txt": _b64(b"cba")}


# --------------------------------------------------------------------------- a reward loop


def _sum(line: str) -> str:
    return str(sum(map(int, line.split())))


CANDIDATES: list[tuple[str, Callable[[str], str | None]]] = [
    ("print(sum(map(int, input().split())))", _sum),
    ("print(sum(map(int, input().split())) + 1)", lambda line: str(int(_sum(line)) + 1)),
    (
        "import math\nprint(math.prod(map(int, input().split())))",
        lambda line: str(math.prod(map(int, line.split()))),
    ),
    ("xs = input().split()\nprint(xs[3])", lambda line: None),  # IndexError on every case
]
"""Candidates for "print the sum of the integers on the line", with what each prints (None:
it raises). The product is right on some cases only, as real candidates are."""
CASES = [("1 2 3", "6"), ("10 -4", "6"), ("7", "7")]


def _candidate(index: int) -> tuple[str, Callable[[str], str | None]]:
    """The ``index``-th program: two in three right, the others wrong in turn."""
    code, prints = CANDIDATES[0 if index % 3 else 1 + index // 3 % 3]
    return f"# program {index}\n{code}\n", prints


def test_a_verl_style_reward_loop_at_128_in_flight(server: DeployedService) -> None:
    key_name = f"reward-loop-{uuid.uuid4().hex[:8]}"
    key = server.new_key(key_name, max_concurrency=IN_FLIGHT, rate_limit_per_minute=10_000)
    endpoint = f"{server.url}{PREFIX}/k/{key}"
    programs = [_candidate(index) for index in range(40)]
    jobs = [(code, case) for code, _ in programs for case in CASES]
    expected = [prints(stdin) == output for _, prints in programs for stdin, output in CASES]

    def verdict(job: tuple[str, tuple[str, str]]) -> bool:
        code, (stdin, expected) = job
        request = sf.RunCodeRequest(code=code, language="python", stdin=stdin + "\n")
        answer = sf.run_code(request, endpoint=endpoint, client_timeout=300)
        stdout = answer.run_result.stdout if answer.run_result else ""
        return answer.status == sf.RunStatus.Success and (stdout or "").strip() == expected

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=IN_FLIGHT) as pool:
        verdicts = list(pool.map(verdict, jobs))
    wall_s = time.monotonic() - started
    assert verdicts == expected and 0 < sum(expected) < len(expected)
    stored = server.stored(key_name)
    assert len(stored) == len(jobs)
    print(
        f"\nreward loop: {len(jobs)} run_code calls, {IN_FLIGHT} in flight, {wall_s:.1f} s "
        f"({len(jobs) / wall_s:.1f} calls/s), {sum(verdicts)} passed, verdicts equal"
    )
