"""``GET /openapi.json`` and ``GET /docs`` (API.md, "Interface description"), without Ray.

The app is the real one (:func:`build_api` over a real :class:`ExecutionService` on SQLite; no
executor: nothing here runs a program), called in-process. The document is checked against the
contract itself: every route line of ``tests/data/API.md`` (a copy of the contract) is an
operation, every row of its Errors table is a code some operation documents for that status,
and the schemas are the code's own models. ``tests/test_openapi_fuzz.py`` checks the document
against a running server's answers.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from jsonschema import Draft202012Validator

from executors import ExecutionRecord, check_files
from serve_app.api import ExecutionCreate, SessionCall, SessionCreate, SessionInfo
from serve_app.db import Database, keys
from serve_app.errors import ServiceError
from serve_app.files import decode_base64
from serve_app.http import ExecutionService, build_api
from serve_app.ratelimit import build_rate_limiter
from serve_app.web import STATIC_DIR
from tests.support.api import auth
from tests.support.asgi import call
from tests.support.settings import migrated_sqlite_settings

CONTRACT = Path(__file__).parent / "data" / "API.md"
ROUTE_LINE = re.compile(r"`(GET|POST|PUT|PATCH|DELETE) (/[^`\s?]*)")
ERROR_ROW = re.compile(r"^\| (\d{3}) \| (.+?) \|", re.MULTILINE)
KEY_IN_PATH = {
    ("post", "/compat/sandbox-fusion/k/{}/run_code"),
    ("post", "/compat/sandbox-fusion/k/{}/run_jupyter"),
}
"""The SandboxFusion routes with the key as a path segment: API.md names them by path alone
(``/compat/sandbox-fusion/k/{api_key}/run_code``), beside the routes they mirror."""
SCHEMAS = "#/components/schemas/"


@dataclass
class App:
    api: Any
    key: str
    database: Database
    service: ExecutionService

    def get(self, url: str, **options: Any) -> httpx.Response:
        return call(self.api, "GET", url, **options)


def _app(directory: Path, **overrides: Any) -> App:
    settings = migrated_sqlite_settings(directory, **overrides)
    database = Database.from_settings(settings)
    service = ExecutionService(settings, database, build_rate_limiter(settings), None)
    with database.session() as session:
        key = keys.create_key(session, settings.api_key_secret, "docs").plaintext
    return App(build_api(settings, service), key, database, service)


@pytest.fixture
def app(tmp_path: Path) -> Iterator[App]:
    under_test = _app(tmp_path, max_batch_items=7, max_wall_timeout_s=12.5)
    yield under_test
    asyncio.run(under_test.service.aclose(5.0))
    under_test.database.dispose()


@pytest.fixture
def document(app: App) -> dict[str, Any]:
    answer = app.get("/openapi.json")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/json"
    body: dict[str, Any] = answer.json()
    return body


def _template(path: str) -> str:
    """A path with its parameters unnamed: ``/v1/sessions/{id}`` is ``/v1/sessions/{}``."""
    return re.sub(r"\{[^}]*\}", "{}", path)


def _contract_routes() -> set[tuple[str, str]]:
    return {
        (method.lower(), _template(path))
        for method, path in ROUTE_LINE.findall(CONTRACT.read_text())
    }


def _contract_errors() -> set[tuple[int, str]]:
    table = CONTRACT.read_text().split("## Errors", 1)[1]
    return {
        (int(status), code)
        for status, codes in ERROR_ROW.findall(table)
        for code in re.findall(r"`([a-z_]+)`", codes)
    }


def _operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            yield method, path, operation


def _documented_codes(answer: dict[str, Any]) -> list[str]:
    """The error codes an answer's JSON schema allows (``[]``: not an error answer)."""
    schema = answer.get("content", {}).get("application/json", {}).get("schema", {})
    if {"$ref": f"{SCHEMAS}ErrorBody"} not in schema.get("allOf", ()):
        return []
    codes: list[str] = schema["properties"]["error"]["properties"]["code"]["enum"]
    return codes


def _validator(document: dict[str, Any], schema: dict[str, Any]) -> Draft202012Validator:
    """A validator of ``schema``, its references resolved in ``document``'s components."""
    return Draft202012Validator({**schema, "components": document["components"]})


def test_every_route_of_the_contract_is_documented(document: dict[str, Any]) -> None:
    contract = _contract_routes()
    assert ("get", "/v1/ws") in contract and ("delete", "/v1/sessions/{}") in contract
    documented = {(method, _template(path)) for method, path, _ in _operations(document)}
    assert contract <= documented, contract - documented
    assert ("post", "/compat/sandbox-fusion/run_jupyter") in contract
    assert "`/compat/sandbox-fusion/k/{api_key}/run_code`" in CONTRACT.read_text()
    # Nothing documented that the contract does not name.
    assert documented <= contract | KEY_IN_PATH, documented - contract - KEY_IN_PATH


def test_every_error_of_the_contract_is_documented(document: dict[str, Any]) -> None:
    contract = _contract_errors()
    assert (503, "overloaded") in contract and (503, "unavailable") in contract
    assert len(contract) == 14
    documented: set[tuple[int, str]] = set()
    for _, _, operation in _operations(document):
        for status, answer in operation["responses"].items():
            documented |= {(int(status), code) for code in _documented_codes(answer)}
    assert contract <= documented, contract - documented
    # And no code the service does not have, under its own status.
    known = {(kind.http_status, kind.code) for kind in _service_errors()}
    assert documented <= known, documented - known


def _service_errors() -> Iterator[type[ServiceError]]:
    pending = [ServiceError]
    while pending:
        kind = pending.pop()
        pending.extend(kind.__subclasses__())
        yield kind


def test_each_operation_documents_its_own_errors(document: dict[str, Any]) -> None:
    paths = document["paths"]
    for method, path, operation in _operations(document):
        if not path.startswith("/v1/") or path == "/v1/ws":
            continue
        responses = operation["responses"]
        assert _documented_codes(responses["401"]) == ["unauthorized"], (method, path)
        assert "rate_limited" in _documented_codes(responses["429"]), (method, path)
        assert "Retry-After" in responses["429"]["headers"]
        assert "unavailable" in _documented_codes(responses["503"]), (method, path)
        assert "Retry-After" in responses["503"]["headers"]
        assert operation["security"] == [{"bearer": []}, {"apiKey": []}], (method, path)
        success = next(answer for status, answer in responses.items() if status.startswith("2"))
        assert {"RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"} <= set(
            success["headers"]
        )
        if method == "post":
            codes = {status: _documented_codes(answer) for status, answer in responses.items()}
            assert codes["400"] == ["invalid_json"] and codes["413"] == ["payload_too_large"]
            assert codes["415"] == ["unsupported_media_type"], (method, path)
            assert "invalid_request" in codes["422"], (method, path)
    call_ = paths["/v1/sessions/{session_id}/executions"]["post"]["responses"]
    assert _documented_codes(call_["409"]) == ["session_busy"]
    assert _documented_codes(call_["410"]) == ["session_terminated"]
    assert "session_limit" in _documented_codes(paths["/v1/sessions"]["post"]["responses"]["429"])
    run = paths["/v1/executions"]["post"]["responses"]
    assert set(_documented_codes(run["503"])) == {"overloaded", "unavailable"}
    assert set(_documented_codes(run["422"])) == {"invalid_request", "policy_violation"}
    for path in ("/v1/executions/{execution_id}", "/v1/batches/{batch_id}"):
        assert "not_found" in _documented_codes(paths[path]["get"]["responses"]["404"])
    # The framework's own 422 body is never documented: the API answers its own.
    assert "HTTPValidationError" not in document["components"]["schemas"]


def test_bodies_and_answers_are_the_codes_models(document: dict[str, Any]) -> None:
    paths, schemas = document["paths"], document["components"]["schemas"]

    def body_of(path: str) -> dict[str, Any]:
        body: dict[str, Any] = paths[path]["post"]["requestBody"]
        return body

    def model_of(answer: dict[str, Any], media_type: str = "application/json") -> str:
        ref: str = answer["content"][media_type]["schema"]["$ref"]
        return ref.removeprefix(SCHEMAS)

    bodies = {
        "/v1/executions": "ExecutionCreate",
        "/v1/batches": "BatchCreate",
        "/v1/sessions": "SessionCreate",
        "/v1/sessions/{session_id}/executions": "SessionCall",
    }
    for path, name in bodies.items():
        assert model_of(body_of(path)) == name
        assert schemas[name]["additionalProperties"] is False  # unknown fields: 422
    # Required exactly as a client must send them; what the server fills in is optional.
    assert body_of("/v1/executions")["required"] is True
    assert schemas["ExecutionCreate"]["required"] == ["code"]
    assert set(schemas["ExecutionCreate"]["properties"]) == set(ExecutionCreate.model_fields)
    assert schemas["ExecutionCreate"]["properties"]["runtime"]["enum"] == ["minimal", "scientific"]
    assert (
        body_of("/v1/sessions")["required"] is False and "required" not in schemas["SessionCreate"]
    )
    assert set(schemas["SessionCreate"]["properties"]) == set(SessionCreate.model_fields)
    assert set(schemas["SessionCall"]["properties"]) == set(SessionCall.model_fields)
    assert schemas["Base64File"]["required"] == ["base64"]
    # A file's path and base64 as the service checks them (executors.check_files, serve_app.files).
    names = schemas["ExecutionCreate"]["properties"]["files"]["propertyNames"]["pattern"]
    for path in ("a.txt", "dir/.hidden", "..x/y"):
        assert re.fullmatch(names, path) and check_files({path: ""})
    for path in ("", ".", "a/../b", "a//b", "/abs", "a/", "a\\b", "x\x01y"):
        assert not re.fullmatch(names, path), path
        with pytest.raises(ValueError):
            check_files({path: ""})
    encoded = schemas["Base64File"]["properties"]["base64"]["pattern"]
    for text in ("", "AP8=", "QUJD", "QQ=="):
        assert re.fullmatch(encoded, text) and decode_base64(text) is not None
    for text in ("AP9=", "QR==", "QUJ", "Q===", "QU JD"):
        assert not re.fullmatch(encoded, text), text
        with pytest.raises(ValueError):
            decode_base64(text)

    record = paths["/v1/executions/{execution_id}"]["get"]["responses"]["200"]
    assert model_of(record) == "ExecutionRecord"
    assert set(schemas["ExecutionRecord"]["properties"]) == set(ExecutionRecord.model_fields)
    assert set(schemas["SessionInfo"]["properties"]) == set(SessionInfo.model_fields)
    run = paths["/v1/executions"]["post"]["responses"]
    assert model_of(run["200"]) == model_of(run["202"]) == "ExecutionRecord"
    assert model_of(paths["/v1/sessions"]["post"]["responses"]["201"]) == "SessionInfo"
    assert model_of(paths["/v1/batches"]["post"]["responses"]["202"]) == "BatchAccepted"
    assert model_of(paths["/v1/batches/{batch_id}"]["get"]["responses"]["200"]) == "BatchAnswer"
    assert model_of(paths["/v1/executions"]["get"]["responses"]["200"]) == "ExecutionPage"
    assert "204" in paths["/v1/sessions/{session_id}"]["delete"]["responses"]
    error = schemas["ErrorInfo"]
    assert error["required"] == ["code", "message", "request_id"]
    assert set(error["properties"]) == {"code", "message", "request_id", "details"}


def test_headers_parameters_and_streams(document: dict[str, Any]) -> None:
    paths = document["paths"]
    run = paths["/v1/executions"]["post"]
    assert [(p["name"], p["in"]) for p in run["parameters"]] == [("Idempotency-Key", "header")]
    assert run["parameters"][0]["schema"]["maxLength"] == 255
    for path, status in (
        ("/v1/executions", "200"),
        ("/v1/executions", "202"),
        ("/v1/batches", "202"),
        ("/v1/sessions", "201"),
    ):
        assert "Location" in paths[path]["post"]["responses"][status]["headers"], (path, status)
    for path in ("/v1/executions", "/v1/sessions/{session_id}/executions"):
        content = paths[path]["post"]["responses"]["200"]["content"]
        assert set(content) == {"application/json", "text/event-stream"}, path
        events = content["text/event-stream"]["schema"]
        assert "event: record" in events["description"]
        data = {
            event["properties"]["event"]["enum"][0]: event["properties"]["data"]["contentSchema"]
            for event in events["oneOf"]
        }
        assert data == {
            "stdout": {"$ref": f"{SCHEMAS}StreamText"},
            "record": {"$ref": f"{SCHEMAS}ExecutionRecord"},
        }

    def parameters(path: str, method: str = "get") -> dict[str, dict[str, Any]]:
        return {p["name"]: p for p in paths[path][method].get("parameters", ())}

    for path in ("/v1/executions", "/v1/sessions"):
        page = parameters(path)
        assert page["limit"]["schema"]["minimum"] == 1 and page["limit"]["schema"]["maximum"] == 100
        assert page["cursor"]["in"] == "query"
    for path in ("/v1/executions/{execution_id}", "/v1/batches/{batch_id}"):
        assert parameters(path)["wait_s"]["schema"]["maximum"] == 60
    ws = paths["/v1/ws"]["get"]
    assert "101" in ws["responses"] and parameters("/v1/ws")["Upgrade"]["in"] == "header"
    messages = ws["x-websocket-messages"]
    client = {ref["$ref"].removeprefix(SCHEMAS) for ref in messages["client"]["oneOf"]}
    assert client == {"AuthMessage", "RunMessage", "StdinMessage", "StdinEofMessage"}
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearer"] == {**schemes["bearer"], "type": "http", "scheme": "bearer"}
    assert schemes["apiKey"] == {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    assert paths["/health"]["get"].get("security") is None
    assert paths["/health/ready"]["get"]["security"][0] == {}  # a key is optional there


def test_the_servers_maxima_are_in_the_document(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    assert schemas["BatchCreate"]["properties"]["items"]["maxItems"] == 7  # MAX_BATCH_ITEMS
    wall = schemas["LimitsRequest"]["properties"]["wall_timeout_s"]["anyOf"][0]
    assert wall["maximum"] == 12.5 and wall["exclusiveMinimum"] == 0


def test_the_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    assert document["openapi"].startswith("3.1.")
    schemathesis.openapi.from_dict(document).validate()
    for schema in document["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)


def test_answers_match_the_documented_schemas(app: App, document: dict[str, Any]) -> None:
    """The app's own answers, errors included, validate against what the document says."""
    paths = document["paths"]

    def check(answer: httpx.Response, operation: dict[str, Any]) -> None:
        documented = operation["responses"][str(answer.status_code)]
        schema = documented["content"]["application/json"]["schema"]
        _validator(document, schema).validate(answer.json())

    runs = paths["/v1/executions"]["post"]
    check(call(app.api, "POST", "/v1/executions", json={"code": "1"}), runs)  # no key: 401
    invalid = call(app.api, "POST", "/v1/executions", json={"code": 1}, headers=auth(app.key))
    assert invalid.status_code == 422 and invalid.json()["error"]["details"]
    check(invalid, runs)
    foreign = call(app.api, "POST", "/v1/executions", content=b"x", headers=auth(app.key))
    assert foreign.status_code == 415
    check(foreign, runs)
    unknown = app.get("/v1/executions/nope", headers=auth(app.key))
    check(unknown, paths["/v1/executions/{execution_id}"]["get"])
    page = app.get("/v1/executions", headers=auth(app.key))
    check(page, paths["/v1/executions"]["get"])
    sessions = app.get("/v1/sessions?limit=0", headers=auth(app.key))
    assert sessions.status_code == 422
    check(sessions, paths["/v1/sessions"]["get"])
    check(app.get("/health"), paths["/health"]["get"])
    # The document holds no code that fails its own error schema.
    bad = {"error": {"code": "teapot", "message": "m", "request_id": "r"}}
    with pytest.raises(Exception, match="teapot"):
        _validator(
            document, runs["responses"]["422"]["content"]["application/json"]["schema"]
        ).validate(bad)


def test_a_405_allows_every_documented_method_of_its_path(
    app: App, document: dict[str, Any]
) -> None:
    """``Allow`` lists every method the path takes (each is a route of its own: the router
    alone named the first one it met)."""
    for path, item in document["paths"].items():
        if path == "/v1/ws":
            continue
        url = re.sub(r"\{[^}]*\}", "x", path)
        answer = call(app.api, "PATCH", url, headers=auth(app.key))
        assert answer.status_code == 405, (path, answer.text)
        assert answer.json()["error"]["code"] == "method_not_allowed"
        allowed = {method.strip().lower() for method in answer.headers["allow"].split(",")}
        assert allowed == set(item), (path, answer.headers["allow"])


class _Resources(HTMLParser):
    """Every ``src`` and ``href`` of a page, and the text of its script elements."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline_scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value or "" for name, value in attrs if name in ("src", "href")]
        self._in_script = tag == "script"
        assert not any(name.startswith("on") for name, _ in attrs), attrs  # no inline handler

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline_scripts.append(data)


def _csp(header: str) -> dict[str, list[str]]:
    return {
        directive.split()[0]: directive.split()[1:]
        for directive in header.split(";")
        if directive.strip()
    }


def test_docs_page_loads_only_its_own_files_under_a_strict_policy(app: App) -> None:
    page = app.get("/docs")
    assert page.status_code == 200, page.text
    assert page.headers["content-type"].startswith("text/html")
    parser = _Resources()
    parser.feed(page.text)
    assert parser.inline_scripts == []
    assert "static/docs.js" in parser.urls
    assert "static/vendor/swagger-ui-dist/swagger-ui-bundle.js" in parser.urls
    for url in parser.urls:
        # Same origin: a relative path, never a scheme or a host.
        assert re.fullmatch(r"[a-z][a-z0-9_./-]*", url), url
        assert app.get(f"/{url}").status_code == 200, url
        assert (STATIC_DIR / url.removeprefix("static/")).is_file(), url
    script = (STATIC_DIR / "docs.js").read_text()
    assert not re.search(r"https?:|//[a-z]", script.replace("// ", "")), "a remote address"
    assert "validatorUrl: null" in script  # no document sent to validator.swagger.io
    policy = _csp(page.headers["content-security-policy"])
    assert policy["default-src"] == ["'none'"]
    assert policy["script-src"] == ["'self'"]
    assert policy["style-src"] == ["'self'"]
    assert policy["connect-src"] == ["'self'"]
    assert policy["img-src"] == ["'self'", "data:"]
    assert policy["frame-ancestors"] == ["'none'"]
    assert all(
        source in ("'self'", "'none'", "data:") for sources in policy.values() for source in sources
    ), policy
    assert page.headers["x-content-type-options"] == "nosniff"
    # The document and the page need no key.
    assert app.get("/openapi.json").status_code == 200


def test_docs_without_the_vendored_files_say_how_to_get_them(
    app: App, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import serve_app.web

    monkeypatch.setattr(serve_app.web, "VENDOR_DIR", tmp_path / "no-vendor")
    page = app.get("/docs")
    assert page.status_code == 503
    error = page.json()["error"]
    assert error["code"] == "unavailable" and "scripts/vendor-web-assets" in error["message"]
    assert app.get("/openapi.json").status_code == 200


def test_api_docs_false_turns_both_off(tmp_path: Path) -> None:
    off = _app(tmp_path, api_docs=False, playground=False)
    try:
        for path in ("/openapi.json", "/docs"):
            answer = off.get(path)
            assert answer.status_code == 404, path
            assert answer.json()["error"]["code"] == "not_found"
            assert answer.headers["content-type"] == "application/json"
        assert off.get("/static/vendor/swagger-ui-dist/swagger-ui.css").status_code == 404
        assert off.get("/health").status_code == 200
    finally:
        asyncio.run(off.service.aclose(5.0))
        off.database.dispose()
