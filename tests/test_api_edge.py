"""The HTTP edge without Ray or a database: schemas, body parsing, errors, middleware.

A tiny FastAPI app mounts the edge (``install_edge``) and a few routes that parse and echo
bodies or raise the service's errors; httpx drives it through ``ASGITransport``. The HTTP
entries of tests/data/security_corpus.json that concern input are applied to the API's routes.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, MutableMapping
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI, Query, Request

from executors import PoolClosedError
from serve_app.api import (
    MAX_CASES,
    BatchCreate,
    ExecutionCreate,
    RequestBounds,
    RequestIdLogFilter,
    body_parser,
    current_request_id,
    install_edge,
    read_model,
    validate_body,
)
from serve_app.api.middleware import SECURITY_HEADERS, SaneRequestIdMiddleware
from serve_app.errors import (
    ConfigurationError,
    ConflictError,
    DatabaseNotReadyError,
    InvalidRequestError,
    NotFoundError,
    OverloadedError,
    PayloadTooLargeError,
    PolicyViolationError,
    RateLimitedError,
    UnauthorizedError,
    UnavailableError,
)
from serve_app.ratelimit import StoreUnavailableError
from serve_app.settings import Settings
from tests.support.asgi import call
from tests.support.limits import API_LIMIT_FIELDS

KIB = 1024
MAX_BODY = 256 * KIB
MAX_CODE = 128 * KIB
MAX_ITEMS = 5
JSON = {"Content-Type": "application/json"}
ORIGIN = "https://app.example"
SECRET_DSN = "postgresql://exec:hunter2@10.9.8.7:5432/exec_agent"

BatchBody = Annotated[BatchCreate, Depends(body_parser(BatchCreate))]  # the app's bounds

RAISED: dict[str, Callable[[], Exception]] = {
    "unauthorized": lambda: UnauthorizedError("missing API key"),
    "not_found": lambda: NotFoundError("no such execution"),
    "conflict": lambda: ConflictError("Idempotency-Key reused with another body"),
    "policy": lambda: PolicyViolationError("import of 'socket' is not allowed", ["socket"]),
    "invalid": lambda: InvalidRequestError("over the server maximum: wall_timeout_s"),
    "rate_limited": lambda: RateLimitedError(2.2),
    "overloaded": lambda: OverloadedError(0.2),
    "unavailable": lambda: UnavailableError(5),
    "store_down": lambda: StoreUnavailableError(0.5),
    "db_not_ready": lambda: DatabaseNotReadyError(f"{SECRET_DSN} is not at head"),
    "pool_closed": lambda: PoolClosedError("pool closed"),
    "config": lambda: ConfigurationError(f"invalid DATABASE_URL {SECRET_DSN}"),
    "bug": lambda: RuntimeError(f"connection to {SECRET_DSN} failed"),
}


# --------------------------------------------------------------------------- the test app


def make_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "max_body_bytes": MAX_BODY,
        "max_code_bytes": MAX_CODE,
        "max_batch_items": MAX_ITEMS,
        "cors_origins": [],
    }
    return Settings(**{**values, **overrides})


class EdgeApp:
    """A FastAPI app with the edge installed; ``calls`` records each run of the POST route."""

    def __init__(self, settings: Settings) -> None:
        self.calls: list[str | None] = []
        self.app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
        install_edge(self.app, settings)
        self._routes(RequestBounds.from_settings(settings))

    def _routes(self, bounds: RequestBounds) -> None:
        app, calls = self.app, self.calls

        @app.post("/v1/executions")
        async def create_execution(request: Request) -> dict[str, Any]:
            calls.append(current_request_id())
            body = await read_model(request, ExecutionCreate, bounds)
            return body.model_dump()

        @app.post("/v1/batches")
        async def create_batch(body: BatchBody) -> dict[str, Any]:
            return {"total": len(body.items)}

        @app.post("/v1/swallow")
        async def swallow(request: Request) -> dict[str, str]:
            # A route that hides the guard's refusal must not change the answer.
            try:
                await read_model(request, ExecutionCreate, bounds)
            except PayloadTooLargeError:
                return {"status": "swallowed"}
            return {"status": "read"}

        @app.get("/v1/executions/{execution_id}")
        async def get_execution(
            execution_id: uuid.UUID, wait_s: Annotated[int, Query(ge=0, le=60)] = 0
        ) -> dict[str, Any]:
            return {"id": str(execution_id), "wait_s": wait_s}

        @app.get("/v1/raise/{name}")
        async def raise_error(name: str) -> None:
            raise RAISED[name]()

        @app.get("/health")
        async def health() -> dict[str, str]:
            return {"status": "ok"}


@pytest.fixture(scope="module")
def edge() -> EdgeApp:
    return EdgeApp(make_settings())


@pytest.fixture(autouse=True)
def _fresh_calls(edge: EdgeApp) -> Iterator[None]:
    edge.calls.clear()
    yield


def post(
    edge: EdgeApp,
    body: Any = None,
    *,
    raw: bytes | str | None = None,
    path: str = "/v1/executions",
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    content = raw if raw is not None else json.dumps(body)
    return call(edge.app, "POST", path, content=content, headers={**JSON, **(headers or {})})


class CountingBody:
    """A request body that records how much of it the server pulled."""

    def __init__(self, chunk: bytes, count: int) -> None:
        self.chunk, self.count, self.pulled = chunk, count, 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for _ in range(self.count):
            self.pulled += 1
            yield self.chunk


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The API's error format, the request id in body and header, no leak, the headers."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    assert error["request_id"] == response.headers["x-request-id"]
    for leak in ("Traceback", "hunter2", "10.9.8.7", "postgresql", 'File "'):
        assert leak not in response.text
    assert_security_headers(response)
    return error


def assert_security_headers(response: httpx.Response) -> None:
    for name, value in SECURITY_HEADERS:
        assert response.headers[name.decode()] == value.decode()


def fields(error: dict[str, Any]) -> list[str]:
    return [detail["field"] for detail in error.get("details", [])]


# --------------------------------------------------------------------------- valid bodies


def test_minimal_execution_gets_the_documented_defaults(edge: EdgeApp) -> None:
    response = post(edge, {"code": "print(1)"})
    assert response.status_code == 200, response.text
    assert response.json() == {
        "code": "print(1)",
        "stdin": "",
        "files": {},
        "runtime": "scientific",  # DEFAULT_RUNTIME, filled in
        "limits": dict.fromkeys(API_LIMIT_FIELDS),
        "cache": False,
        "test_code": None,
        "judge": "isolated",
        "cases": None,
        "wait": True,
    }


def test_full_execution_request_round_trips(edge: EdgeApp) -> None:
    body = {
        "code": "print(input()[::-1])  # é ✓ 😀",
        "stdin": "abc\n",
        "files": {"data/in.txt": "1 2 3\n", "notes.md": "é", "blob.bin": {"base64": "AP+A"}},
        "runtime": "minimal",
        "limits": {
            "wall_timeout_s": 2.5,
            "cpu_time_s": 2,
            "memory_mb": 128,
            "max_output_bytes": 4096,
            "max_processes": 4,
            "max_file_bytes": 1024,
        },
        "wait": False,
        "cache": True,
        "test_code": "assert True",
        "judge": "in_process",
        "cases": [{"stdin": "ab", "expected_stdout": "ba"}, {"expected_stdout": ""}],
    }
    response = post(edge, body)
    assert response.status_code == 200, response.text
    echoed = response.json()
    assert echoed["code"] == body["code"]
    assert echoed["limits"]["cpu_time_s"] == 2.0  # an integer is a valid number
    assert echoed["cases"] == [
        {"stdin": "ab", "expected_stdout": "ba"},
        {"stdin": "", "expected_stdout": ""},
    ]
    echoed_keys = ("stdin", "files", "runtime", "wait", "cache", "test_code", "judge")
    assert {key: echoed[key] for key in echoed_keys} == {key: body[key] for key in echoed_keys}


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "application/json; charset=utf-8", 'Application/JSON; Charset="UTF-8"'],
)
def test_json_media_types_accepted(edge: EdgeApp, content_type: str) -> None:
    response = post(edge, {"code": "x"}, headers={"Content-Type": content_type})
    assert response.status_code == 200, response.text


def test_large_body_is_parsed_off_the_event_loop(edge: EdgeApp) -> None:
    code = "x = 1\n" * (100 * KIB // 6)  # over OFFLOAD_BYTES, under MAX_CODE_BYTES
    response = post(edge, {"code": code})
    assert response.status_code == 200
    assert response.json()["code"] == code


def test_chunked_body_under_the_cap_is_read(edge: EdgeApp) -> None:
    raw = json.dumps({"code": "print(1)", "stdin": "y" * 20_000}).encode()
    chunks = [raw[i : i + 4096] for i in range(0, len(raw), 4096)]

    async def body() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    response = call(edge.app, "POST", "/v1/executions", content=body(), headers=JSON)
    assert response.status_code == 200, response.text
    assert response.json()["stdin"] == "y" * 20_000


# --------------------------------------------------------------------------- corpus: numbers


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e309", "-1e400"])
def test_nan_and_infinity_are_422_naming_the_field(edge: EdgeApp, literal: str) -> None:
    # http_nan_infinity_timeout, on the API's field.
    raw = '{"code": "import time; time.sleep(600)", "limits": {"wall_timeout_s": LIT}}'
    raw = raw.replace("LIT", literal)
    error = assert_error(post(edge, raw=raw), 422, "invalid_request")
    assert fields(error) == ["limits.wall_timeout_s"]
    assert edge.calls  # the route ran, and refused: nothing was executed


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e309"])
@pytest.mark.parametrize("where", ["timeout", "memory_mb", "code"])
def test_non_finite_numbers_anywhere_are_422(edge: EdgeApp, literal: str, where: str) -> None:
    # The corpus' own shape (a top-level "timeout") and fields of other types.
    body = {
        "timeout": '{"code": "x", "timeout": %s}',
        "memory_mb": '{"code": "x", "limits": {"memory_mb": %s}}',
        "code": '{"code": %s}',
    }[where]
    assert_error(post(edge, raw=body.replace("%s", literal)), 422, "invalid_request")


@pytest.mark.parametrize(
    "raw",
    [
        '{"code": "print(1)", "timeout": ' + "9" * 5000 + "}",
        '{"code": "print(1)", "limits": {"memory_mb": ' + "9" * 5000 + "}}",
        '{"code": "print(1)", "limits": {"memory_mb": -' + "9" * 4301 + "}}",
    ],
)
def test_integers_over_4300_digits_are_400(edge: EdgeApp, raw: str) -> None:
    # http_huge_integer_literal
    error = assert_error(post(edge, raw=raw), 400, "invalid_json")
    assert "digits" in error["message"]


def test_huge_but_parsable_numbers_are_422(edge: EdgeApp) -> None:
    huge = "9" * 4000  # under Python's 4300-digit limit: a valid int, but no valid limit
    raw = '{"code": "x", "limits": {"wall_timeout_s": HUGE}}'.replace("HUGE", huge)
    error = assert_error(post(edge, raw=raw), 422, "invalid_request")
    assert fields(error) == ["limits.wall_timeout_s"]  # too large to be a float
    raw = '{"code": "x", "limits": {"memory_mb": HUGE}}'.replace("HUGE", huge)
    error = assert_error(post(edge, raw=raw), 422, "invalid_request")
    assert fields(error) == ["limits"]  # an int, over the server maximum
    assert "memory_mb" in error["details"][0]["message"]


# --------------------------------------------------------------------------- corpus: bytes


@pytest.mark.parametrize(
    "raw",
    [
        b'{"code": "print(1)"',  # http_malformed_json
        b'{"code": "print(1)"} trailing',
        b"{'code': 'print(1)'}",
        b'{"code": "print(1)",}',
        b"",
        b"  \n ",
    ],
)
def test_malformed_json_is_400_with_the_error_format(edge: EdgeApp, raw: bytes) -> None:
    error = assert_error(post(edge, raw=raw), 400, "invalid_json")
    assert "details" not in error


@pytest.mark.parametrize(
    "raw",
    [
        b'{"code": "\xff\xfe"}',  # http_invalid_utf8_and_bom
        b'{"code": "\xed\xa0\x80"}',  # a surrogate encoded as UTF-8 (CESU-8)
        b'{"code": "\xc0\xaf"}',  # an overlong encoding
        '{"code": "x"}'.encode("utf-16"),
    ],
)
def test_invalid_utf8_is_400(edge: EdgeApp, raw: bytes) -> None:
    error = assert_error(post(edge, raw=raw), 400, "invalid_json")
    assert "UTF-8" in error["message"]


def test_a_leading_bom_is_400(edge: EdgeApp) -> None:
    # The documented answer: RFC 8259 forbids sending a BOM; 400 every time, never accepted.
    error = assert_error(post(edge, raw=b'\xef\xbb\xbf{"code": "print(1)"}'), 400, "invalid_json")
    assert "byte order mark" in error["message"]


@pytest.mark.parametrize("depth", [65, 200, 50_000])
def test_deep_nesting_is_400(edge: EdgeApp, depth: int) -> None:
    raw = '{"code": "x", "stdin": ' + "[" * (depth - 1) + "]" * (depth - 1) + "}"
    error = assert_error(post(edge, raw=raw), 400, "invalid_json")
    assert "deeper than 64" in error["message"]


def test_nesting_at_the_bound_reaches_the_schema(edge: EdgeApp) -> None:
    raw = '{"code": "x", "stdin": ' + "[" * 63 + "]" * 63 + "}"
    error = assert_error(post(edge, raw=raw), 422, "invalid_request")
    assert fields(error) == ["stdin"]


# --------------------------------------------------------------------------- corpus: text


TEXT_FIELDS: dict[str, Callable[[str], dict[str, Any]]] = {
    "code": lambda text: {"code": text},
    "stdin": lambda text: {"code": "x", "stdin": text},
    "test_code": lambda text: {"code": "x", "test_code": text},
    "cases.0.stdin": lambda text: {"code": "x", "cases": [{"stdin": text, "expected_stdout": ""}]},
    "cases.0.expected_stdout": lambda text: {"code": "x", "cases": [{"expected_stdout": text}]},
    "files": lambda text: {"code": "x", "files": {"a.txt": text}},
}


@pytest.mark.parametrize("field", TEXT_FIELDS)
@pytest.mark.parametrize("bad", ["print(1)\x00", 'print("\ud800")', "\udc00 alone"])
def test_nul_and_lone_surrogates_are_422(edge: EdgeApp, field: str, bad: str) -> None:
    # http_nul_and_lone_surrogate_in_code, in every text field. json.dumps escapes them
    # (\u0000, \ud800): the body itself is valid UTF-8.
    error = assert_error(post(edge, TEXT_FIELDS[field](bad)), 422, "invalid_request")
    assert fields(error) == [field]


@pytest.mark.parametrize(
    "raw",
    [
        '{"code": "x", "\\ud800": 1}',  # an unknown field named by a lone surrogate
        '{"code": "x", "files": {"\\ud800": "y"}}',  # a file path
        '{"code": "x", "files": {"a\\u0000b": "y"}}',
        '{"code": "x", "\\ud800": 1, "\\ud800": 2}',  # a duplicate key
    ],
)
def test_bad_text_in_keys_is_422_and_the_answer_stays_valid_utf8(edge: EdgeApp, raw: str) -> None:
    response = post(edge, raw=raw)
    assert_error(response, 422, "invalid_request")
    response.content.decode("utf-8")  # strict: no surrogate reached the wire


# --------------------------------------------------------------------------- corpus: keys, types


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ('{"code": "print(\\"first\\")", "code": "print(\\"second\\")"}', "code"),  # the corpus
        ('{"code": "x", "limits": {"memory_mb": 64, "memory_mb": 64}}', "memory_mb"),
        ('{"code": "x", "files": {"a": "1", "a": "2"}}', "a"),
        ('{"items": [{"code": "x", "stdin": "", "stdin": "y"}]}', "stdin"),
    ],
)
def test_duplicate_keys_are_422(edge: EdgeApp, raw: str, field: str) -> None:
    # http_duplicate_keys: no last-wins, so the stored code is the code that runs.
    path = "/v1/batches" if raw.startswith('{"items"') else "/v1/executions"
    error = assert_error(post(edge, raw=raw, path=path), 422, "invalid_request")
    assert error["details"] == [
        {"field": field, "message": "duplicate key", "type": "duplicate_key"}
    ]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        # http_wrong_types, on the API's fields
        ({"code": 123}, "code"),
        ({"code": None}, "code"),
        ({"code": ["print(1)"]}, "code"),
        ({"code": "x", "limits": {"wall_timeout_s": "5"}}, "limits.wall_timeout_s"),
        ({"code": "x", "limits": {"wall_timeout_s": [5]}}, "limits.wall_timeout_s"),
        ({"code": "x", "limits": {"wall_timeout_s": True}}, "limits.wall_timeout_s"),
        ({"code": "x", "limits": {"memory_mb": 1.5}}, "limits.memory_mb"),
        ({"code": "x", "limits": {"memory_mb": 64.0}}, "limits.memory_mb"),
        ({"code": "x", "limits": {"memory_mb": "64"}}, "limits.memory_mb"),
        ({"code": "x", "limits": "fast"}, "limits"),
        ({"code": "x", "stdin": 5}, "stdin"),
        ({"code": "x", "wait": "true"}, "wait"),
        ({"code": "x", "wait": 1}, "wait"),
        ({"code": "x", "cache": None}, "cache"),
        ({"code": "x", "files": ["a.txt"]}, "files"),
        ({"code": "x", "files": {"a.txt": 1}}, "files.a.txt"),
        ({"code": "x", "test_code": 1}, "test_code"),
        ({"code": "x", "test_code": "pass", "judge": "outside"}, "judge"),
        ({"code": "x", "test_code": "pass", "judge": 1}, "judge"),
        ({"code": "x", "files": {"a": "", "a/b": ""}}, "files"),
        ({"code": "x", "files": {"dir/": "x"}}, "files"),
        ({"code": "x", "files": {"a/": ""}}, "files"),
        ({"code": "x", "files": {"a//b": ""}}, "files"),
        ({"code": "x", "cases": {"stdin": ""}}, "cases"),
        ({"code": "x", "cases": [{"stdin": ""}]}, "cases.0.expected_stdout"),
        ({"code": "x", "cases": ["1"]}, "cases.0"),
        ({}, "code"),
        ([], "(body)"),
        ("print(1)", "(body)"),
        (None, "(body)"),
    ],
)
def test_wrong_types_are_422_with_field_details(edge: EdgeApp, body: Any, field: str) -> None:
    error = assert_error(post(edge, body), 422, "invalid_request")
    assert field in fields(error)
    assert all(set(detail) == {"field", "message", "type"} for detail in error["details"])


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"code": "x", "timeout": 5}, "timeout"),
        ({"code": "x", "limits": {"memory_bytes": 1}}, "limits.memory_bytes"),
        ({"code": "x", "cases": [{"expected_stdout": "", "input": ""}]}, "cases.0.input"),
        ({"code": "x", "language": "python"}, "language"),
    ],
)
def test_unknown_fields_are_422(edge: EdgeApp, body: dict[str, Any], field: str) -> None:
    error = assert_error(post(edge, body), 422, "invalid_request")
    assert error["details"][0]["field"] == field
    assert error["details"][0]["type"] == "extra_forbidden"


def test_details_never_echo_huge_input(edge: EdgeApp) -> None:
    name = "A" * 100_000
    raw = f'{{"code": "x", "{name}": 1, "files": {{"/{name}": "y"}}}}'
    response = post(edge, raw=raw)
    error = assert_error(response, 422, "invalid_request")
    assert len(response.content) < 2_000
    assert all(len(detail["field"]) < 400 for detail in error["details"])
    many = {f"field_{i}_{'B' * 100}": i for i in range(1_000)}
    response = post(edge, {"code": "x", **many})
    assert len(assert_error(response, 422, "invalid_request")["details"]) == 20
    assert len(response.content) < 10_000


# --------------------------------------------------------------------------- limits, files, cases


@pytest.mark.parametrize(
    "limits",
    [
        {"wall_timeout_s": 31},
        {"cpu_time_s": 1e9},
        {"memory_mb": 513},
        {"max_output_bytes": 2**40},
        {"max_processes": 65},
        {"max_file_bytes": 2**40},
        {"wall_timeout_s": 0},
        {"memory_mb": -1},
        {"cpu_time_s": -0.5},
    ],
)
def test_limits_out_of_bounds_are_422(edge: EdgeApp, limits: dict[str, Any]) -> None:
    error = assert_error(post(edge, {"code": "x", "limits": limits}), 422, "invalid_request")
    assert fields(error)[0].startswith("limits")


def test_limits_at_the_maxima_are_accepted(edge: EdgeApp) -> None:
    limits = {"wall_timeout_s": 30, "cpu_time_s": 30.0, "memory_mb": 512, "max_processes": 64}
    assert post(edge, {"code": "x", "limits": limits}).status_code == 200


@pytest.mark.parametrize(
    "path", ["../x", "/etc/passwd", "a/../../b", "a/./b", "./x", "", "a\\b", "x/..", ".."]
)
def test_file_paths_must_be_relative_without_dotdot(edge: EdgeApp, path: str) -> None:
    error = assert_error(post(edge, {"code": "x", "files": {path: "y"}}), 422, "invalid_request")
    assert fields(error) == ["files"]


@pytest.mark.parametrize("path", ["out/x.csv", "out/a/b.png", "out"])
def test_files_under_out_are_422(edge: EdgeApp, path: str) -> None:
    # out/ starts empty in every run: what the program leaves there comes back as artifacts.
    error = assert_error(post(edge, {"code": "x", "files": {path: "y"}}), 422, "invalid_request")
    assert fields(error) == ["files"]
    assert post(edge, {"code": "x", "files": {"outside/x.csv": "y"}}).status_code == 200


def test_binary_files_are_decoded_strictly() -> None:
    bounds = RequestBounds.from_settings(make_settings())
    body = {"code": "x", "files": {"blob.bin": {"base64": "AP+A"}, "t.txt": "AP+A"}}
    parsed = validate_body(ExecutionCreate, body, bounds)
    assert parsed.files == {"blob.bin": b"\x00\xff\x80", "t.txt": "AP+A"}  # the engine's form
    assert parsed.model_dump(mode="json")["files"] == body["files"]  # the API's, as sent


@pytest.mark.parametrize(
    "content",
    [
        {"base64": "AP+"},  # padding missing
        {"base64": "AP+A="},  # after the padding
        {"base64": "AP-A"},  # the URL-safe alphabet
        {"base64": "AP+A\n"},  # a line break
        {"base64": "AP9="},  # stray bits: "AP8=" is the one encoding of these bytes
        {"base64": "é"},
        {"base64": 5},
        {"base64": None},
        {"base64": "AP+A", "name": "x"},
        {"data": "AP+A"},
        {},
        None,
        5,
        ["AP+A"],
    ],
)
def test_bad_binary_files_are_422(edge: EdgeApp, content: Any) -> None:
    body = {"code": "x", "files": {"blob.bin": content}}
    error = assert_error(post(edge, body), 422, "invalid_request")
    assert fields(error) == ["files.blob.bin"]
    batch = {"items": [{"code": "x"}, body]}
    error = assert_error(post(edge, batch, path="/v1/batches"), 422, "invalid_request")
    assert fields(error) == ["items.1.files.blob.bin"]


def test_a_binary_file_counts_against_the_body_cap(edge: EdgeApp) -> None:
    encoded = base64.b64encode(b"\x00" * (MAX_BODY * 3 // 4)).decode()
    body = {"code": "x", "files": {"blob.bin": {"base64": encoded}}}
    assert_error(post(edge, body), 413, "payload_too_large")


@pytest.mark.parametrize("runtime", ["minimal", "scientific"])
def test_a_known_runtime_is_kept(edge: EdgeApp, runtime: str) -> None:
    response = post(edge, {"code": "x", "runtime": runtime})
    assert (response.status_code, response.json()["runtime"]) == (200, runtime)


@pytest.mark.parametrize("runtime", ["nope", "", "Minimal", None, 1, ["minimal"], "x" * 100_000])
def test_an_unknown_runtime_is_422(edge: EdgeApp, runtime: Any) -> None:
    response = post(edge, {"code": "x", "runtime": runtime})
    error = assert_error(response, 422, "invalid_request")
    assert fields(error) == ["runtime"]
    assert len(response.content) < 2_000  # the name is not echoed
    batch = {"items": [{"code": "x", "runtime": "minimal"}, {"code": "x", "runtime": runtime}]}
    error = assert_error(post(edge, batch, path="/v1/batches"), 422, "invalid_request")
    assert fields(error) == ["items.1.runtime"]


def test_the_default_runtime_comes_from_the_settings() -> None:
    bounds = RequestBounds.from_settings(make_settings(default_runtime="minimal"))
    assert validate_body(ExecutionCreate, {"code": "x"}, bounds).runtime == "minimal"
    batch = validate_body(BatchCreate, {"items": [{"code": "x"}, {"code": "y"}]}, bounds)
    assert [item.runtime for item in batch.items] == ["minimal", "minimal"]


def test_at_most_100_files(edge: EdgeApp) -> None:
    files = {f"f{i}.txt": "" for i in range(101)}
    assert_error(post(edge, {"code": "x", "files": files}), 422, "invalid_request")
    files.pop("f0.txt")
    assert post(edge, {"code": "x", "files": files}).status_code == 200


def test_at_most_100_cases(edge: EdgeApp) -> None:
    cases = [{"stdin": str(i), "expected_stdout": str(i)} for i in range(MAX_CASES + 1)]
    error = assert_error(post(edge, {"code": "x", "cases": cases}), 422, "invalid_request")
    assert fields(error) == ["cases"]
    assert post(edge, {"code": "x", "cases": cases[:MAX_CASES]}).status_code == 200


def test_an_empty_case_list_is_422(edge: EdgeApp) -> None:
    # "all cases passed" must not be vacuously true.
    assert_error(post(edge, {"code": "x", "cases": []}), 422, "invalid_request")


@pytest.mark.parametrize("field", ["code", "test_code"])
def test_code_is_capped_in_utf8_bytes(edge: EdgeApp, field: str) -> None:
    fits = "é" * (MAX_CODE // 2)  # 2 bytes each: exactly the cap

    def send(text: str) -> httpx.Response:
        return post(edge, raw=json.dumps({"code": "x", field: text}, ensure_ascii=False).encode())

    assert send(fits).status_code == 200
    error = assert_error(send(fits + "a"), 422, "invalid_request")
    assert fields(error) == [field]
    assert str(MAX_CODE) in error["details"][0]["message"]


# --------------------------------------------------------------------------- batches


def test_batch_of_valid_items(edge: EdgeApp) -> None:
    items = [{"code": "print(1)"}, {"code": "x", "cases": [{"expected_stdout": ""}]}]
    response = post(edge, {"items": items}, path="/v1/batches")
    assert response.status_code == 200, response.text
    assert response.json() == {"total": 2}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"items": []}, "items"),
        ({"items": [{"code": "x"}] * (MAX_ITEMS + 1)}, "items"),
        ({"items": [{"code": "x", "wait": False}]}, "items.0.wait"),
        ({"items": [{"code": "x"}, {"code": 1}]}, "items.1.code"),
        ({"items": [{"code": "x", "files": {"../a": ""}}]}, "items.0.files"),
        ({"items": {"code": "x"}}, "items"),
        ({}, "items"),
        ({"items": [{"code": "x"}], "wait": True}, "wait"),
    ],
)
def test_invalid_batches_are_422(edge: EdgeApp, body: dict[str, Any], field: str) -> None:
    error = assert_error(post(edge, body, path="/v1/batches"), 422, "invalid_request")
    assert field in fields(error)


def test_batch_size_comes_from_the_settings(edge: EdgeApp) -> None:
    error = assert_error(
        post(edge, {"items": [{"code": "x"}] * (MAX_ITEMS + 1)}, path="/v1/batches"),
        422,
        "invalid_request",
    )
    assert f"at most {MAX_ITEMS} items" in error["details"][0]["message"]
    assert post(edge, {"items": [{"code": "x"}] * MAX_ITEMS}, path="/v1/batches").status_code == 200


# --------------------------------------------------------------------------- body guard: 413


def test_content_length_over_the_cap_is_413_without_reading(edge: EdgeApp) -> None:
    # http_oversize_body: decided from Content-Length; the route never runs, no byte is pulled.
    body = CountingBody(b"x" * (64 * KIB), 100)
    response = call(
        edge.app,
        "POST",
        "/v1/executions",
        content=body,
        headers={**JSON, "Content-Length": str(100 * 64 * KIB)},
    )
    error = assert_error(response, 413, "payload_too_large")
    assert str(MAX_BODY) in error["message"]
    assert response.headers["connection"] == "close"
    assert body.pulled == 0
    assert edge.calls == []


def test_oversize_json_body_is_413(edge: EdgeApp) -> None:
    response = post(edge, {"code": "x = 1\n" * (MAX_BODY // 4)})
    assert_error(response, 413, "payload_too_large")
    assert edge.calls == []


def test_content_length_is_checked_for_every_method(edge: EdgeApp) -> None:
    headers = {**JSON, "Content-Length": str(MAX_BODY + 1)}
    response = call(edge.app, "GET", "/health", content=CountingBody(b"", 0), headers=headers)
    assert_error(response, 413, "payload_too_large")


def test_chunked_body_over_the_cap_is_413_as_soon_as_it_crosses(edge: EdgeApp) -> None:
    chunk = 8 * KIB
    body = CountingBody(b" " * chunk, 1_000)  # whitespace: valid JSON padding, 8 MiB in all
    response = call(edge.app, "POST", "/v1/executions", content=body, headers=JSON)
    assert_error(response, 413, "payload_too_large")
    assert body.pulled == MAX_BODY // chunk + 1  # the chunk that crossed, and not one more
    assert len(edge.calls) == 1  # the route ran, and stopped at the cap


def test_the_guard_answers_413_even_if_the_route_swallows_it(edge: EdgeApp) -> None:
    body = CountingBody(b" " * (8 * KIB), 1_000)
    response = call(edge.app, "POST", "/v1/swallow", content=body, headers=JSON)
    assert_error(response, 413, "payload_too_large")
    assert body.pulled == MAX_BODY // (8 * KIB) + 1


def test_malformed_content_length_falls_back_to_counting(edge: EdgeApp) -> None:
    status, headers, _ = raw_call(
        edge.app,
        [(b"content-type", b"application/json"), (b"content-length", b"12, 13")],
        [b" " * (64 * KIB)] * 8,
    )
    assert status == 413
    assert headers[b"connection"] == b"close"


# --------------------------------------------------------------------------- body guard: 415


@pytest.mark.parametrize(
    "headers",
    [
        {"Content-Type": "text/plain"},
        {"Content-Type": "application/x-www-form-urlencoded"},
        {"Content-Type": "multipart/form-data; boundary=x"},
        {"Content-Type": "application/json; charset=latin-1"},
        {"Content-Type": "application/json; charset=utf-16"},
        {"Content-Type": "application/json; version=2"},
        {"Content-Type": "application/json-patch+json"},
        {"Content-Type": "application/jsonx"},
        {"Content-Type": "application/json, text/plain"},
        {"Content-Type": ""},
        {"Content-Type": "application/json", "Content-Encoding": "gzip"},
        {"Content-Type": "application/json", "Content-Encoding": "identity"},
        {"Content-Type": "application/json", "Content-Encoding": "br, gzip"},
    ],
)
def test_wrong_media_type_or_encoding_is_415_without_reading(
    edge: EdgeApp, headers: dict[str, str]
) -> None:
    body = CountingBody(b'{"code": "print(1)"}', 1)
    response = call(
        edge.app,
        "POST",
        "/v1/executions",
        content=body,
        headers={"Content-Length": "20", **headers},
    )
    assert_error(response, 415, "unsupported_media_type")
    assert body.pulled == 0
    assert edge.calls == []


def test_missing_content_type_is_415(edge: EdgeApp) -> None:
    response = call(edge.app, "POST", "/v1/executions", content=b'{"code": "print(1)"}')
    assert "content-type" not in response.request.headers
    assert_error(response, 415, "unsupported_media_type")


def test_gzip_encoded_json_is_415(edge: EdgeApp) -> None:
    raw = gzip.compress(json.dumps({"code": "print(1)"}).encode())
    headers = {**JSON, "Content-Encoding": "gzip"}
    response = call(edge.app, "POST", "/v1/executions", content=raw, headers=headers)
    error = assert_error(response, 415, "unsupported_media_type")
    assert "Content-Encoding" in error["message"]


def test_two_content_types_are_415(edge: EdgeApp) -> None:
    status, _, _ = raw_call(
        edge.app,
        [(b"content-type", b"application/json"), (b"content-type", b"text/plain")],
        [b'{"code": "x"}'],
        content_length=True,
    )
    assert status == 415


def test_an_undeclared_body_still_meets_the_media_type_check(edge: EdgeApp) -> None:
    # No Content-Length, no Transfer-Encoding (as HTTP/2 allows): checked on the first byte.
    status, _, body = raw_call(edge.app, [(b"content-type", b"text/plain")], [b'{"code": "x"}'])
    assert status == 415
    assert json.loads(body)["error"]["code"] == "unsupported_media_type"


def test_a_bodyless_post_reaches_the_parser(edge: EdgeApp) -> None:
    # Content-Length: 0 is no body: no media type is needed, and the parser says what is wrong.
    response = call(edge.app, "POST", "/v1/executions", headers={"Content-Length": "0"})
    assert_error(response, 400, "invalid_json")


# --------------------------------------------------------------------------- routing errors


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "/v1/batches", "POST"),
        ("DELETE", "/v1/executions", "POST"),
        ("PUT", "/v1/executions", "POST"),
        ("POST", "/health", "GET"),
    ],
)
def test_wrong_method_is_405_with_the_error_format(
    edge: EdgeApp, method: str, path: str, allowed: str
) -> None:
    response = call(edge.app, method, path, json={"code": "x"})
    error = assert_error(response, 405, "method_not_allowed")
    assert error["message"] == "method not allowed"
    assert allowed in response.headers["allow"]


@pytest.mark.parametrize(("method", "path"), [("GET", "/nope"), ("POST", "/v2/executions")])
def test_unknown_route_is_404_with_the_error_format(edge: EdgeApp, method: str, path: str) -> None:
    assert_error(call(edge.app, method, path, json={"code": "x"}), 404, "not_found")


@pytest.mark.parametrize("execution_id", ["1", "1 OR 1=1", "..%2F..%2Fetc%2Fpasswd", "%00"])
def test_malformed_ids_are_422_or_404(edge: EdgeApp, execution_id: str) -> None:
    # http_idor_and_injection_job_id: the edge's part (a malformed id never reaches a query).
    response = call(edge.app, "GET", f"/v1/executions/{execution_id}")
    assert response.status_code in (404, 422)
    error = assert_error(response, response.status_code, response.json()["error"]["code"])
    assert error["code"] in ("not_found", "invalid_request")


def test_framework_validation_errors_use_the_error_format(edge: EdgeApp) -> None:
    response = call(edge.app, "GET", f"/v1/executions/{uuid.uuid4()}?wait_s=61")
    error = assert_error(response, 422, "invalid_request")
    assert fields(error) == ["query.wait_s"]
    assert "61" not in json.dumps(error["details"])  # no input echoed


# --------------------------------------------------------------------------- error mapping


@pytest.mark.parametrize(
    ("name", "status", "code", "headers"),
    [
        ("unauthorized", 401, "unauthorized", {"www-authenticate": "Bearer"}),
        ("not_found", 404, "not_found", {}),
        ("conflict", 409, "conflict", {}),
        ("policy", 422, "policy_violation", {}),
        ("invalid", 422, "invalid_request", {}),
        ("rate_limited", 429, "rate_limited", {"retry-after": "3"}),
        ("overloaded", 503, "overloaded", {"retry-after": "1"}),
        ("unavailable", 503, "unavailable", {"retry-after": "5"}),
        ("store_down", 503, "unavailable", {"retry-after": "1"}),
        ("db_not_ready", 503, "unavailable", {"retry-after": "1"}),
        ("pool_closed", 503, "unavailable", {"retry-after": "1"}),
        ("config", 500, "internal_error", {}),
        ("bug", 500, "internal_error", {}),
    ],
)
def test_service_errors_map_to_the_documented_answers(
    edge: EdgeApp, name: str, status: int, code: str, headers: dict[str, str]
) -> None:
    # http_error_response_hygiene: 5xx answers are generic, with a request id and no DSN.
    response = call(edge.app, "GET", f"/v1/raise/{name}")
    error = assert_error(response, status, code)
    for header, value in headers.items():
        assert response.headers[header] == value
    if status >= 500:
        assert error["message"] in (
            "internal error",
            "the service is at capacity; retry later",
            "the service is temporarily unavailable; retry later",
        )
    if name == "policy":
        assert error["details"] == [{"module": "socket"}]


def test_internal_errors_are_logged_with_the_request_id(
    edge: EdgeApp, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="serve_app.api")
    response = call(edge.app, "GET", "/v1/raise/bug", headers={"X-Request-ID": "trace-me-1"})
    assert_error(response, 500, "internal_error")
    assert response.json()["error"]["request_id"] == "trace-me-1"
    assert any(record.exc_info for record in caplog.records)


def test_service_error_codes_match_the_public_codes() -> None:
    for name, code in [
        ("unauthorized", "unauthorized"),
        ("not_found", "not_found"),
        ("policy", "policy_violation"),
        ("rate_limited", "rate_limited"),
        ("overloaded", "overloaded"),
        ("unavailable", "unavailable"),
    ]:
        assert getattr(RAISED[name](), "code", None) == code


# --------------------------------------------------------------------------- request ids


def test_a_sane_request_id_is_echoed_and_seen_by_the_route(edge: EdgeApp) -> None:
    request_id = "client-01HZX.trace:42_" + "a" * 100
    response = post(edge, {"code": "x"}, headers={"X-Request-ID": request_id})
    assert response.status_code == 200
    assert response.headers["x-request-id"] == request_id
    assert edge.calls == [request_id]


def test_request_id_in_error_bodies_matches_the_header(edge: EdgeApp) -> None:
    response = post(edge, raw=b"{", headers={"X-Request-ID": "abc-123"})
    assert assert_error(response, 400, "invalid_json")["request_id"] == "abc-123"


@pytest.mark.parametrize(
    "bad",
    [b"a" * 129, b"abc\x01def", b"a\r\nSet-Cookie: x=1", b"a b", b"\xff\xfe", b"", b"a/b", b"<x>"],
)
def test_an_insane_request_id_is_replaced(edge: EdgeApp, bad: bytes) -> None:
    status, headers, body = raw_call(
        edge.app, [(b"x-request-id", bad)], method="GET", path="/health"
    )
    assert status == 200
    assert headers[b"x-request-id"] != bad
    assert len(headers[b"x-request-id"]) == 32
    int(headers[b"x-request-id"], 16)
    assert not bad or bad not in body


def test_two_request_ids_are_replaced(edge: EdgeApp) -> None:
    pair = [(b"x-request-id", b"one"), (b"x-request-id", b"two")]
    _, headers, _ = raw_call(edge.app, pair, method="GET", path="/health")
    assert headers[b"x-request-id"] not in (b"one", b"two")


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        ([b"sane-id.1"], True),
        ([b"a b"], False),
        ([b"a" * 129], False),
        ([b"one", b"two"], False),
        ([], True),
    ],
)
def test_the_proxy_middleware_replaces_what_serve_would_echo(sent: list[bytes], kept: bool) -> None:
    seen: list[list[tuple[bytes, bytes]]] = []

    async def serve_side(scope: Any, receive: Any, send: Any) -> None:
        seen.append(list(scope["headers"]))

    middleware = SaneRequestIdMiddleware(serve_side)
    other = (b"accept", b"*/*")
    scope = {"type": "http", "headers": [other, *((b"x-request-id", v) for v in sent)]}
    asyncio.run(middleware(scope, None, None))
    ids = [value for name, value in seen[0] if name == b"x-request-id"]
    assert other in seen[0]
    if kept:
        assert ids == sent
    else:
        assert len(ids) == 1 and ids[0] not in sent
        int(ids[0], 16)


def test_every_request_gets_a_fresh_id(edge: EdgeApp) -> None:
    first, second = (post(edge, {"code": "x"}) for _ in range(2))
    assert first.headers["x-request-id"] != second.headers["x-request-id"]
    assert edge.calls == [first.headers["x-request-id"], second.headers["x-request-id"]]


def test_the_log_filter_names_the_request() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "msg", None, None)
    assert RequestIdLogFilter().filter(record)
    assert record.__dict__["request_id"] == "-"  # outside a request
    assert current_request_id() is None


# --------------------------------------------------------------------------- security headers


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"),
    [
        ("POST", "/v1/executions", {"json": {"code": "x"}}, 200),
        ("POST", "/v1/executions", {"json": {"code": 1}}, 422),
        (
            "POST",
            "/v1/executions",
            {"content": b"x", "headers": {"Content-Type": "text/plain"}},
            415,
        ),
        ("GET", "/v1/nope", {}, 404),
        ("GET", "/v1/raise/bug", {}, 500),
        ("GET", "/health", {}, 200),
    ],
)
def test_security_headers_on_every_response(
    edge: EdgeApp, method: str, path: str, kwargs: dict[str, Any], status: int
) -> None:
    response = call(edge.app, method, path, **kwargs)
    assert response.status_code == status
    assert_security_headers(response)
    assert response.headers["content-security-policy"].startswith("default-src 'none'")
    if path.startswith("/v1/"):
        assert response.headers["cache-control"] == "no-store"
    else:
        assert "cache-control" not in response.headers


# --------------------------------------------------------------------------- CORS


def preflight(app: FastAPI, origin: str) -> httpx.Response:
    headers = {
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    return call(app, "OPTIONS", "/v1/executions", headers=headers)


def test_cors_is_off_by_default(edge: EdgeApp) -> None:
    response = preflight(edge.app, ORIGIN)
    assert "access-control-allow-origin" not in response.headers
    assert_error(response, 405, "method_not_allowed")
    response = post(edge, {"code": "x"}, headers={"Origin": ORIGIN})
    assert response.status_code == 200
    assert not any(name.startswith("access-control-") for name in response.headers)


@pytest.fixture(scope="module")
def cors_edge() -> EdgeApp:
    return EdgeApp(make_settings(cors_origins=[ORIGIN]))


def test_cors_for_a_listed_origin(cors_edge: EdgeApp) -> None:
    response = preflight(cors_edge.app, ORIGIN)
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert "authorization" in response.headers["access-control-allow-headers"].lower()
    assert "access-control-allow-credentials" not in response.headers
    assert_security_headers(response)
    assert response.headers["x-request-id"]

    response = post(cors_edge, {"code": "x"}, headers={"Origin": ORIGIN})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert "X-Request-ID" in response.headers["access-control-expose-headers"]


def test_cors_headers_on_the_guards_refusals(cors_edge: EdgeApp) -> None:
    # A browser client can read why its request was refused.
    headers = {**JSON, "Origin": ORIGIN, "Content-Length": str(MAX_BODY + 1)}
    response = call(
        cors_edge.app, "POST", "/v1/executions", content=CountingBody(b"", 0), headers=headers
    )
    assert_error(response, 413, "payload_too_large")
    assert response.headers["access-control-allow-origin"] == ORIGIN


def test_cors_refuses_an_unlisted_origin(cors_edge: EdgeApp) -> None:
    response = preflight(cors_edge.app, "https://evil.example")
    assert response.status_code == 400
    assert "access-control-allow-origin" not in response.headers
    response = post(cors_edge, {"code": "x"}, headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in response.headers


# --------------------------------------------------------------------------- schemas alone


def test_schemas_refuse_to_validate_without_bounds() -> None:
    with pytest.raises(TypeError, match="validate_body"):
        ExecutionCreate.model_validate({"code": "x"})


def test_bounds_come_from_the_settings() -> None:
    settings = make_settings(max_code_bytes=10, max_batch_items=2)
    bounds = RequestBounds.from_settings(settings)
    assert (bounds.max_code_bytes, bounds.max_batch_items, bounds.max_body_bytes) == (
        10,
        2,
        MAX_BODY,
    )
    assert bounds.max_limits == settings.max_limits()
    assert validate_body(ExecutionCreate, {"code": "x" * 10}, bounds).code == "x" * 10
    with pytest.raises(ValueError, match="at most 10 bytes"):
        validate_body(ExecutionCreate, {"code": "x" * 11}, bounds)


def test_models_are_strict_in_python_too() -> None:
    bounds = RequestBounds.from_settings(make_settings())
    with pytest.raises(ValueError, match="valid number"):
        validate_body(ExecutionCreate, {"code": "x", "limits": {"cpu_time_s": "1"}}, bounds)


# --------------------------------------------------------------------------- raw ASGI driver


def raw_call(
    app: FastAPI,
    headers: list[tuple[bytes, bytes]],
    chunks: list[bytes] | None = None,
    *,
    method: str = "POST",
    path: str = "/v1/executions",
    content_length: bool = False,
) -> tuple[int, dict[bytes, bytes], bytes]:
    """Call ``app`` with exactly these headers (no client adds or checks any)."""
    chunks = list(chunks or [])
    if content_length:
        headers = [*headers, (b"content-length", str(sum(map(len, chunks))).encode())]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if chunks:
            return {"type": "http.request", "body": chunks.pop(0), "more_body": bool(chunks)}
        return {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(dict(message))

    asyncio.run(app(scope, receive, send))
    start = sent[0]
    body = b"".join(message.get("body", b"") for message in sent[1:])
    return start["status"], dict(start["headers"]), body
