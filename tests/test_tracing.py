"""Tracing: OpenTelemetry spans from the HTTP ingress through the executor to the sandbox run.

Without Ray: tracing off installs nothing (the API's no-op tracer), the carrier between the
ingress and the executor, and the ingress middleware with a private in-memory exporter. With
Ray: the whole service (as in tests/test_http_api.py) exporting over OTLP/HTTP to a small
receiver on 127.0.0.1, whose raw exports are searched for the program's code, input and output.
"""

from __future__ import annotations

import gzip
import logging
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from pydantic import SecretStr

from executors._tracing import (
    ENDPOINT_VARIABLE,
    carried_execution_id,
    current_tracer,
    extract_context,
    init_tracing_from_env,
    inject_context,
    quiet_export_errors,
    traces_endpoint,
    tracing_enabled,
)
from serve_app.api import install_edge
from serve_app.observability import (
    TracingMiddleware,
    init_tracing,
    tracing_environment,
)
from serve_app.settings import Settings
from tests.support.api import auth
from tests.support.asgi import served_call
from tests.support.ports import free_port
from tests.support.service import DeployedService, deployed_service, service_settings

APP_NAME = "exec-agent-tracing-test"
SECRET = SecretStr("tracing-test-api-key-secret-0123456789abcdef")
CODE_MARKER = "CODE-MARKER-7d1f"
STDIN_MARKER = "STDIN-MARKER-93ac"
OUTPUT_MARKER = "OUTPUT-MARKER-5e20"
# The output marker is assembled when the program runs: it is not in the code.
PROGRAM = (
    f"# {CODE_MARKER}\n"
    "import sys\n"
    "data = sys.stdin.read()\n"
    "print('OUTPUT-' + 'MARKER-5e20', len(data))\n"
    "print('OUTPUT-' + 'MARKER-5e20', file=sys.stderr)\n"
)
MARKERS = (CODE_MARKER, STDIN_MARKER, OUTPUT_MARKER, SECRET.get_secret_value())
SPAN_WAIT_S = 30.0


# --------------------------------------------------------------------------- without Ray


def test_tracing_off_installs_nothing() -> None:
    settings = Settings(otel_exporter_otlp_endpoint=None, _env_file=None)
    assert settings.otel_exporter_otlp_endpoint is None
    assert init_tracing(settings, component="ingress") is False
    assert init_tracing_from_env(component="executor", environ={}) is False
    assert init_tracing_from_env(component="executor", environ={ENDPOINT_VARIABLE: " "}) is False
    assert not tracing_enabled()
    assert current_tracer() is None
    assert tracing_environment(settings) == {}
    # The global provider is still the API's proxy, whose spans record nothing.
    assert not isinstance(trace.get_tracer_provider(), TracerProvider)
    span = trace.get_tracer("tests").start_span("nothing")
    assert not span.is_recording()
    assert not span.get_span_context().is_valid


def test_the_environment_for_the_executor_replicas() -> None:
    settings = Settings(
        otel_exporter_otlp_endpoint="http://127.0.0.1:4318/",
        otel_service_name="agent-x",
        _env_file=None,
    )
    assert tracing_environment(settings) == {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318/",
        "OTEL_SERVICE_NAME": "agent-x",
    }
    assert traces_endpoint("http://127.0.0.1:4318/", {}) == "http://127.0.0.1:4318/v1/traces"
    assert traces_endpoint("http://c:4318", {}) == "http://c:4318/v1/traces"
    explicit = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:9/traces"}
    assert traces_endpoint("http://c:4318", explicit) == "http://c:9/traces"


def private_tracer() -> tuple[trace.Tracer, InMemorySpanExporter]:
    """A tracer of its own provider, never the global one (which stays off in this process)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider.get_tracer("tests"), exporter


def test_the_carrier_links_the_executor_span_to_the_caller() -> None:
    tracer, exporter = private_tracer()
    with tracer.start_as_current_span("executor.run") as caller:
        carrier = inject_context("exec-123")
    assert set(carrier) == {"traceparent", "baggage"}
    parent = extract_context(carrier)
    assert carried_execution_id(parent) == "exec-123"
    with tracer.start_as_current_span("sandbox.run", context=parent) as child:
        pass
    assert child.get_span_context().trace_id == caller.get_span_context().trace_id
    (_, finished) = exporter.get_finished_spans()
    assert finished.parent is not None
    assert finished.parent.span_id == caller.get_span_context().span_id
    # No carrier, or one of junk: a span of its own (no parent), never an error.
    assert extract_context(None) is None and extract_context({}) is None
    assert extract_context({"x-other": "1", "traceparent": "0" * 5000}) is None
    assert carried_execution_id(extract_context({"traceparent": "garbage"})) is None


def test_a_collector_that_is_down_costs_warnings_not_errors(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An export that fails is a warning (an error would be a Sentry event per batch)."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    quiet_export_errors()
    quiet_export_errors()  # idempotent
    exporter = OTLPSpanExporter(endpoint=f"http://127.0.0.1:{free_port()}/v1/traces", timeout=1)
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with caplog.at_level(logging.DEBUG):
        provider.get_tracer("tests").start_span("lost").end()
    provider.shutdown()
    failures = [r for r in caplog.records if r.name.startswith("opentelemetry.exporter")]
    assert failures, [r.getMessage() for r in caplog.records]
    assert {r.levelname for r in failures} == {"WARNING"}


def edge_app(tracer: trace.Tracer) -> FastAPI:
    """A small app with the service's edge and the tracing middleware, as build_api stacks
    them; its routes see the request's span as the current one."""
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    install_edge(
        app,
        Settings(api_key_secret="k" * 40, _env_file=None),
        upstream_request_id=False,
    )

    def route_of(scope: Any) -> str | None:
        route = scope.get("route")
        return getattr(route, "path", None)

    app.add_middleware(TracingMiddleware, tracer=tracer, route=route_of)

    @app.post("/v1/things/{thing_id}")
    async def thing(thing_id: str, request: Request) -> dict[str, str]:
        await request.body()
        with tracer.start_as_current_span("inner"):
            pass
        return {"thing": thing_id}

    @app.get("/v1/boom")
    async def boom() -> None:
        raise RuntimeError(f"failed with {CODE_MARKER}")

    return app


def test_the_middleware_traces_each_request_by_its_route_without_its_data() -> None:
    tracer, exporter = private_tracer()
    app = edge_app(tracer)
    headers = {
        "X-Request-ID": "req-trace-1",
        "Authorization": f"Bearer {STDIN_MARKER}",
        "Content-Type": "application/json",
    }
    body = f'{{"code": "{CODE_MARKER}"}}'
    response = served_call(
        app, "POST", f"/v1/things/{OUTPUT_MARKER}?q={OUTPUT_MARKER}", content=body, headers=headers
    )
    assert response.status_code == 200
    inner, server = exporter.get_finished_spans()
    assert (server.name, server.kind) == ("POST /v1/things/{thing_id}", SpanKind.SERVER)
    assert dict(server.attributes or {}) == {
        "http.method": "POST",
        "http.route": "/v1/things/{thing_id}",
        "http.status_code": 200,
        "exec_agent.request_id": "req-trace-1",
    }
    assert inner.parent is not None and inner.parent.span_id == server.context.span_id
    assert server.status.status_code is StatusCode.UNSET
    assert not server.events
    for span in (server, inner):
        assert not any(marker in span.to_json() for marker in MARKERS)

    exporter.clear()
    assert (
        served_call(app, "GET", "/nowhere", headers={"X-Request-ID": "req-trace-2"}).status_code
        == 404
    )
    (unmatched,) = exporter.get_finished_spans()
    assert unmatched.name == "GET"
    assert dict(unmatched.attributes or {}) == {
        "http.method": "GET",
        "http.status_code": 404,
        "exec_agent.request_id": "req-trace-2",
    }

    exporter.clear()
    assert served_call(app, "GET", "/v1/boom").status_code == 500  # the edge's last-resort answer
    (failed,) = exporter.get_finished_spans()
    assert failed.name == "GET /v1/boom"
    assert failed.status.status_code is StatusCode.ERROR
    assert CODE_MARKER not in failed.to_json()

    exporter.clear()
    assert served_call(app, "BREW", "/v1/things/x").status_code == 405
    (odd,) = exporter.get_finished_spans()
    assert (odd.attributes or {})["http.method"] == "_OTHER"


# --------------------------------------------------------------------------- OTLP receiver


@dataclass
class Receiver:
    """A local OTLP/HTTP collector: keeps every export's raw body and its decoded spans."""

    server: ThreadingHTTPServer
    raw: list[bytes] = field(default_factory=list)
    spans: list[tuple[dict[str, Any], ProtoSpan]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def endpoint(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def add(self, body: bytes) -> None:
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        with self.lock:
            self.raw.append(body)
            for resource_spans in request.resource_spans:
                resource = attributes(resource_spans.resource.attributes)
                for scope_spans in resource_spans.scope_spans:
                    self.spans.extend((resource, span) for span in scope_spans.spans)

    def collected(self) -> list[tuple[dict[str, Any], ProtoSpan]]:
        with self.lock:
            return list(self.spans)

    def wait_for(self, wanted: Any, timeout_s: float = SPAN_WAIT_S) -> list[Any]:
        """The spans ``wanted(spans)`` returns, once it returns some (or fail after a while)."""
        deadline = time.monotonic() + timeout_s
        while True:
            found: list[Any] = wanted(self.collected())
            if found or time.monotonic() > deadline:
                assert found, f"spans never arrived: {[s.name for _, s in self.collected()]}"
                return found
            time.sleep(0.2)


def value_of(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return None if kind is None else getattr(value, kind)


def attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: value_of(pair.value) for pair in pairs}


def strings_of(span: ProtoSpan) -> list[str]:
    """Every text a span carries: its name, attributes, events, links and status."""
    texts = [span.name, span.status.message]
    texts += [f"{key}={value}" for key, value in attributes(span.attributes).items()]
    for event in span.events:
        texts += [event.name, *(f"{k}={v}" for k, v in attributes(event.attributes).items())]
    for link in span.links:
        texts += [f"{k}={v}" for k, v in attributes(link.attributes).items()]
    return texts


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            encoding = (self.headers.get("Content-Encoding") or "").lower()
            if encoding == "gzip":
                body = gzip.decompress(body)
            elif encoding == "deflate":
                body = zlib.decompress(body)
            if self.path != "/v1/traces":
                self.send_error(404)
                return
            collector.add(body)
            answer = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    collector = Receiver(ThreadingHTTPServer(("127.0.0.1", 0), Handler))
    thread = threading.Thread(target=collector.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield collector
    finally:
        collector.server.shutdown()
        collector.server.server_close()


# --------------------------------------------------------------------------- the service


@dataclass
class Service(DeployedService):
    key: str = ""


@pytest.fixture(scope="module")
def service(
    ray_session: None, receiver: Receiver, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    directory: Path = tmp_path_factory.mktemp("tracing")
    settings = service_settings(
        f"sqlite:///{directory / 'api.db'}",
        SECRET,
        redis_url=None,
        executor_max_queued_requests=8,
        otel_exporter_otlp_endpoint=receiver.endpoint,
    )
    # The session's Ray started before this module: its workers never saw these variables.
    # The ingress reads the endpoint from its settings, the executors from their environment.
    quick = {
        "OTEL_BSP_SCHEDULE_DELAY": "200",  # milliseconds between exports (default 5 s)
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }
    executor_env = {"env_vars": {**tracing_environment(settings), **quick}}
    with deployed_service(
        settings,
        APP_NAME,
        executor_runtime_env=executor_env,
        ingress_runtime_env={"env_vars": quick},
    ) as database:
        deployed = Service(database, settings)
        deployed.key = deployed.new_key("tracing")
        yield deployed


@pytest.fixture
def client(service: Service) -> Iterator[httpx.Client]:
    with service.client(headers=auth(service.key)) as http:
        yield http


def spans_of(collected: list[tuple[dict[str, Any], ProtoSpan]], trace_id: bytes) -> list[Any]:
    return [(resource, span) for resource, span in collected if span.trace_id == trace_id]


def server_span(receiver: Receiver, name: str, request_id: str) -> tuple[dict[str, Any], Any]:
    def wanted(collected: list[tuple[dict[str, Any], ProtoSpan]]) -> list[Any]:
        return [
            (resource, span)
            for resource, span in collected
            if span.name == name
            and attributes(span.attributes).get("exec_agent.request_id") == request_id
        ]

    (found,) = receiver.wait_for(wanted)
    return found


def children(receiver: Receiver, parent: ProtoSpan, name: str, count: int) -> list[Any]:
    def wanted(collected: list[tuple[dict[str, Any], ProtoSpan]]) -> list[Any]:
        found = [
            (resource, span)
            for resource, span in spans_of(collected, parent.trace_id)
            if span.name == name and span.parent_span_id == parent.span_id
        ]
        return found if len(found) >= count else []

    found = receiver.wait_for(wanted)
    assert len(found) == count
    return found


def assert_no_marker(receiver: Receiver) -> None:
    with receiver.lock:
        raw = b"".join(receiver.raw)
    for marker in MARKERS:
        assert marker.encode() not in raw, marker
    for _, span in receiver.collected():
        assert not any(marker in text for text in strings_of(span) for marker in MARKERS)


@pytest.mark.ray
@pytest.mark.sandbox
def test_one_trace_from_the_ingress_to_the_sandbox(
    service: Service, client: httpx.Client, receiver: Receiver
) -> None:
    request_id = f"trace-{uuid.uuid4().hex[:12]}"
    response = client.post(
        "/v1/executions",
        json={"code": PROGRAM, "stdin": STDIN_MARKER},
        headers={"X-Request-ID": request_id},
    )
    assert response.status_code == 200
    assert response.headers["x-request-id"] == request_id
    record = response.json()
    assert record["status"] == "ok"
    assert OUTPUT_MARKER in record["stdout"] and OUTPUT_MARKER in record["stderr"]

    ingress_resource, server = server_span(receiver, "POST /v1/executions", request_id)
    ((call_resource, call),) = children(receiver, server, "executor.run", 1)
    ((sandbox_resource, sandbox),) = children(receiver, call, "sandbox.run", 1)

    # One trace, each span the child of the one before, from the ingress to the executor; no
    # other span in it (FastAPI's own telemetry stays off).
    assert server.trace_id == call.trace_id == sandbox.trace_id
    in_trace = spans_of(receiver.collected(), server.trace_id)
    assert sorted(span.name for _, span in in_trace) == [
        "POST /v1/executions",
        "executor.run",
        "sandbox.run",
    ]
    assert not [span.name for _, span in receiver.collected() if span.name.startswith("fastapi")]
    assert server.parent_span_id == b""
    assert call.parent_span_id == server.span_id
    assert sandbox.parent_span_id == call.span_id
    assert server.kind == ProtoSpan.SPAN_KIND_SERVER
    assert call.kind == ProtoSpan.SPAN_KIND_CLIENT
    assert sandbox.kind == ProtoSpan.SPAN_KIND_SERVER
    assert ingress_resource == call_resource
    assert ingress_resource["service.name"] == "exec-agent"
    assert ingress_resource["component"] == "ingress"
    assert (sandbox_resource["service.name"], sandbox_resource["component"]) == (
        "exec-agent",
        "executor",
    )

    assert attributes(server.attributes) == {
        "http.method": "POST",
        "http.route": "/v1/executions",
        "http.status_code": 200,
        "exec_agent.request_id": request_id,
    }
    assert attributes(call.attributes) == {
        "exec_agent.execution_id": record["id"],
        "exec_agent.attempt": 1,
        "exec_agent.request_id": request_id,
        "exec_agent.status": "ok",
    }
    run = attributes(sandbox.attributes)
    assert run["exec_agent.request_id"] == request_id
    assert run["exec_agent.execution_id"] == record["id"]
    assert (run["exec_agent.status"], run["exec_agent.exit_code"]) == ("ok", 0)
    assert run["exec_agent.wall_time_s"] == pytest.approx(record["wall_time_s"])
    assert run["exec_agent.cpu_time_s"] == pytest.approx(record["cpu_time_s"])
    assert run["exec_agent.peak_memory_bytes"] == record["peak_memory_bytes"]
    assert 0 <= run["exec_agent.queue_wait_s"] < 30
    assert set(run) == {
        "exec_agent.request_id",
        "exec_agent.execution_id",
        "exec_agent.status",
        "exec_agent.exit_code",
        "exec_agent.wall_time_s",
        "exec_agent.cpu_time_s",
        "exec_agent.peak_memory_bytes",
        "exec_agent.queue_wait_s",
    }
    for span in (server, call, sandbox):
        assert not span.events
        assert span.status.code != span.status.STATUS_CODE_ERROR
    assert_no_marker(receiver)


@pytest.mark.ray
@pytest.mark.sandbox
def test_background_runs_and_batch_items_are_traced_too(
    service: Service, client: httpx.Client, receiver: Receiver
) -> None:
    request_id = f"bg-{uuid.uuid4().hex[:12]}"
    queued = client.post(
        "/v1/executions",
        json={"code": PROGRAM, "stdin": STDIN_MARKER, "wait": False},
        headers={"X-Request-ID": request_id},
    )
    assert queued.status_code == 202
    done = client.get(f"/v1/executions/{queued.json()['id']}?wait_s=30").json()
    assert done["status"] == "ok"
    _, server = server_span(receiver, "POST /v1/executions", request_id)
    assert attributes(server.attributes)["http.status_code"] == 202
    ((_, call),) = children(receiver, server, "executor.run", 1)
    assert attributes(call.attributes)["exec_agent.execution_id"] == done["id"]
    ((_, sandbox),) = children(receiver, call, "sandbox.run", 1)
    assert attributes(sandbox.attributes)["exec_agent.status"] == "ok"

    batch_id = f"batch-{uuid.uuid4().hex[:12]}"
    items = [{"code": PROGRAM, "stdin": STDIN_MARKER}, {"code": "raise SystemExit(3)"}]
    created = client.post("/v1/batches", json={"items": items}, headers={"X-Request-ID": batch_id})
    assert created.status_code == 202
    batch = client.get(f"/v1/batches/{created.json()['id']}?wait_s=30").json()
    assert batch["status"] == "done"
    _, batch_server = server_span(receiver, "POST /v1/batches", batch_id)
    # Both items went to the executors in one call (a chunk): one span, runs counted.
    ((_, call),) = children(receiver, batch_server, "executor.run", 1)
    assert attributes(call.attributes)["exec_agent.batch_runs"] == 2
    assert attributes(call.attributes)["exec_agent.execution_id"] in {
        item["id"] for item in batch["items"]
    }
    sandboxes = children(receiver, call, "sandbox.run", 2)
    ran = {}
    for _, sandbox in sandboxes:
        ran_as = attributes(sandbox.attributes)
        ran[ran_as["exec_agent.execution_id"]] = ran_as["exec_agent.status"]
    assert ran == {item["id"]: item["status"] for item in batch["items"]}
    assert set(ran.values()) == {"ok", "nonzero_exit"}
    for _, sandbox in sandboxes:
        assert attributes(sandbox.attributes)["exec_agent.request_id"] == batch_id
    # The GETs that waited on them are traced by their route template, never their ids.
    assert receiver.wait_for(
        lambda collected: [s for _, s in collected if s.name == "GET /v1/batches/{batch_id}"]
    )
    assert_no_marker(receiver)
