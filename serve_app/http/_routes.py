"""The FastAPI app of the API: routes over an :class:`ExecutionService`, behind the edge.

Bodies are read with :func:`serve_app.api.read_model` (never FastAPI's own body parsing); every
error is a :mod:`serve_app.errors` exception mapped by the edge's handlers. ``/v1/`` answers
to an authenticated caller carry the ``RateLimit-*`` headers, errors included: the caller
dependency leaves them in the request's state and :class:`RateLimitHeadersMiddleware` adds them
to whatever answer goes out.
"""

# No `from __future__ import annotations`: FastAPI reads the routes' annotations at run time,
# and ``Caller`` is local to build_api.
import contextlib
import inspect
import re
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve_app.api import (
    BatchCreate,
    ExecutionCreate,
    current_request_id,
    install_edge,
    read_model,
)
from serve_app.api.json_body import request_bounds
from serve_app.db.models import ApiKey
from serve_app.errors import InvalidFieldsError
from serve_app.http._health import Readiness, public_view
from serve_app.http._metrics import UNMATCHED_ROUTE, RequestMetricsMiddleware, route_template
from serve_app.http._service import MAX_WAIT_S, ExecutionService, rate_limit_headers
from serve_app.observability import TracingMiddleware, current_tracer
from serve_app.settings import Settings

__all__ = ["RateLimitHeadersMiddleware", "build_api"]

STATE_HEADERS = "ratelimit_headers"
DEFAULT_PAGE_ITEMS = 20
MAX_PAGE_ITEMS = 100
MAX_IDEMPOTENCY_KEY_CHARS = 255
_PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]*")


class RateLimitHeadersMiddleware:
    """Adds the headers a route left in ``scope["state"]["ratelimit_headers"]``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = scope.get("state", {}).get(STATE_HEADERS)
                if extra:
                    headers = list(message.get("headers", []))
                    headers += [(k.lower().encode(), v.encode()) for k, v in extra.items()]
                    message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def presented_key(request: Request) -> str | None:
    """``Authorization: Bearer <key>``, else ``X-API-Key``."""
    authorization = request.headers.get("authorization")
    if authorization is not None:
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() == "bearer":
            return credentials.strip() or None
        return None
    return request.headers.get("x-api-key")


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


def _without_fastapi_tracing() -> dict[str, Any]:
    """FastAPI's own OpenTelemetry spans off (newer FastAPIs trace every request once a tracer
    provider is installed): the service's :class:`TracingMiddleware` span is the one, with its
    fixed attributes. FastAPI's would add a second server span, record the raw path and query,
    and start the trace a client's ``traceparent`` names. Nor may FastAPI install exporters of
    its own (``FASTAPI_OTEL_AUTO_CONFIGURE``): tracing is ``OTEL_EXPORTER_OTLP_ENDPOINT``'s."""
    if "telemetry" not in inspect.signature(FastAPI.__init__).parameters:
        return {}  # a FastAPI without native telemetry
    return {"telemetry": {"tracing": False, "auto_configure": False}}


def build_api(settings: Settings, service: ExecutionService) -> FastAPI:
    """The app one ingress replica serves."""
    readiness = Readiness(service)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        service.start()
        yield
        await service.aclose(settings.graceful_shutdown_timeout_s)

    app = FastAPI(
        title="Python Execution Agent",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        lifespan=lifespan,
        **_without_fastapi_tracing(),
    )
    app.add_middleware(RateLimitHeadersMiddleware)  # innermost: sees the handlers' answers
    # Ray Serve's RequestIdMiddleware sends X-Request-ID around this app (see the edge).
    install_edge(app, settings, upstream_request_id=True)
    tracer = current_tracer()
    if tracer is not None:  # OTEL_EXPORTER_OTLP_ENDPOINT: a span per request, outside the edge

        def traced_route(scope: Scope) -> str | None:
            route = route_template(scope, app.router.routes)
            return None if route == UNMATCHED_ROUTE else route

        app.add_middleware(TracingMiddleware, tracer=tracer, route=traced_route)
    # Outermost: measures every answer, the edge's refusals included.
    app.add_middleware(RequestMetricsMiddleware, metrics=service.metrics, routes=app.router.routes)

    async def authenticated(request: Request) -> ApiKey:
        source = request.client.host if request.client else None
        return await service.authenticate(presented_key(request), source_address=source)

    async def charge(request: Request, key: ApiKey, executions: int = 1) -> None:
        decision = await service.hit(key, executions)
        # Set before refusing: a 429 tells the caller its allowance too.
        request.state.ratelimit_headers = rate_limit_headers(decision)
        service.admit(decision, key)

    async def caller(request: Request) -> ApiKey:
        key = await authenticated(request)
        await charge(request, key)
        return key

    Caller = Annotated[ApiKey, Depends(caller)]
    Uncharged = Annotated[ApiKey, Depends(authenticated)]
    """A route that charges the rate itself (per execution, once it knows how many)."""

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/health/ready")
    async def ready(request: Request) -> JSONResponse:
        # No key: the status for probes. A key: it must be valid (401, or 429 for an address
        # with too many failures) and then sees every detail. Never charged to its rate.
        authenticated_caller = presented_key(request) is not None
        if authenticated_caller:
            await authenticated(request)
        status, body = await readiness.get()
        return JSONResponse(body if authenticated_caller else public_view(body), status_code=status)

    @app.post("/v1/executions")
    async def create_execution(request: Request, key: Caller) -> JSONResponse:
        body = await read_model(request, ExecutionCreate, request_bounds(request))
        idempotency_key = checked_idempotency_key(request.headers.get("idempotency-key"))
        created = await service.create(
            key, body, idempotency_key=idempotency_key, request_id=current_request_id()
        )
        record = created.record
        return JSONResponse(
            record.to_api(),
            status_code=200 if created.terminal else 202,
            headers={"Location": f"/v1/executions/{record.id}"},
        )

    @app.post("/v1/batches")
    async def create_batch(request: Request, key: Uncharged) -> JSONResponse:
        body = await read_model(request, BatchCreate, request_bounds(request))
        # Refused for the backlog before the charge: a refused batch costs no allowance.
        service.check_batch_room(key, len(body.items))
        await charge(request, key, len(body.items))
        created = await service.create_batch(key, body, request_id=current_request_id())
        return JSONResponse(
            created, status_code=202, headers={"Location": f"/v1/batches/{created['id']}"}
        )

    @app.get("/v1/batches/{batch_id}")
    async def get_batch(
        batch_id: str,
        key: Caller,
        wait_s: Annotated[float, Query(ge=0, le=MAX_WAIT_S, allow_inf_nan=False)] = 0.0,
    ) -> JSONResponse:
        return JSONResponse(await service.get_batch(key, batch_id, wait_s))

    @app.get("/v1/executions/{execution_id}")
    async def get_execution(
        execution_id: str,
        key: Caller,
        wait_s: Annotated[float, Query(ge=0, le=MAX_WAIT_S, allow_inf_nan=False)] = 0.0,
    ) -> JSONResponse:
        record = await service.get(key, execution_id, wait_s)
        return JSONResponse(record.to_api())

    @app.get("/v1/executions")
    async def list_executions(
        key: Caller,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE_ITEMS)] = DEFAULT_PAGE_ITEMS,
        cursor: Annotated[str | None, Query(max_length=512)] = None,
    ) -> JSONResponse:
        return JSONResponse(await service.list(key, limit, cursor))

    return app
