"""Metrics: the request middleware on its own, then the real service scraped through Ray.

The end-to-end part deploys the service as tests/test_http_api.py does (module-scoped, on the
session's Ray), makes real requests (runs that succeed and fail, background runs, a batch, a
cache copy, 401, 404, 422, 429 by rate and by concurrency, 503 overloaded), then scrapes Ray's
Prometheus endpoint until every metric shows them: Ray exports on an interval (10 s), so the
scrape is retried, and counts are checked as lower bounds, never timings.
"""

from __future__ import annotations

import concurrent.futures
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr
from starlette.types import ASGIApp, Receive, Scope, Send

from executors._metrics import NO_METRICS as NO_EXECUTOR_METRICS
from executors._metrics import KeptGauge, executor_metrics
from serve_app.api.errors import ApiError, error_response
from serve_app.deployment import metrics_url
from serve_app.http._metrics import (
    NO_METRICS,
    OTHER_METHOD,
    UNMATCHED_ROUTE,
    IngressMetrics,
    RequestMetricsMiddleware,
    ingress_metrics,
    rejection_reason,
)
from tests.support.api import auth, run
from tests.support.asgi import call
from tests.support.service import DeployedService, deployed_service, service_settings

# --- the middleware, without Ray


class Recorder(IngressMetrics):
    def __init__(self) -> None:
        self.requests: list[tuple[str, str, int]] = []
        self.rejections: list[str] = []

    def request(self, route: str, method: str, status_code: int, seconds: float) -> None:
        assert seconds >= 0
        self.requests.append((route, method, status_code))

    def rejected(self, reason: str) -> None:
        self.rejections.append(reason)


class RefuseLargeBodies:
    """Answers 413 before routing, as the edge's body guard does."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and dict(scope["headers"]).get(b"x-too-large"):
            error = ApiError(413, "payload_too_large", "too large")
            await error_response(error, "-")(scope, receive, send)
            return
        await self.app(scope, receive, send)


def recording_app() -> tuple[FastAPI, Recorder]:
    app = FastAPI()
    recorder = Recorder()

    @app.get("/v1/things/{thing_id}")
    async def thing(thing_id: str) -> dict[str, str]:
        return {"id": thing_id}

    @app.post("/v1/things")
    async def refuse(code: str, status: int) -> Any:
        return error_response(ApiError(status, code, "no"), "-")

    @app.get("/ready")
    async def ready() -> Any:
        return JSONResponse({"status": "unavailable", "checks": {}}, status_code=503)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("escaped")

    app.add_middleware(RefuseLargeBodies)
    app.add_middleware(RequestMetricsMiddleware, metrics=recorder, routes=app.router.routes)
    return app, recorder


def test_routes_are_their_templates_never_raw_paths() -> None:
    app, recorder = recording_app()
    assert call(app, "GET", "/v1/things/abc").status_code == 200
    assert call(app, "GET", "/v1/things/a%20b").status_code == 200
    assert call(app, "GET", "/no/such/path/123").status_code == 404
    assert call(app, "DELETE", "/v1/things/abc").status_code == 405
    assert call(app, "BREW", "/v1/things/abc").status_code == 405
    too_large = call(app, "GET", "/v1/things/abc", headers={"x-too-large": "1"})
    assert too_large.status_code == 413
    assert recorder.requests == [
        ("/v1/things/{thing_id}", "GET", 200),
        ("/v1/things/{thing_id}", "GET", 200),
        (UNMATCHED_ROUTE, "GET", 404),
        ("/v1/things/{thing_id}", "DELETE", 405),
        ("/v1/things/{thing_id}", OTHER_METHOD, 405),
        ("/v1/things/{thing_id}", "GET", 413),  # answered before routing: matched here
    ]
    assert recorder.rejections == ["invalid"]


@pytest.mark.parametrize(
    ("code", "status", "reason"),
    [
        ("overloaded", 503, "overloaded"),
        ("unavailable", 503, "unavailable"),
        ("policy_violation", 422, "policy"),
        ("unauthorized", 401, "unauthorized"),
        ("invalid_request", 422, "invalid"),
        ("invalid_json", 400, "invalid"),
        ("unsupported_media_type", 415, "invalid"),
        ("not_found", 404, None),
        ("rate_limited", 429, None),
    ],
)
def test_refusals_are_counted_by_their_error_code(
    code: str, status: int, reason: str | None
) -> None:
    app, recorder = recording_app()
    response = call(app, "POST", "/v1/things", params={"code": code, "status": status})
    assert response.json()["error"]["code"] == code
    assert recorder.requests == [("/v1/things", "POST", status)]
    assert recorder.rejections == ([reason] if reason else [])


def test_a_503_that_is_no_error_answer_is_no_refusal() -> None:
    app, recorder = recording_app()
    assert call(app, "GET", "/ready").status_code == 503
    assert (recorder.requests, recorder.rejections) == ([("/ready", "GET", 503)], [])


def test_an_escaping_exception_is_measured_as_500() -> None:
    app, recorder = recording_app()
    with pytest.raises(RuntimeError, match="escaped"):
        call(app, "GET", "/boom")
    assert recorder.requests == [("/boom", "GET", 500)]


def test_rejection_reason_reads_only_the_error_prefix() -> None:
    assert rejection_reason(b'{"error":{"code":"overloaded","message":"x"}}') == "overloaded"
    assert rejection_reason(b'{"error":{"code":"nonsense"}}') is None
    assert rejection_reason(b'{"error":{"code":"unauth') is None
    assert rejection_reason(b'{"status":"ready"}') is None
    assert rejection_reason(b"") is None


def test_without_ray_metrics_record_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    import executors._metrics
    import serve_app.http._metrics

    monkeypatch.setattr(executors._metrics, "ray_connected", lambda: False)
    monkeypatch.setattr(serve_app.http._metrics, "ray_connected", lambda: False)
    assert executor_metrics() is NO_EXECUTOR_METRICS
    assert ingress_metrics() is NO_METRICS
    NO_METRICS.request("/x", "GET", 200, 0.1)  # no-ops, no Ray needed
    NO_EXECUTOR_METRICS.started(NO_EXECUTOR_METRICS.received())


def test_kept_gauges_set_their_last_values_again() -> None:
    calls: list[tuple[float, dict[str, str] | None]] = []

    class FakeGauge:
        def set(self, value: float, tags: dict[str, str] | None = None) -> None:
            calls.append((value, tags))

    gauge = KeptGauge(FakeGauge())
    gauge.set(1, {"state": "busy"}, "busy")
    gauge.set(2, {"state": "busy"}, "busy")
    gauge.set(0, {"state": "free"}, "free")
    calls.clear()
    gauge.refresh()
    assert sorted(calls, key=str) == [(0, {"state": "free"}), (2, {"state": "busy"})]


def test_serve_prints_where_the_metrics_are() -> None:
    @dataclass
    class Context:
        address_info: dict[str, Any]

    local = Context({"metrics_export_port": 8080, "node_ip_address": "10.0.0.5"})
    assert metrics_url(local, joined=False) == "http://127.0.0.1:8080/metrics"
    assert metrics_url(local, joined=True) == "http://10.0.0.5:8080/metrics"
    assert metrics_url(Context({}), joined=False) is None


# --- the service, scraped through Ray

APP_NAME = "exec-agent-metrics-test"
SECRET = SecretStr("metrics-test-api-key-secret-0123456789abc")
SCRAPE_DEADLINE_S = 45.0
"""Ray exports every 10 s; a metric recorded now shows within two intervals."""
SLOTS = 2
EXPORTED = {
    "ray_exec_agent_executions_total",
    "ray_exec_agent_execution_duration_seconds",
    "ray_exec_agent_queue_wait_seconds",
    "ray_exec_agent_execution_peak_memory_bytes",
    "ray_exec_agent_request_duration_seconds",
    "ray_exec_agent_active_executions",
    "ray_exec_agent_sandbox_slots",
    "ray_exec_agent_queue_depth",
    "ray_exec_agent_rate_limited_total",
    "ray_exec_agent_rejected_total",
    "ray_exec_agent_sandbox_start_failures_total",
    "ray_exec_agent_db_write_retries_total",
    "ray_exec_agent_sessions_created_total",
    "ray_exec_agent_sessions_ended_total",
    "ray_exec_agent_streamed_executions_total",
    "ray_exec_agent_stream_dropped_bytes_total",
}
"""Every metric as Prometheus sees it: Ray's exporter prefixes ``ray_`` (it cannot be off)."""

Sample = tuple[str, dict[str, str], float]


@dataclass
class Served(DeployedService):
    metrics_url: str

    def new_key(
        self,
        name: str,
        *,
        rate_limit_per_minute: int | None = None,
        max_concurrency: int | None = None,
    ) -> str:
        """A new key named ``name`` and a random suffix (the module's keys never collide)."""
        return super().new_key(
            f"{name}-{uuid.uuid4().hex[:6]}",
            rate_limit_per_minute=rate_limit_per_minute,
            max_concurrency=max_concurrency,
        )


@pytest.fixture(scope="module")
def served(ray_session: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    import ray

    directory: Path = tmp_path_factory.mktemp("metrics")
    settings = service_settings(
        f"sqlite:///{directory / 'api.db'}",
        SECRET,
        redis_url=None,
        max_concurrent_executions=SLOTS,
        executor_max_queued_requests=2,  # a third background run at once: 503 overloaded
        denied_imports=["socket"],
    )
    [node] = [node for node in ray.nodes() if node["Alive"]]  # type: ignore[no-untyped-call]
    metrics_url = f"http://127.0.0.1:{node['MetricsExportPort']}/metrics"
    with deployed_service(settings, APP_NAME) as database:
        yield Served(database, settings, metrics_url)


@pytest.fixture(scope="module")
def traffic(served: Served) -> dict[str, int]:
    """Real requests of every kind; what they must add up to at least."""
    with served.client() as client:
        key = served.new_key("main")
        ok = [run(client, key, f"print({n})") for n in range(3)]
        assert [r.json()["status"] for r in ok] == ["ok"] * 3
        failing = run(client, key, "raise SystemExit(3)")
        assert failing.json()["status"] == "nonzero_exit"
        streamed = client.post(
            "/v1/executions",
            json={"code": "print('streamed')"},
            headers={**auth(key), "Accept": "text/event-stream"},
        )
        assert streamed.headers["content-type"].startswith("text/event-stream")
        first, copy = (run(client, key, "print('cache me')", cache=True) for _ in range(2))
        assert (first.json()["cached"], copy.json()["cached"]) == (False, True)
        background = run(client, key, "print('later')", wait=False).json()["id"]
        done = client.get(f"/v1/executions/{background}?wait_s=30", headers=auth(key))
        assert done.json()["status"] == "ok"
        batch = client.post(
            "/v1/batches",
            json={"items": [{"code": "print('a')"}, {"code": "print('b')"}]},
            headers=auth(key),
        ).json()
        finished = client.get(f"/v1/batches/{batch['id']}?wait_s=60", headers=auth(key)).json()
        assert finished["status"] == "done"

        missing = client.get(f"/v1/executions/{uuid.uuid4()}", headers=auth(key))
        assert missing.status_code == 404
        assert client.get("/no/such/route").status_code == 404
        assert run(client, "not-a-key", "print(1)").status_code == 401
        assert run(client, key, "import socket").status_code == 422  # policy
        assert run(client, key, "print(1)", limits={"memory_mb": -1}).status_code == 422
        assert (
            client.post(
                "/v1/executions",
                content=b"{",
                headers={**auth(key), "content-type": "application/json"},
            ).status_code
            == 400
        )

        slow = "import time; time.sleep(1.5)"
        overloaded = [run(client, key, slow, wait=False) for _ in range(4)]
        statuses = [response.status_code for response in overloaded]
        assert 503 in statuses, statuses
        accepted = [r.json()["id"] for r in overloaded if r.status_code == 202]
        for execution_id in accepted:
            client.get(f"/v1/executions/{execution_id}?wait_s=30", headers=auth(key))

        limited = served.new_key("rate", rate_limit_per_minute=1)
        answers = [
            client.get("/v1/executions", headers=auth(limited)).status_code for _ in range(2)
        ]
        assert answers == [200, 429]

        single = served.new_key("single", max_concurrency=1)
        held = run(client, single, slow, wait=False)
        assert held.status_code == 202
        refused = run(client, single, "print(1)")
        assert refused.status_code == 429  # concurrency
        assert "in-flight cap" in refused.json()["error"]["message"]
        client.get(f"/v1/executions/{held.json()['id']}?wait_s=30", headers=auth(single))
    runs = 3 + 1 + 1 + 1 + 2 + len(accepted) + 1  # each ran in a sandbox once
    return {"ok": 3 + 1 + 1 + 2 + len(accepted) + 1, "runs": runs, "posted_ok": 3}


def metric_name(sample_name: str) -> str:
    """The metric a sample belongs to (a histogram's ``_bucket``, ``_count``, ``_sum``)."""
    for suffix in ("_bucket", "_count", "_sum"):
        if sample_name.endswith(suffix):
            return sample_name.removesuffix(suffix)
    return sample_name


def scrape(url: str) -> list[Sample]:
    text = httpx.get(url, timeout=10).text
    return [
        (sample.name, dict(sample.labels), sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def total(samples: list[Sample], name: str, **labels: str) -> float | None:
    """The sum over this application's series of ``name`` with ``labels``; None if none."""
    values = [
        value
        for sample_name, sample_labels, value in samples
        if sample_name == name
        and sample_labels.get("application") == APP_NAME
        and all(sample_labels.get(k) == v for k, v in labels.items())
    ]
    return sum(values) if values else None


Check = tuple[str, Callable[[list[Sample]], bool]]


def at_least(minimum: float, name: str, **labels: str) -> Check:
    def check(samples: list[Sample]) -> bool:
        value = total(samples, name, **labels)
        return value is not None and value >= minimum

    return f"{name}{labels} >= {minimum}", check


def scrape_until(url: str, checks: list[Check]) -> list[Sample]:
    """Scrape until every check passes (or fail naming those that do not)."""
    deadline = time.monotonic() + SCRAPE_DEADLINE_S
    while True:
        samples = scrape(url)
        failing = [label for label, check in checks if not check(samples)]
        if not failing:
            return samples
        if time.monotonic() > deadline:
            shown = sorted({s[0] for s in samples if "exec_agent" in s[0]})
            pytest.fail(f"never true: {failing}; exec_agent samples seen: {shown}")
        time.sleep(1.0)


@pytest.mark.ray
@pytest.mark.sandbox
def test_every_metric_is_exported_with_its_tags(served: Served, traffic: dict[str, int]) -> None:
    executions = "ray_exec_agent_executions_total"
    requests = "ray_exec_agent_request_duration_seconds_count"
    single = "/v1/executions/{execution_id}"
    checks = [
        at_least(traffic["ok"], executions, status="ok", cached="false"),
        at_least(1, executions, status="ok", cached="true"),
        at_least(1, executions, status="nonzero_exit", cached="false"),
        at_least(0, executions, status="internal_error", cached="false"),
        at_least(traffic["runs"], "ray_exec_agent_execution_duration_seconds_count"),
        at_least(traffic["runs"], "ray_exec_agent_execution_peak_memory_bytes_count"),
        at_least(traffic["runs"], "ray_exec_agent_queue_wait_seconds_count"),
        at_least(traffic["runs"], "ray_exec_agent_queue_wait_seconds_bucket", le="+Inf"),
        at_least(
            traffic["posted_ok"], requests, route="/v1/executions", method="POST", status_code="200"
        ),
        at_least(1, requests, route="/v1/executions", method="POST", status_code="202"),
        at_least(1, requests, route=single, method="GET", status_code="404"),
        at_least(1, requests, route=UNMATCHED_ROUTE, method="GET", status_code="404"),
        at_least(1, requests, route="/v1/executions", method="POST", status_code="401"),
        at_least(2, requests, route="/v1/executions", method="POST", status_code="422"),
        at_least(1, requests, route="/v1/executions", method="POST", status_code="503"),
        at_least(1, requests, route="/v1/executions", method="GET", status_code="429"),
        at_least(1, requests, route="/v1/batches/{batch_id}", method="GET", status_code="200"),
        at_least(0, "ray_exec_agent_active_executions"),
        at_least(0, "ray_exec_agent_sandbox_slots", state="busy"),
        at_least(1, "ray_exec_agent_sandbox_slots", state="free"),
        at_least(0, "ray_exec_agent_queue_depth"),
        at_least(1, "ray_exec_agent_rate_limited_total", limit="rate"),
        at_least(1, "ray_exec_agent_rate_limited_total", limit="concurrency"),
        at_least(1, "ray_exec_agent_rejected_total", reason="overloaded"),
        at_least(1, "ray_exec_agent_rejected_total", reason="policy"),
        at_least(1, "ray_exec_agent_rejected_total", reason="unauthorized"),
        at_least(2, "ray_exec_agent_rejected_total", reason="invalid"),
        at_least(0, "ray_exec_agent_rejected_total", reason="unavailable"),
        at_least(0, "ray_exec_agent_sandbox_start_failures_total"),
        at_least(0, "ray_exec_agent_db_write_retries_total"),
        at_least(0, "ray_exec_agent_sessions_created_total"),
        at_least(0, "ray_exec_agent_sessions_ended_total", reason="idle"),
        at_least(1, "ray_exec_agent_streamed_executions_total"),
        at_least(0, "ray_exec_agent_stream_dropped_bytes_total"),
    ]
    samples = scrape_until(served.metrics_url, checks)

    ours = [
        (name, labels)
        for name, labels, _ in samples
        if labels.get("application") == APP_NAME and name.startswith("ray_exec_agent_")
    ]
    assert {metric_name(name) for name, _ in ours} == EXPORTED
    # Routes are templates: no raw path or id ever becomes a label value.
    routes = {labels["route"] for name, labels in ours if name == requests}
    plain = {"/v1/executions", "/v1/batches", UNMATCHED_ROUTE}
    assert routes and all("{" in route or route in plain for route in routes), routes
    # Serve's tags say which deployment each series comes from.
    deployments = {metric_name(name): labels["deployment"] for name, labels in ours}
    assert deployments["ray_exec_agent_executions_total"] == "ApiIngress"
    assert deployments["ray_exec_agent_request_duration_seconds"] == "ApiIngress"
    assert deployments["ray_exec_agent_queue_depth"] == "SandboxExecutor"
    assert deployments["ray_exec_agent_sandbox_slots"] == "SandboxExecutor"


@pytest.mark.ray
@pytest.mark.sandbox
def test_readiness_details(served: Served) -> None:
    operator = auth(served.new_key("operator"))  # the details are for a caller with a key
    body = httpx.get(f"{served.url}/health/ready", headers=operator, timeout=30).json()
    checks = body["checks"]
    assert checks["database"]["rtt_ms"] >= 0
    assert checks["redis"]["backend"] == "memory" and checks["redis"]["rtt_ms"] >= 0
    executors = checks["executors"]
    assert (executors["ok"], executors["replicas"], executors["slots"]) == (True, 1, SLOTS)
    assert 0 <= executors["free_slots"] <= SLOTS
    assert checks["sandbox"]["layers"]
    assert checks["disk"]["free_bytes"] > 0 and checks["memory"]["available_bytes"] > 0


@pytest.mark.ray
@pytest.mark.sandbox
def test_the_active_gauge_counts_runs_in_flight(served: Served) -> None:
    """Two runs outlast two export intervals: the scrape sees them active, their slots busy."""
    key = served.new_key("active")
    code, limits = "import time; time.sleep(25)", {"wall_timeout_s": 30}
    in_flight = [
        at_least(1, "ray_exec_agent_active_executions"),
        at_least(1, "ray_exec_agent_sandbox_slots", state="busy"),
    ]
    with (
        served.client() as client,
        concurrent.futures.ThreadPoolExecutor(2) as pool,
    ):
        running = [pool.submit(run, client, key, code, limits=limits) for _ in range(2)]
        samples = scrape_until(served.metrics_url, in_flight)
        assert [future.result().json()["status"] for future in running] == ["ok", "ok"]
    assert (total(samples, "ray_exec_agent_active_executions") or 0) <= 2
    assert (total(samples, "ray_exec_agent_sandbox_slots", state="busy") or 0) <= SLOTS
