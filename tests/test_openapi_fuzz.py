"""The OpenAPI document against a running service: Schemathesis draws requests from it (valid
ones and ones it must refuse) and sends them, with a real key, to a real ``exec-agent serve``;
and ``/docs`` over it in a real browser.

Each answer must be no 5xx, a status the operation documents, of a documented media type, with
a body that validates against the documented schema (the error bodies' ``code`` among the
documented codes of that status), and every request that breaks the document refused (4xx).
The programs drawn run in the sandbox like any other, under small server maxima (a few
seconds, batches of three) that the document states and the valid requests therefore keep.

Bounded for a 2-core machine: a fixed seed, few examples per operation, no coverage or stateful
phase. ``GET /v1/ws`` is left out: an HTTP request without the upgrade is not the operation
(``tests/test_api_websocket.py`` tests the conversation).

``/docs`` in headless Chromium (loopback only, :mod:`tests.support.browser`): every operation
shown, no Content-Security-Policy refusal or other console error, nothing loaded from another
origin, and "Try it out" with the key given to "Authorize" (Bearer) answers 200.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import hypothesis
import pytest
import schemathesis
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from tests.support.browser import chromium, console_errors, foreign_resources, screenshot_dir
from tests.support.live_server import LiveServer, live_server

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.sandbox]

SEED = 20261206
MAX_EXAMPLES = 20
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
SERVER_MAXIMA = {
    "MAX_TIMEOUT": "3",
    "DEFAULT_TIMEOUT": "2",
    "MAX_CPU_TIME": "3",
    "DEFAULT_CPU_TIME": "2",
    "MAX_BATCH_ITEMS": "3",
}


@pytest.fixture(scope="module")
def server(ray_session: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with live_server(tmp_path_factory.mktemp("openapi-fuzz"), **SERVER_MAXIMA) as running:
        yield running


NEGATABLE = [
    "POST /v1/executions",
    "GET /v1/executions",
    "GET /v1/executions/{execution_id}",
    "POST /v1/batches",
    "GET /v1/batches/{batch_id}",
    "POST /v1/sessions",
    "GET /v1/sessions",
    "POST /v1/sessions/{session_id}/executions",
]
"""The operations with a body or a query or header parameter: what invalid requests can be
drawn for (a path's id is any string, so a path alone has no invalid value)."""
OPERATIONS = [
    *NEGATABLE,
    "GET /v1/executions/{execution_id}/artifacts/{path}",
    "GET /v1/sessions/{session_id}",
    "DELETE /v1/sessions/{session_id}",  # after the session's calls: it ends the session
    "GET /v1/runtimes",
    "GET /health",
    "GET /health/ready",
    "GET /docs",
]
"""Every operation of the document but ``GET /v1/ws`` and ``GET /openapi.json`` (which
Schemathesis reads as the document itself), as checked below against the document."""
NOT_FUZZED = {
    "POST /compat/sandbox-fusion/run_code",
    "POST /compat/sandbox-fusion/run_jupyter",
    "POST /compat/sandbox-fusion/k/{api_key}/run_code",
    "POST /compat/sandbox-fusion/k/{api_key}/run_jupyter",
}
"""SandboxFusion's routes: tested with SandboxFusion's own client (tests/test_compat_client.py).
Drawn keys in their paths would be authentication failures that throttle this address."""
MUST_SUCCEED = {
    "POST /v1/executions",
    "GET /v1/executions",
    "GET /v1/executions/{execution_id}",
    "GET /v1/executions/{execution_id}/artifacts/{path}",
    "POST /v1/batches",
    "GET /v1/batches/{batch_id}",
    "GET /v1/sessions/{session_id}",
    "POST /v1/sessions/{session_id}/executions",
    "GET /v1/runtimes",
}
"""Where valid requests must reach the work, not only refusals: some answer is a 2xx."""
ARTIFACT = "out/result.txt"


@dataclass(frozen=True)
class Known:
    """Ids that exist on the server, so that valid requests on ids reach real records."""

    execution_id: str
    batch_id: str
    session_id: str

    def path_parameters(self) -> dict[str, str]:
        return {
            "execution_id": self.execution_id,
            "path": ARTIFACT,
            "batch_id": self.batch_id,
            "session_id": self.session_id,
        }


@pytest.fixture(scope="module")
def known(server: LiveServer) -> Known:
    key = {"Authorization": f"Bearer {server.key}"}
    with httpx.Client(base_url=server.url, headers=key, timeout=120) as client:
        code = f"open({ARTIFACT!r}, 'w').write('made')\nprint('done')"
        run = client.post("/v1/executions", json={"code": code})
        assert run.status_code == 200 and run.json()["artifacts"], run.text
        batch = client.post("/v1/batches", json={"items": [{"code": "print(1)"}]})
        assert batch.status_code == 202, batch.text
        session = client.post("/v1/sessions", json={})
        assert session.status_code == 201, session.text
    return Known(run.json()["id"], batch.json()["id"], session.json()["id"])


@pytest.fixture(scope="module")
def api_schema(server: LiveServer) -> Any:
    # The key is sent as it is (both schemes are documented: the first one a request names
    # wins), not drawn: a drawn X-API-Key beside a valid Bearer key is no invalid request.
    config = SchemathesisConfig.from_dict(
        {"seed": SEED, "request-timeout": 60, "generation": {"with-security-parameters": False}}
    )
    return schemathesis.openapi.from_url(f"{server.url}/openapi.json", config=config)


@pytest.fixture(scope="module")
def answers() -> dict[tuple[str, str], Counter[int]]:
    """The statuses answered, by operation and mode: what the run reached."""
    return {}


def test_every_operation_is_fuzzed(api_schema: Any) -> None:
    paths: dict[str, dict[str, Any]] = api_schema.raw_schema["paths"]
    documented = {
        f"{method.upper()} {path}": operation
        for path, item in paths.items()
        for method, operation in item.items()
    }
    assert set(documented) == {*OPERATIONS, *NOT_FUZZED, "GET /v1/ws", "GET /openapi.json"}
    negatable = {
        label
        for label, operation in documented.items()
        if operation.get("requestBody")
        or any(parameter["in"] != "path" for parameter in operation.get("parameters", ()))
    }
    assert negatable - {"GET /v1/ws", *NOT_FUZZED} == set(NEGATABLE)


STREAMED = ["POST /v1/executions", "POST /v1/sessions/{session_id}/executions"]
"""The operations that answer ``Accept: text/event-stream`` with Server-Sent Events."""
EVENT_STREAM = {"Accept": "text/event-stream"}


def _variants(label: str) -> list[tuple[str, str]]:
    """``positive``: valid requests; ``negative``: requests the document makes invalid;
    ``streamed``: valid requests asking for Server-Sent Events."""
    variants = ["positive"]
    if label in NEGATABLE:
        variants.append("negative")
    if label in STREAMED:
        variants.append("streamed")
    return [(label, variant) for variant in variants]


@pytest.mark.parametrize(
    ("label", "variant"), [case for label in OPERATIONS for case in _variants(label)]
)
def test_the_service_answers_as_documented(
    api_schema: Any,
    server: LiveServer,
    known: Known,
    answers: dict[tuple[str, str], Counter[int]],
    label: str,
    variant: str,
) -> None:
    operation = api_schema.find_operation_by_label(label)
    mode = GenerationMode.NEGATIVE if variant == "negative" else GenerationMode.POSITIVE
    headers = {"Authorization": f"Bearer {server.key}"}
    if variant == "streamed":
        headers |= EVENT_STREAM
    strategy = operation.as_strategy(mode)
    names = {parameter.name for parameter in operation.path_parameters}
    if names:  # drawn ids (404s) and the real ones (records, artifacts, a live session)
        real = {name: value for name, value in known.path_parameters().items() if name in names}
        strategy = strategy | operation.as_strategy(mode, path_parameters=real)
    statuses = answers.setdefault((label, variant), Counter())

    @hypothesis.settings(
        max_examples=MAX_EXAMPLES,
        derandomize=True,  # the same examples every run
        database=None,
        deadline=None,
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    @hypothesis.given(case=strategy)
    def answers_as_documented(case: Any) -> None:
        response = case.call_and_validate(headers=headers, checks=CHECKS)
        statuses[response.status_code] += 1
        if variant == "streamed" and response.status_code == 200:
            assert response.headers["content-type"][0].startswith("text/event-stream")
            assert "event: record" in response.text

    answers_as_documented()
    if variant != "negative" and label in MUST_SUCCEED:
        assert any(200 <= status < 300 for status in statuses), statuses


def test_the_run_reached_every_operation(answers: dict[tuple[str, str], Counter[int]]) -> None:
    """Figures of the run (``-s`` prints them); every operation and mode was sent requests."""
    for (label, mode), statuses in sorted(answers.items()):
        print(f"{label:55} {mode:9} {sum(statuses.values()):3} {dict(sorted(statuses.items()))}")
    assert set(answers) == {case for label in OPERATIONS for case in _variants(label)}
    assert all(sum(statuses.values()) > 0 for statuses in answers.values())


def _shown(driver: WebDriver, css: str, timeout_s: float = 30.0) -> Any:
    return WebDriverWait(driver, timeout_s).until(
        lambda _: next(
            (found for found in driver.find_elements(By.CSS_SELECTOR, css) if found.is_displayed()),
            None,
        )
    )


def test_docs_in_a_browser_try_it_out_with_the_key(
    server: LiveServer, api_schema: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    operations = sum(len(item) for item in api_schema.raw_schema["paths"].values())
    with chromium(tmp_path_factory.mktemp("chromium") / "profile") as driver:
        driver.get(f"{server.url}/docs")
        WebDriverWait(driver, 60).until(
            lambda _: len(driver.find_elements(By.CSS_SELECTOR, ".opblock")) == operations
        )
        _shown(driver, "button.authorize").click()
        _shown(driver, "#auth-bearer-value").send_keys(server.key)
        apply = (
            "//input[@id='auth-bearer-value']/ancestor::form//button[contains(@class, 'authorize')]"
        )
        driver.find_element(By.XPATH, apply).click()
        _shown(driver, "button.btn-done").click()
        runtimes = "#operations-runtimes-list_runtimes_v1_runtimes_get"
        _shown(driver, f"{runtimes} .opblock-summary").click()
        _shown(driver, f"{runtimes} .try-out__btn").click()
        _shown(driver, f"{runtimes} .execute").click()
        status = _shown(
            driver, f"{runtimes} .live-responses-table tr.response .response-col_status", 60
        )
        curl = _shown(driver, f"{runtimes} .curl-command").text
        driver.save_screenshot(str(screenshot_dir() / "docs-try-it-out.png"))
        assert status.text.strip().startswith("200"), status.text
        assert f"Authorization: Bearer {server.key}" in curl
        assert console_errors(driver) == []
        assert foreign_resources(driver, server.url) == []
