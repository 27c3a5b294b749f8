"""The ``RateLimit-*`` headers on every ``/v1/`` answer to an authenticated caller, errors included.

The charging dependency (:func:`serve_app.http.deps.charge`) leaves them in the request's state
before it may refuse; :class:`RateLimitHeadersMiddleware` adds them to whatever answer goes out,
the edge's error answers included.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["RateLimitHeadersMiddleware", "leave_headers"]

STATE_HEADERS = "ratelimit_headers"


def leave_headers(request: Request, headers: dict[str, str]) -> None:
    """Have :class:`RateLimitHeadersMiddleware` add ``headers`` to the answer to ``request``."""
    setattr(request.state, STATE_HEADERS, headers)


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
