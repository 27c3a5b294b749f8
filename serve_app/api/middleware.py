"""Pure ASGI middleware of the HTTP edge: nothing here buffers a body or needs Ray or a database.

Outermost first, as :func:`install_edge` stacks them::

    RequestContextMiddleware   request id (header, contextvar, log filter), security headers,
                               a generic 500 for anything a route let escape
    CORSMiddleware             Starlette's, only when CORS_ORIGINS lists origins
    BodyGuardMiddleware        media type, Content-Encoding and the size cap, before parsing
    PathKeyRestoreMiddleware   an API key given in the path back into it, for the routes only
                               (:mod:`serve_app.api.path_key`)
    the app                    exception handlers of :mod:`serve_app.api.errors`, routes

So every answer (413 and 415 from the guard, CORS preflights, the last-resort 500) carries the
request id and the security headers, and the guard's refusals get CORS headers too.

A WebSocket (``GET /v1/ws``: scope type ``websocket``) passes every one of them untouched, as it
passes the app's own (rate-limit headers, metrics, tracing): its messages are neither counted
against ``MAX_BODY_BYTES`` nor buffered, and its errors are messages on the socket, not HTTP
answers (:mod:`serve_app.http.service.interactive` sets its request ids and sizes its messages).

Exactly one ``X-Request-ID`` goes out. Standing alone, the middleware sends it: the client's id
if it sent exactly one sane id, else a fresh one. Behind Ray Serve (``upstream_request_id``),
Serve's own ``RequestIdMiddleware`` (in its proxy, or in the replica in direct-ingress mode)
sits outside the app: it takes the first ``x-request-id`` the client sent (or generates a
UUID and adds it to the request's headers) and appends ``X-Request-ID`` with that value to
every answer, whatever the app sent. So there the middleware sends none and adopts that id.
A client id that is not sane would be echoed by Serve as it came while the service used a fresh
one; :class:`SaneRequestIdMiddleware`, installed in Serve's proxy in front of Serve's own
(:func:`proxy_middlewares`, through ``serve.start``'s ``http_options`` or
``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``), replaces such an id before Serve reads it, so
the answer's id and the service's agree. Outside even that, :class:`PathKeyMiddleware` takes
an API key given as a path segment out of the path before Serve logs, traces or routes it
(:mod:`serve_app.api.path_key`).
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterable
from http import HTTPStatus

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve_app.api.errors import api_error, error_response, install_error_handlers, log_error
from serve_app.api.path_key import PathKeyMiddleware, PathKeyRestoreMiddleware
from serve_app.api.schemas import RequestBounds
from serve_app.errors import PayloadTooLargeError, ServiceError, UnsupportedMediaTypeError
from serve_app.observability import (
    capture_internal_error,
    current_request_id,
    reset_request_id,
    set_request_id,
)
from serve_app.settings import Settings

__all__ = [
    "PROXY_MIDDLEWARES_IMPORT_PATH",
    "REQUEST_ID_HEADER",
    "SECURITY_HEADERS",
    "BodyGuardMiddleware",
    "RequestContextMiddleware",
    "RequestIdLogFilter",
    "SaneRequestIdMiddleware",
    "current_request_id",
    "install_edge",
    "proxy_middlewares",
]

REQUEST_ID_HEADER = "X-Request-ID"
_SANE_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
"""A client's request id is kept only if it is short and cannot smuggle anything into logs."""

SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
)
_NO_STORE = (b"cache-control", b"no-store")
_CORS_HEADERS = ("Authorization", "X-API-Key", "Content-Type", "Idempotency-Key", "X-Request-ID")
_CORS_EXPOSED = (
    "X-Request-ID",
    "Location",
    "Retry-After",
    "RateLimit-Limit",
    "RateLimit-Remaining",
    "RateLimit-Reset",
)

logger = logging.getLogger(__name__)


class RequestIdLogFilter(logging.Filter):
    """Puts ``request_id`` on every log record (``-`` outside a request), for the formatter."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = current_request_id() or "-"
        return True


def install_edge(app: Starlette, settings: Settings, *, upstream_request_id: bool = False) -> None:
    """Install the error handlers and the middleware stack described in the module docstring,
    and keep the settings' :class:`RequestBounds` in ``app.state.request_bounds``.

    ``upstream_request_id``: the app runs behind Ray Serve, which sends ``X-Request-ID``."""
    app.state.request_bounds = RequestBounds.from_settings(settings)
    install_error_handlers(app)
    # add_middleware wraps what is there already: the last one added is the outermost.
    app.add_middleware(PathKeyRestoreMiddleware)
    app.add_middleware(BodyGuardMiddleware, max_body_bytes=settings.max_body_bytes)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=("GET", "POST"),
            allow_headers=_CORS_HEADERS,
            expose_headers=_CORS_EXPOSED,
            allow_credentials=False,  # keys travel in headers, never in cookies
            max_age=600,
        )
    app.add_middleware(RequestContextMiddleware, upstream_request_id=upstream_request_id)


class RequestContextMiddleware:
    """Request id, security headers on every response, and the last-resort 500.

    ``upstream_request_id``: something outside the app (Ray Serve) sends ``X-Request-ID`` with
    the first ``x-request-id`` of the request; adopt that id and send none (module docstring).
    """

    def __init__(self, app: ASGIApp, *, upstream_request_id: bool = False) -> None:
        self.app = app
        self.upstream_request_id = upstream_request_id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id, send_header = self._request_id(scope["headers"])
        scope.setdefault("state", {})["request_id"] = request_id
        token = set_request_id(request_id)
        extra = _extra_headers(request_id, _is_api_path(scope), send_header=send_header)
        started = False

        async def send_decorated(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message = {**message, "headers": _merge(message.get("headers", ()), extra)}
            await send(message)

        try:
            await self.app(scope, receive, send_decorated)
        except Exception as exc:  # the last resort: logged, answered generically
            error = api_error(exc)
            if error.status == HTTPStatus.INTERNAL_SERVER_ERROR:
                capture_internal_error(exc)  # to Sentry (when configured), with the request id
            if started:
                raise  # the status is out: only the server can end the response
            log_error(error, exc)
            await error_response(error, request_id)(scope, receive, send_decorated)
        finally:
            reset_request_id(token)

    def _request_id(self, headers: Iterable[tuple[bytes, bytes]]) -> tuple[str, bool]:
        """The request's id, and whether this middleware must send it."""
        values = [value for name, value in headers if name.lower() == b"x-request-id"]
        if self.upstream_request_id and values:
            # Serve echoes the first value as it is: adopt it when it is sane.
            return _sane(values[0]) or uuid.uuid4().hex, False
        return (_sane(values[0]) if len(values) == 1 else None) or uuid.uuid4().hex, True


class SaneRequestIdMiddleware:
    """In Serve's proxy, before Serve's ``RequestIdMiddleware``: a request whose
    ``X-Request-ID`` is not exactly one sane value gets a fresh one instead, which Serve then
    echoes and the app adopts."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers: list[tuple[bytes, bytes]] = scope["headers"]
            ids = [value for name, value in headers if name.lower() == b"x-request-id"]
            if ids and (len(ids) > 1 or _sane(ids[0]) is None):
                kept = [(name, value) for name, value in headers if name.lower() != b"x-request-id"]
                fresh = (b"x-request-id", uuid.uuid4().hex.encode())
                scope = {**scope, "headers": [*kept, fresh]}
        await self.app(scope, receive, send)


PROXY_MIDDLEWARES_IMPORT_PATH = "serve_app.api.middleware:proxy_middlewares"
"""For ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`` where ``serve.start`` is not ours to call
(a Serve config file, KubeRay)."""


def proxy_middlewares() -> list[Middleware]:
    """The middlewares Serve's HTTP proxy runs around the app: Serve applies them in order,
    each around the previous, around its own request ids; so the key masking, last, is the
    outermost of all (nothing of Serve's sees a key in a path)."""
    return [Middleware(SaneRequestIdMiddleware), Middleware(PathKeyMiddleware)]


def _sane(value: bytes) -> str | None:
    return value.decode("ascii") if _SANE_REQUEST_ID.fullmatch(value) else None


def _is_api_path(scope: Scope) -> bool:
    path: str = scope["path"]
    root_path: str = scope.get("root_path", "")
    if root_path and path.startswith(root_path):
        path = path[len(root_path) :]
    return path == "/v1" or path.startswith("/v1/")


def _extra_headers(
    request_id: str, api_path: bool, *, send_header: bool = True
) -> list[tuple[bytes, bytes]]:
    headers = [(b"x-request-id", request_id.encode("ascii"))] if send_header else []
    return [*headers, _NO_STORE] if api_path else headers


def _merge(
    headers: Iterable[tuple[bytes, bytes]], extra: list[tuple[bytes, bytes]]
) -> list[tuple[bytes, bytes]]:
    """The app's headers with ``extra`` forced and the security headers it did not set; any
    ``x-request-id`` the app set is dropped (the middleware or Serve sends the one)."""
    forced = {b"x-request-id", *(name for name, _ in extra)}
    merged = [(name, value) for name, value in headers if name.lower() not in forced]
    present = {name.lower() for name, _ in merged}
    merged += extra
    merged += [header for header in SECURITY_HEADERS if header[0] not in present]
    return merged


class BodyGuardMiddleware:
    """Checks a request body before anything parses it.

    Media type ``application/json`` (``charset=utf-8`` allowed) and no ``Content-Encoding``,
    else 415; a ``Content-Length`` over ``max_body_bytes`` is 413 at once, without reading; a
    body without a (trustworthy) length is counted while it is read, and refused with 413 the
    moment it crosses the cap: the app never holds more than the cap.
    """

    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        if max_body_bytes <= 0:
            raise ValueError("max_body_bytes must be positive")
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = _header_map(scope["headers"])
        media_problem = _media_problem(headers)
        declared, length = _declared_body(headers)
        if declared and media_problem is not None:
            await _refuse(media_problem, scope, receive, send)
        elif length is not None and length > self.max_body_bytes:
            await _refuse(PayloadTooLargeError(self.max_body_bytes), scope, receive, send)
        else:
            # A body that arrives undeclared (no Content-Length, no Transfer-Encoding) still
            # meets the media-type check, on its first byte.
            guard = _Guard(self.max_body_bytes, media_problem, receive, send)
            await guard.run(self.app, scope)


class _Guard:
    """One request's counted receive, and a send that yields to the guard's own refusal."""

    def __init__(
        self, cap: int, media_problem: ServiceError | None, receive: Receive, send: Send
    ) -> None:
        self.cap = cap
        self.media_problem = media_problem
        self.refusal: ServiceError | None = None
        self.received = 0
        self.started = False
        self._receive = receive
        self._send = send

    async def run(self, app: ASGIApp, scope: Scope) -> None:
        try:
            await app(scope, self.receive, self.send)
        except Exception:
            if self.refusal is None or self.started:
                raise
            # The app failed on the refusal we raised in it: the guard answers below.
        if self.refusal is not None and not self.started:
            await _refuse(self.refusal, scope, self._receive, self._send)

    async def receive(self) -> Message:
        if self.refusal is not None:
            raise self.refusal
        message = await self._receive()
        size = len(message.get("body", b"")) if message["type"] == "http.request" else 0
        if size:
            self.received += size
            if self.media_problem is not None:
                self.refusal = self.media_problem
            elif self.received > self.cap:
                self.refusal = PayloadTooLargeError(self.cap)
            if self.refusal is not None:
                raise self.refusal
        return message

    async def send(self, message: Message) -> None:
        if self.refusal is not None and not self.started:
            return  # whatever the app makes of the refusal, the guard's answer is the one sent
        if message["type"] == "http.response.start":
            self.started = True
        await self._send(message)


async def _refuse(exc: ServiceError, scope: Scope, receive: Receive, send: Send) -> None:
    request_id = scope.get("state", {}).get("request_id") or current_request_id() or "-"
    # The unread body stays on the connection: close it rather than parse it as a request.
    response = error_response(api_error(exc), request_id, {"Connection": "close"})
    await response(scope, receive, send)


def _header_map(headers: Iterable[tuple[bytes, bytes]]) -> dict[bytes, list[bytes]]:
    mapped: dict[bytes, list[bytes]] = {}
    for name, value in headers:
        mapped.setdefault(name.lower(), []).append(value)
    return mapped


def _declared_body(headers: dict[bytes, list[bytes]]) -> tuple[bool, int | None]:
    """Whether the headers announce a body, and its length if they state one we can trust."""
    lengths = set(headers.get(b"content-length", ()))
    if b"transfer-encoding" in headers:
        return True, None
    if not lengths:
        return False, None
    if len(lengths) == 1 and (value := lengths.pop().strip()).isdigit():
        return int(value) > 0, int(value)
    return True, None  # contradictory or malformed: count the bytes instead


def _media_problem(headers: dict[bytes, list[bytes]]) -> ServiceError | None:
    if b"content-encoding" in headers:
        return UnsupportedMediaTypeError("Content-Encoding is not supported: send plain JSON")
    content_types = headers.get(b"content-type", [])
    if len(content_types) != 1 or not _is_json_utf8(content_types[0]):
        return UnsupportedMediaTypeError("the body must be application/json in UTF-8")
    return None


def _is_json_utf8(content_type: bytes) -> bool:
    try:
        media_type, _, parameters = content_type.decode("ascii").partition(";")
    except UnicodeDecodeError:
        return False
    if media_type.strip().lower() != "application/json":
        return False
    for parameter in filter(str.strip, parameters.split(";")):
        name, _, value = parameter.partition("=")
        if name.strip().lower() != "charset" or value.strip().strip('"').lower() != "utf-8":
            return False
    return True
