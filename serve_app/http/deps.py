"""The routes' dependencies, as typed aliases: a handler names what it needs in its signature.

    ServiceDep        the app's :class:`ExecutionService`
    ReadinessDep      the app's :class:`Readiness` (``/health/ready``'s checks, shared)
    AuthenticatedKey  the caller's live key, not charged (a route that charges per execution)
    CurrentKey        the caller's live key, charged one execution (``RateLimit-*`` headers)
    OptionalKey       the key if one is presented (then it must be valid), else ``None``
    PathKey           the caller's live key from the path's ``{api_key}``, not charged
    ExecutionBody     ``POST /v1/executions``'s body, read and validated within the app's bounds
    BatchBody         ``POST /v1/batches``'s body, likewise
    SessionBody       ``POST /v1/sessions``'s body, likewise (none at all: ``{}``)
    SessionCallBody   ``POST /v1/sessions/{id}/executions``'s body, likewise
    IdempotencyKey    the ``Idempotency-Key`` header, checked (422 if unusable)
    WaitS, PageLimit, PageCursor   the query parameters, with their bounds

Every dependency is ``async``: FastAPI would run a plain ``def`` in its thread pool. The service
and the readiness live in ``app.state`` (:func:`attach`), as the edge keeps the request bounds
there: the routers are module-level and every app built over them shares them.

Bodies are read with :func:`serve_app.api.body_parser` (never FastAPI's own body parsing); every
error is a :mod:`serve_app.errors` exception mapped by the edge's handlers.
"""

# No `from __future__ import annotations`: FastAPI reads the dependencies' annotations at run time.
import re
from typing import Annotated

from fastapi import Depends, FastAPI, Query, Request
from starlette.requests import HTTPConnection

from serve_app.api import (
    BatchCreate,
    ExecutionCreate,
    SessionCall,
    SessionCreate,
    body_parser,
    parse_body,
    read_body,
    request_bounds,
)
from serve_app.db.models import ApiKey
from serve_app.errors import InvalidFieldsError
from serve_app.http._health import Readiness
from serve_app.http._ratelimit_headers import leave_headers
from serve_app.http.service import MAX_WAIT_S, ExecutionService, rate_limit_headers

__all__ = [
    "DEFAULT_PAGE_ITEMS",
    "MAX_IDEMPOTENCY_KEY_CHARS",
    "MAX_PAGE_ITEMS",
    "AuthenticatedKey",
    "BatchBody",
    "CurrentKey",
    "ExecutionBody",
    "IdempotencyKey",
    "OptionalKey",
    "PageCursor",
    "PageLimit",
    "PathKey",
    "ReadinessDep",
    "ServiceDep",
    "SessionBody",
    "SessionCallBody",
    "WaitS",
    "attach",
    "charge",
    "checked_idempotency_key",
    "presented_key",
]

DEFAULT_PAGE_ITEMS = 20
MAX_PAGE_ITEMS = 100
MAX_IDEMPOTENCY_KEY_CHARS = 255
_PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]*")


def attach(app: FastAPI, service: ExecutionService) -> None:
    """Give ``app``'s routes their service, and one :class:`Readiness` for all its callers."""
    app.state.service = service
    app.state.readiness = Readiness(service)


async def get_service(request: Request) -> ExecutionService:
    service = getattr(request.app.state, "service", None)
    if not isinstance(service, ExecutionService):
        raise TypeError("no service on the app: call attach(app, service)")
    return service


async def get_readiness(request: Request) -> Readiness:
    readiness = getattr(request.app.state, "readiness", None)
    if not isinstance(readiness, Readiness):
        raise TypeError("no readiness on the app: call attach(app, service)")
    return readiness


ServiceDep = Annotated[ExecutionService, Depends(get_service)]
ReadinessDep = Annotated[Readiness, Depends(get_readiness)]


def presented_key(request: HTTPConnection) -> str | None:
    """``Authorization: Bearer <key>``, else ``X-API-Key`` (of a request or a WebSocket's
    handshake)."""
    authorization = request.headers.get("authorization")
    if authorization is not None:
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() == "bearer":
            return credentials.strip() or None
        return None
    return request.headers.get("x-api-key")


async def authenticated(request: Request, service: ServiceDep) -> ApiKey:
    source = request.client.host if request.client else None
    return await service.authenticate(presented_key(request), source_address=source)


AuthenticatedKey = Annotated[ApiKey, Depends(authenticated)]
"""For a route that charges the rate itself (per execution, once it knows how many)."""


async def charge(
    request: Request, service: ExecutionService, key: ApiKey, executions: int = 1
) -> None:
    """Charge ``executions`` to ``key``'s rate, or refuse (429) past its allowance."""
    decision = await service.hit(key, executions)
    # Left before refusing: a 429 tells the caller its allowance too.
    leave_headers(request, rate_limit_headers(decision))
    service.admit(decision, key)


async def current_key(request: Request, service: ServiceDep, key: AuthenticatedKey) -> ApiKey:
    await charge(request, service, key)
    return key


CurrentKey = Annotated[ApiKey, Depends(current_key)]


async def optional_key(request: Request, service: ServiceDep) -> ApiKey | None:
    if presented_key(request) is None:
        return None
    return await authenticated(request, service)


OptionalKey = Annotated[ApiKey | None, Depends(optional_key)]
"""No key: ``None``. A key: it must be valid (401, or 429 for an address with too many
failures). Never charged to its rate."""


async def path_key(request: Request, service: ServiceDep, api_key: str) -> ApiKey:
    """The key of a route whose template holds ``{api_key}``, for clients that cannot send a
    header (API.md, "Compatibility"); authenticated exactly as a header's key."""
    source = request.client.host if request.client else None
    return await service.authenticate(api_key, source_address=source)


PathKey = Annotated[ApiKey, Depends(path_key)]
"""The key in the path (never the headers'); not charged, as :data:`AuthenticatedKey`."""

ExecutionBody = Annotated[ExecutionCreate, Depends(body_parser(ExecutionCreate))]
BatchBody = Annotated[BatchCreate, Depends(body_parser(BatchCreate))]


async def session_body(request: Request) -> SessionCreate:
    """``POST /v1/sessions``' body: every field has a default, so no body at all is ``{}``."""
    bounds = request_bounds(request)
    body = await read_body(request, bounds.max_body_bytes)
    return parse_body(SessionCreate, body or b"{}", bounds)


SessionBody = Annotated[SessionCreate, Depends(session_body)]
SessionCallBody = Annotated[SessionCall, Depends(body_parser(SessionCall))]


def checked_idempotency_key(header: str | None) -> str | None:
    """The ``Idempotency-Key`` header, or :class:`InvalidFieldsError` (422) if it is longer
    than API.md allows or not printable ASCII: cutting it would make long keys that share a
    beginning replay each other's executions."""
    if header is None:
        return None
    if len(header) > MAX_IDEMPOTENCY_KEY_CHARS or not _PRINTABLE_ASCII.fullmatch(header):
        raise InvalidFieldsError(
            "invalid Idempotency-Key header",
            [
                {
                    "field": "header.Idempotency-Key",
                    "message": f"at most {MAX_IDEMPOTENCY_KEY_CHARS} printable ASCII characters",
                    "type": "idempotency_key",
                }
            ],
        )
    return header


async def idempotency_key(request: Request) -> str | None:
    return checked_idempotency_key(request.headers.get("idempotency-key"))


IdempotencyKey = Annotated[str | None, Depends(idempotency_key)]

WaitS = Annotated[float, Query(ge=0, le=MAX_WAIT_S, allow_inf_nan=False)]
PageLimit = Annotated[int, Query(ge=1, le=MAX_PAGE_ITEMS)]
PageCursor = Annotated[str | None, Query(max_length=512)]
