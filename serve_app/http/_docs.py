"""``GET /openapi.json`` and ``GET /docs`` (API.md, "Interface description"), without a key.

``/docs`` is Swagger UI over the document: a page of ours (``web/static/docs.html``) loading the
vendored bundle (``scripts/vendor-web-assets``) and our start-up script, all from this origin,
under a Content-Security-Policy of its own that allows nothing else: no inline script, no
remote origin, requests only to this origin ("Try it out" sends the key it is given to the API
itself). Without the vendored files (set-up not run) it answers 503 saying so. The app includes
:data:`router` only with ``API_DOCS`` on; off, both paths answer the usual 404.
"""

# No `from __future__ import annotations`: FastAPI reads the handlers' annotations at run time.
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from serve_app.api import ApiError, current_request_id, error_response
from serve_app.errors import UnavailableError
from serve_app.http._openapi import errors, openapi_document
from serve_app.web import STATIC_DIR, missing_vendor_files

__all__ = ["DOCS_CSP", "SWAGGER_UI_FILES", "router"]

SWAGGER_UI_FILES = ("swagger-ui-dist/swagger-ui-bundle.js", "swagger-ui-dist/swagger-ui.css")
DOCS_PAGE = STATIC_DIR / "docs.html"
DOCS_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_NOT_SET_UP = (
    "the documentation's files are not installed on this server: run scripts/vendor-web-assets"
)

router = APIRouter(tags=["documentation"])

_DOCS_UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    503: {**errors(UnavailableError)[503], "description": f"`unavailable`: {_NOT_SET_UP}"}
}


@router.get(
    "/openapi.json",
    summary="This document",
    responses={200: {"content": {"application/json": {"schema": {"type": "object"}}}}},
)
async def openapi(request: Request) -> JSONResponse:
    """The OpenAPI document of every route, with the server's own maxima."""
    return JSONResponse(openapi_document(request.app))


@router.get(
    "/docs",
    summary="Interactive documentation",
    response_class=HTMLResponse,
    responses={
        200: {"content": {"text/html": {"schema": {"type": "string"}}}},
        **_DOCS_UNAVAILABLE,
    },
)
async def docs() -> Response:
    """Swagger UI over ``/openapi.json``; every file from this server."""
    if missing_vendor_files(*SWAGGER_UI_FILES):
        kind = UnavailableError
        refusal = ApiError(kind.http_status, kind.code, _NOT_SET_UP)
        return error_response(refusal, current_request_id() or "-")
    page = DOCS_PAGE.read_text(encoding="utf-8")
    return HTMLResponse(page, headers={"Content-Security-Policy": DOCS_CSP})
