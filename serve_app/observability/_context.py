"""The id of the request being served: what every log line, span and error report carries.

It lives here, below the API's middleware (which sets it) and beside the observability that
reads it, so that neither package imports the other's modules back.
"""

from __future__ import annotations

from contextvars import ContextVar, Token

__all__ = ["current_request_id", "reset_request_id", "set_request_id"]

_request_id: ContextVar[str | None] = ContextVar("exec_agent_request_id", default=None)


def current_request_id() -> str | None:
    """The id of the request being served in this context (``None`` outside a request)."""
    return _request_id.get()


def set_request_id(request_id: str) -> Token[str | None]:
    """Make ``request_id`` this context's; give the token back to :func:`reset_request_id`."""
    return _request_id.set(request_id)


def reset_request_id(token: Token[str | None]) -> None:
    _request_id.reset(token)
