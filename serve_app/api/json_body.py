"""Request bodies from bytes to models: decode, check, validate. Never a 500 for bad input.

The body arrives capped (``BodyGuardMiddleware``; :func:`read_body` counts again). Then:

- not UTF-8 → 400 ``invalid_json``;
- a leading byte order mark → 400 ``invalid_json``: RFC 8259 forbids sending one, and the
  alternative (silently dropping it) would make two different byte strings the same request;
- malformed JSON, an integer of more than 4300 digits (Python's limit, CVE-2020-10735), nesting
  deeper than ``MAX_JSON_DEPTH`` → 400 ``invalid_json``. The decoder itself stops at the
  interpreter's recursion guard (caught); the depth walk refuses anything deeper than 64
  before pydantic, the database or a log formatter could recurse into it;
- a duplicate key at any level → 422 ``invalid_request``: with last-wins, the code a reviewer
  reads in the stored body could differ from the code that ran;
- ``NaN``, ``Infinity``, ``-Infinity`` and overflowing numbers (``1e309``) decode to floats and
  are refused by the schema with the field named → 422 ``invalid_request`` (API.md: "NaN or
  infinite: 422"); no schema field accepts a non-finite number;
- then the schema, in strict mode → 422 ``invalid_request`` with ``details``.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio.to_thread
from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from serve_app.api.errors import validation_details
from serve_app.api.schemas import RequestBounds, validate_body
from serve_app.errors import InvalidFieldsError, InvalidJsonError, PayloadTooLargeError

__all__ = [
    "OFFLOAD_BYTES",
    "body_parser",
    "decode_json",
    "parse_body",
    "read_body",
    "read_model",
    "request_bounds",
]

OFFLOAD_BYTES = 64 * 1024
"""Bodies larger than this are decoded in a worker thread, off the event loop."""

_BOM = b"\xef\xbb\xbf"
_Body = TypeVar("_Body", bound=BaseModel)


def decode_json(body: bytes, *, max_depth: int) -> Any:
    """The JSON value of ``body`` (see the module docstring for what is refused and how)."""
    if body.startswith(_BOM):
        raise InvalidJsonError("the body starts with a byte order mark: send UTF-8 without one")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidJsonError(f"the body is not valid UTF-8 (byte {exc.start})") from None
    try:
        value = json.loads(text, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as exc:
        raise InvalidJsonError(
            f"the body is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None
    except RecursionError:
        raise InvalidJsonError(f"the body nests deeper than {max_depth} levels") from None
    except ValueError:  # int() refusing more than sys.get_int_max_str_digits() digits
        raise InvalidJsonError("the body holds an integer with too many digits") from None
    if _deeper_than(value, max_depth):
        raise InvalidJsonError(f"the body nests deeper than {max_depth} levels")
    return value


def parse_body(model: type[_Body], body: bytes, bounds: RequestBounds) -> _Body:
    """Decode ``body`` and validate it as ``model``; raise the API's 400 and 422 errors."""
    data = decode_json(body, max_depth=bounds.max_json_depth)
    try:
        return validate_body(model, data, bounds)
    except ValidationError as exc:
        details = validation_details(exc.errors(include_url=False, include_input=False))
        count = exc.error_count()
        raise InvalidFieldsError(
            f"the request failed validation ({count} error{'s' if count > 1 else ''})", details
        ) from None


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The whole body, refused with 413 past ``max_bytes`` (the middleware's cap, again)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLargeError(max_bytes)
        chunks.append(chunk)
    return b"".join(chunks)


async def read_model(request: Request, model: type[_Body], bounds: RequestBounds) -> _Body:
    """Read, decode and validate the request's body as ``model``."""
    body = await read_body(request, bounds.max_body_bytes)
    if len(body) > OFFLOAD_BYTES:
        return await anyio.to_thread.run_sync(parse_body, model, body, bounds)
    return parse_body(model, body, bounds)


def body_parser(
    model: type[_Body], bounds: RequestBounds | None = None
) -> Callable[[Request], Awaitable[_Body]]:
    """A FastAPI dependency giving the validated body, for a typed alias::

        ExecutionBody = Annotated[ExecutionCreate, Depends(body_parser(ExecutionCreate))]

    Without ``bounds``, those :func:`~serve_app.api.middleware.install_edge` put on the app.
    """

    async def parse(request: Request) -> _Body:
        return await read_model(request, model, bounds or request_bounds(request))

    return parse


def request_bounds(request: Request) -> RequestBounds:
    """The bounds ``install_edge`` stored on the app (``app.state.request_bounds``)."""
    bounds = getattr(request.app.state, "request_bounds", None)
    if not isinstance(bounds, RequestBounds):
        raise TypeError("no request bounds on the app: call install_edge(app, settings)")
    return bounds


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    seen: set[str] = set()
    duplicates: list[str] = []
    for key, _ in pairs:
        if key in seen:
            duplicates.append(key)
        seen.add(key)
    raise InvalidFieldsError(
        "the body repeats a key",
        [{"field": key, "message": "duplicate key", "type": "duplicate_key"} for key in duplicates],
    )


def _deeper_than(value: Any, max_depth: int) -> bool:
    """Whether containers nest more than ``max_depth`` levels: level by level, no recursion."""
    level = [value] if isinstance(value, dict | list) else []
    depth = 0
    while level:
        depth += 1
        if depth > max_depth:
            return True
        level = [
            child
            for node in level
            for child in (node.values() if isinstance(node, dict) else node)
            if isinstance(child, dict | list)
        ]
    return False
