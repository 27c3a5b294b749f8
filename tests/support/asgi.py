"""A FastAPI app called in-process through httpx's ASGI transport, without a server."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from fastapi import FastAPI

__all__ = ["call", "served_call"]


def call(app: FastAPI, method: str, url: str, **kwargs: Any) -> httpx.Response:
    """One request to ``app`` (``kwargs`` as httpx takes them) and its answer; an exception
    that escapes the app is raised here."""
    return asyncio.run(_request(app, method, url, kwargs, raise_app_exceptions=True))


def served_call(app: FastAPI, method: str, url: str, **kwargs: Any) -> httpx.Response:
    """As :func:`call`, but an exception that escapes the app is answered as a server answers
    it (a 500), not raised."""
    return asyncio.run(_request(app, method, url, kwargs, raise_app_exceptions=False))


async def _request(
    app: FastAPI, method: str, url: str, kwargs: dict[str, Any], *, raise_app_exceptions: bool
) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        return await client.request(method, url, **kwargs)
