"""``/v1/runtimes``: the Python environments programs may run in (API.md, "Runtimes")."""

# No `from __future__ import annotations`: FastAPI reads the handlers' annotations at run time.
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from serve_app.http._openapi import RuntimeList, v1_errors
from serve_app.http.deps import CurrentKey, ServiceDep

__all__ = ["router"]

router = APIRouter(prefix="/v1/runtimes", tags=["runtimes"])


@router.get(
    "",
    summary="The Python environments programs may run in",
    response_model=RuntimeList,
    responses=v1_errors(),
)
async def list_runtimes(service: ServiceDep, key: CurrentKey) -> JSONResponse:
    items = [runtime.model_dump(mode="json") for runtime in await service.runtimes()]
    return JSONResponse({"items": items})
