"""``/v1/batches``: run many programs at once, read them back together."""

# No `from __future__ import annotations`: FastAPI reads the handlers' annotations at run time.
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from serve_app.api import current_request_id
from serve_app.errors import InvalidRequestError, NotFoundError, OverloadedError
from serve_app.http._openapi import BODY_ERRORS, LOCATION, v1_errors
from serve_app.http.deps import AuthenticatedKey, BatchBody, CurrentKey, ServiceDep, WaitS, charge
from serve_app.http.service import BatchAccepted, BatchAnswer

__all__ = ["router"]

router = APIRouter(prefix="/v1/batches", tags=["batches"])


@router.post(
    "",
    summary="Run many programs",
    status_code=202,
    response_model=BatchAccepted,
    responses={
        202: {"description": "The batch, its items queued.", "headers": LOCATION},
        **v1_errors(*BODY_ERRORS, OverloadedError),
    },
)
async def create_batch(
    request: Request, service: ServiceDep, key: AuthenticatedKey, body: BatchBody
) -> JSONResponse:
    # Refused for the backlog before the charge: a refused batch costs no allowance.
    service.check_batch_room(key, len(body.items))
    await charge(request, service, key, len(body.items))
    created = await service.create_batch(key, body, request_id=current_request_id())
    return JSONResponse(
        created.to_api(), status_code=202, headers={"Location": f"/v1/batches/{created.id}"}
    )


@router.get(
    "/{batch_id}",
    summary="Read a batch: its records in request order",
    response_model=BatchAnswer,
    responses=v1_errors(NotFoundError, InvalidRequestError),
)
async def get_batch(
    batch_id: str, service: ServiceDep, key: CurrentKey, wait_s: WaitS = 0.0
) -> JSONResponse:
    return JSONResponse((await service.batch(key, batch_id, wait_s)).to_api())
