"""Runtimes and artifacts through the real app, without Ray: ``GET /v1/runtimes``, the runtime
and artifacts of records, and ``GET /v1/executions/{id}/artifacts/{path}``.

The app is the real one (:func:`build_api` over a real :class:`ExecutionService`: SQLite, the
in-process limiter) served in-process through httpx's ASGI transport. The executor handle is a
stand-in that answers each run with the artifacts a hostile program could leave (names with
quotes, CR LF, non-ASCII, an HTML page), so that the download's headers are tested against
names the engine passes on as they are; ``tests/test_http_api.py`` runs the same endpoints
against the real engine.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from executors import ExecutionRecord, ExecutionRequest, ExecutionStatus
from serve_app.db import Database, keys
from serve_app.http import ExecutionService, build_api
from serve_app.ratelimit import build_rate_limiter
from serve_app.settings import Settings
from tests.support.api import RECORD_FIELDS, auth, error_code
from tests.support.settings import migrated_sqlite_settings
from tests.support.stand_ins import RunsStandIn

FILES: dict[str, bytes] = {
    "out/plot.png": b"\x89PNG\r\n\x1a\n\x00\xff",
    'out/report "final".csv': b"a,b\n1,2\n",
    "out/a\r\nSet-Cookie: stolen=1.txt": b"header injection?",
    "out/é 😀.txt": "é\n".encode(),
    "out/page.html": b"<script>alert(document.cookie)</script>",
    "out/sub/dir/data.bin": bytes(range(256)),
}
MEDIA_TYPES = {
    "out/plot.png": "image/png",
    "out/page.html": "text/html",
    "out/sub/dir/data.bin": "text/html\r\nX-Injected: 1",  # never a header of its own
}


class LeavesArtifacts(RunsStandIn):
    """Answers every run ``ok`` with :data:`FILES` as its artifacts; keeps the requests."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[ExecutionRequest] = []

    async def answer(self, request: ExecutionRequest) -> dict[str, Any]:
        self.requests.append(request)
        artifacts = [
            {
                "path": path,
                "size_bytes": len(content),
                "media_type": MEDIA_TYPES.get(path, "text/plain"),
                "base64": base64.b64encode(content).decode(),
            }
            for path, content in sorted(FILES.items())
        ]
        record = ExecutionRecord(
            status=ExecutionStatus.OK,
            exit_code=0,
            limits=request.limits.to_api(),
            runtime=request.runtime,
            artifacts=artifacts,  # type: ignore[arg-type]  # validated from their API form
            artifacts_truncated=True,
        )
        return record.to_api()


class App:
    """The app, its service and the stand-in executor; two keys."""

    def __init__(self, settings: Settings) -> None:
        self.database = Database.from_settings(settings)
        self.executor = LeavesArtifacts()
        self.service = ExecutionService(
            settings, self.database, build_rate_limiter(settings), self.executor
        )
        self.api = build_api(settings, self.service)
        with self.database.session() as session:
            secret = settings.api_key_secret
            self.key = keys.create_key(session, secret, "main").plaintext
            self.other_key = keys.create_key(session, secret, "other").plaintext

    def call(self, method: str, url: str, key: str | None = None, **options: Any) -> httpx.Response:
        headers = auth(key or self.key) if key != "" else {}

        async def request() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.api)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                return await client.request(method, url, headers=headers, **options)

        return asyncio.run(request())


@pytest.fixture
def app(tmp_path: Path) -> Iterator[App]:
    under_test = App(migrated_sqlite_settings(tmp_path, default_runtime="minimal"))
    yield under_test
    asyncio.run(under_test.service.aclose(5.0))
    under_test.database.dispose()


def run(app: App, **body: Any) -> dict[str, Any]:
    response = app.call("POST", "/v1/executions", json={"code": "pass", **body})
    assert response.status_code == 200, response.text
    record: dict[str, Any] = response.json()
    return record


# --- runtimes


def test_runtimes_are_listed_with_the_default_flagged(app: App) -> None:
    response = app.call("GET", "/v1/runtimes")
    assert response.status_code == 200
    assert response.headers["ratelimit-limit"].isdigit()  # a /v1 route like the others
    items = response.json()["items"]
    assert [item["name"] for item in items] == ["minimal", "scientific"]
    assert [item["default"] for item in items] == [True, False]  # DEFAULT_RUNTIME=minimal
    for item in items:
        assert set(item) == {"name", "python_version", "packages", "preloaded", "default"}
    assert app.call("GET", "/v1/runtimes", key="").status_code == 401
    assert error_code(app.call("GET", "/v1/runtimes", key="wrong")) == "unauthorized"


# --- records


def test_every_record_names_its_runtime_and_carries_its_artifacts(app: App) -> None:
    record = run(app)
    assert set(record) == RECORD_FIELDS
    assert record["runtime"] == "minimal"  # the settings' DEFAULT_RUNTIME, filled in
    assert run(app, runtime="scientific")["runtime"] == "scientific"
    assert [request.runtime for request in app.executor.requests] == ["minimal", "scientific"]
    assert [item["path"] for item in record["artifacts"]] == sorted(FILES)
    assert record["artifacts_truncated"] is True
    # Stored as answered, read back alike, listed alike.
    again = app.call("GET", f"/v1/executions/{record['id']}")
    assert again.json() == record
    listed = app.call("GET", "/v1/executions").json()["items"]
    assert listed[-1] == record


def test_binary_files_reach_the_engine_as_bytes(app: App) -> None:
    files = {"blob.bin": {"base64": "AP+A"}, "text.txt": "AP+A"}
    run(app, files=files)
    [request] = app.executor.requests
    assert request.files == {"blob.bin": b"\x00\xff\x80", "text.txt": "AP+A"}


# --- downloads


@pytest.mark.parametrize("path", sorted(FILES))
def test_an_artifact_downloads_as_an_inert_attachment(app: App, path: str) -> None:
    record = run(app)
    url = f"/v1/executions/{record['id']}/artifacts/{quote(path, safe='/')}"
    response = app.call("GET", url)
    assert response.status_code == 200, response.text
    assert response.content == FILES[path]
    headers = response.headers
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["content-security-policy"] == "sandbox"
    disposition = headers["content-disposition"]
    assert disposition.startswith('attachment; filename="')
    assert disposition.isascii() and "\r" not in disposition and "\n" not in disposition
    assert "set-cookie" not in headers and "x-injected" not in headers
    expected_type = MEDIA_TYPES.get(path, "text/plain")
    if "\n" in expected_type:
        expected_type = "application/octet-stream"
    assert headers["content-type"] == expected_type  # no charset added: the bytes are as left


def test_the_file_name_is_kept_exactly_but_only_percent_encoded(app: App) -> None:
    record = run(app)
    url = f"/v1/executions/{record['id']}/artifacts/out/%C3%A9%20%F0%9F%98%80.txt"
    disposition = app.call("GET", url).headers["content-disposition"]
    assert disposition == (
        "attachment; filename=\"___.txt\"; filename*=UTF-8''%C3%A9%20%F0%9F%98%80.txt"
    )
    url = f"/v1/executions/{record['id']}/artifacts/out/report%20%22final%22.csv"
    disposition = app.call("GET", url).headers["content-disposition"]
    assert disposition == (
        "attachment; filename=\"report__final_.csv\"; filename*=UTF-8''report%20%22final%22.csv"
    )


def test_the_out_prefix_may_be_left_out(app: App) -> None:
    record = run(app)
    response = app.call("GET", f"/v1/executions/{record['id']}/artifacts/sub/dir/data.bin")
    assert response.content == FILES["out/sub/dir/data.bin"]


@pytest.mark.parametrize("path", ["out/absent.txt", "out", "out/sub", "plot", "x/out/plot.png"])
def test_an_unknown_path_is_404(app: App, path: str) -> None:
    record = run(app)
    response = app.call("GET", f"/v1/executions/{record['id']}/artifacts/{path}")
    assert (response.status_code, error_code(response)) == (404, "not_found")


def test_another_keys_execution_and_unknown_ids_are_404(app: App) -> None:
    record = run(app)
    url = f"/v1/executions/{record['id']}/artifacts/out/plot.png"
    response = app.call("GET", url, key=app.other_key)
    assert (response.status_code, error_code(response)) == (404, "not_found")
    assert response.json()["error"]["message"] == "no such execution"  # nothing told apart
    for execution_id in ("00000000-0000-0000-0000-000000000000", "not-a-uuid"):
        response = app.call("GET", f"/v1/executions/{execution_id}/artifacts/out/plot.png")
        assert (response.status_code, error_code(response)) == (404, "not_found")
    assert app.call("GET", url, key="").status_code == 401
