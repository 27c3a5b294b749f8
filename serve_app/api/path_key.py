"""An API key given as a path segment (``/compat/sandbox-fusion/k/{api_key}/run_code``), kept
out of everything that writes a request's path down.

SandboxFusion's clients cannot send a header, so the compatibility routes also take the key
in the path; but a path is what access logs, traces and error reports record. So the key
leaves the path at the first ASGI layer that sees the request, Ray Serve's HTTP proxy (or the
replica's own HTTP server in direct-ingress and HAProxy modes), where :class:`PathKeyMiddleware`
is installed by :func:`serve_app.api.proxy_middlewares`:

- ``path`` and ``raw_path`` get :data:`MASKED_KEY` in the key's place, before Serve matches
  routes, logs the access line, names its spans or answers its own 404, so all of them see
  ``/compat/sandbox-fusion/k/redacted/run_code``;
- the key travels on in the scope, under ``extensions[PATH_KEY_EXTENSION]`` (Serve pickles the
  whole scope to the replica; a client cannot set a scope extension, and nothing logs one);
- ``Location`` and ``Content-Location`` answers are masked the same way, so no redirect echoes
  the key.

In the app, :class:`PathKeyRestoreMiddleware` (the innermost layer of the edge, just outside
the routes) puts the key back into the path the router matches, so a route reads it as its
``api_key`` parameter and authenticates with the real key; every layer outside it (metrics,
traces, the request-id and error middleware, the body guard) sees the masked path. Run without
Serve's proxy (uvicorn alone, a test client), the layers outside the restore middleware see
the real path: they record only route templates, never the path (metrics, traces), and error
reports drop the request (:mod:`serve_app.observability`). A request that arrives with the masked path and no
extension (a client sending ``.../k/redacted/...``) keeps it: the route sees ``redacted`` as
its key and refuses it.

Logs get the same masking as a last line of defence: :func:`executors.telemetry.redact` masks
the segment after ``/k/`` of a compatibility path in every log line and Sentry event.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, unquote

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "MASKED_KEY",
    "PATH_KEY_EXTENSION",
    "PATH_KEY_PREFIX",
    "PathKeyMiddleware",
    "PathKeyRestoreMiddleware",
    "mask_path_key",
    "path_key",
]

PATH_KEY_PREFIX = "/compat/sandbox-fusion/k/"
"""The paths whose next segment is an API key."""
MASKED_KEY = "redacted"
"""What stands in the key's place in a masked path."""
PATH_KEY_EXTENSION = "exec_agent.path_key"
"""The scope extension that carries the key from the proxy to the app."""

_PATH = re.compile(r"(" + re.escape(PATH_KEY_PREFIX) + r")([^/]*)")
_RAW_PATH = re.compile(rb"(" + re.escape(PATH_KEY_PREFIX.encode()) + rb")([^/?#]*)")
_MASKED_SEGMENT = MASKED_KEY.encode()
_RAW_PATH_PREFIX = PATH_KEY_PREFIX.encode()
_LOCATION_HEADERS = (b"location", b"content-location")
_SCOPE_TYPES = ("http", "websocket")


def mask_path_key(scope: Scope) -> tuple[Scope, str | None]:
    """``scope`` with the key of its path masked (a new scope), and the key; ``scope`` itself
    and ``None`` when its path carries none."""
    path: str = scope.get("path", "")
    raw: bytes | None = scope.get("raw_path")
    raw_match = _RAW_PATH.search(raw) if raw is not None else None
    if raw is not None and raw_match is not None:
        key = unquote(raw_match.group(2).decode("latin-1"))
        masked_raw = raw[: raw_match.end(1)] + _MASKED_SEGMENT + raw[raw_match.end(2) :]
        masked_path = unquote(masked_raw.decode("latin-1"))
        if _PATH.search(masked_path) is None:  # the raw and decoded paths disagree: mask both
            masked_path = _PATH.sub(r"\1" + MASKED_KEY, path)
    else:
        # No raw path, or its prefix is percent-encoded: the decoded path decides, and the
        # raw one is rebuilt from the masked path (the encoded key must not survive in it).
        match = _PATH.search(path)
        if match is None:
            return scope, None
        key = match.group(2)
        masked_path = path[: match.end(1)] + MASKED_KEY + path[match.end(2) :]
        masked_raw = quote(masked_path).encode("ascii")
    if not key:
        return scope, None  # an empty segment: no key to hide, the router answers
    masked = {**scope, "path": masked_path, "raw_path": masked_raw}
    return masked, None if key == MASKED_KEY else key


def path_key(scope: Scope) -> str | None:
    """The key :class:`PathKeyMiddleware` took out of ``scope``'s path, if any."""
    extensions = scope.get("extensions") or {}
    key = extensions.get(PATH_KEY_EXTENSION)
    return key if isinstance(key, str) and key else None


def _with_key(scope: Scope, key: str) -> Scope:
    extensions: dict[str, Any] = dict(scope.get("extensions") or {})
    extensions[PATH_KEY_EXTENSION] = key
    return {**scope, "extensions": extensions}


def _mask_headers(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return [
        (name, _RAW_PATH.sub(rb"\1" + _MASKED_SEGMENT, value))
        if name.lower() in _LOCATION_HEADERS
        else (name, value)
        for name, value in headers
    ]


def _masking_send(send: Send) -> Send:
    async def masked(message: Message) -> None:
        if message["type"] == "http.response.start" and message.get("headers"):
            message = {**message, "headers": _mask_headers(message["headers"])}
        await send(message)

    return masked


class PathKeyMiddleware:
    """In Serve's proxy (or direct-ingress server), outside everything of Serve's: the key
    leaves the path for the scope extension; answers' ``Location`` headers are masked."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in _SCOPE_TYPES:
            await self.app(scope, receive, send)
            return
        scope, key = mask_path_key(scope)
        if key is not None:
            scope = _with_key(scope, key)
        await self.app(scope, receive, _masking_send(send))


class PathKeyRestoreMiddleware:
    """In the app, just outside the routes: the key back into the path the router matches (from
    the scope extension, or from the path itself where no proxy masked it), and ``Location``
    headers masked on the way out."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in _SCOPE_TYPES:
            await self.app(scope, receive, send)
            return
        key = path_key(scope)
        if key is None:
            masked, key = mask_path_key(scope)
            if key is None:
                await self.app(scope, receive, send)
                return
            scope = _with_key(masked, key)
        await self.app(_restored(scope, key), receive, _masking_send(send))


def _restored(scope: Scope, key: str) -> Scope:
    """``scope`` with ``key`` in the masked segment of its path (and raw path)."""
    path: str = scope.get("path", "")
    match = _PATH.search(path)
    if match is None or match.group(2) != MASKED_KEY:
        return scope  # the path was changed in between: nothing to restore
    restored = {**scope, "path": path[: match.end(1)] + key + path[match.end(2) :]}
    raw: bytes | None = scope.get("raw_path")
    if raw is not None:
        encoded = quote(key, safe="").encode("ascii")
        restored["raw_path"] = _RAW_PATH.sub(lambda _: _RAW_PATH_PREFIX + encoded, raw, count=1)
    return restored
