"""The ``Allow`` header of a 405: every method the path takes, not only one route's.

Each method of a path is a route of its own (``GET`` and ``POST /v1/executions``), and the
router answers 405 with the methods of the first route that matched the path alone: ``OPTIONS
/v1/executions`` said ``Allow: POST`` although ``GET`` is served too (RFC 9110 15.5.6: the
target's methods; found by the Schemathesis run of ``tests/test_openapi_fuzz.py``).
:class:`AllowHeaderMiddleware` puts the union of the matching routes' methods in its place.
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["AllowHeaderMiddleware", "allowed_methods"]

_ALLOW = b"allow"


def allowed_methods(routes: Iterable[BaseRoute], scope: Scope) -> list[str]:
    """The methods of every route whose path matches ``scope``'s, sorted."""
    methods: set[str] = set()
    for route in routes:
        match, _ = route.matches(scope)
        if match is not Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return sorted(methods)


class AllowHeaderMiddleware:
    """A 405's ``Allow`` from all of ``routes`` (the app's, with their whole paths)."""

    def __init__(self, app: ASGIApp, *, routes: tuple[BaseRoute, ...]) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_allow(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 405:
                methods = allowed_methods(self.routes, scope)
                if methods:
                    headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != _ALLOW]
                    headers.append((_ALLOW, ", ".join(methods).encode("ascii")))
                    message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_allow)
