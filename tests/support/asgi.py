"""A FastAPI app called in-process through httpx's ASGI transport, without a server."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from fastapi import FastAPI

__all__ = ["call"]


def call(
    app: FastAPI, method: str, url: str, *, raise_app_exceptions: bool = True, **kwargs: Any
) -> httpx.Response:
    """One request to ``app`` (``kwargs`` as httpx takes them) and its answer.

    An exception that escapes the app is raised here; without ``raise_app_exceptions``, the
    answer is what the server would send instead (a 500).
    """

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            return await client.request(method, url, **kwargs)

    return asyncio.run(go())
