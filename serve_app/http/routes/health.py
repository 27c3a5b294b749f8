"""``/health`` (liveness) and ``/health/ready`` (the checks of :mod:`serve_app.http._health`)."""

# No `from __future__ import annotations`: FastAPI reads the handlers' annotations at run time.
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from serve_app.errors import MethodNotAllowedError, RateLimitedError, UnauthorizedError
from serve_app.http._health import public_view
from serve_app.http._openapi import OPTIONAL_KEY, Liveness, ReadinessAnswer, errors
from serve_app.http.deps import OptionalKey, ReadinessDep

__all__ = ["router"]

router = APIRouter(prefix="/health", tags=["health"])


@router.get(
    "",
    summary="Liveness",
    response_model=Liveness,
    responses=errors(MethodNotAllowedError),
)
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/ready",
    summary="Readiness: each dependency's check",
    response_model=ReadinessAnswer,
    responses={
        200: {"description": "Ready: every check passed."},
        503: {
            "model": ReadinessAnswer,
            "description": "Degraded or unavailable: a check failed.",
        },
        **errors(UnauthorizedError, MethodNotAllowedError, RateLimitedError),
    },
    openapi_extra=OPTIONAL_KEY,
)
async def ready(key: OptionalKey, readiness: ReadinessDep) -> JSONResponse:
    # No key: the status for probes. A key: it must be valid (OptionalKey refuses it otherwise)
    # and then sees every detail. Never charged to its rate.
    status, body = await readiness.get()
    return JSONResponse(body if key is not None else public_view(body), status_code=status)
