"""``/v1/executions``: run one program, read it back (and the files it left), list the caller's.

``POST`` with ``Accept: text/event-stream`` answers the run as Server-Sent Events
(:mod:`serve_app.http._sse`); refused before it runs, it gets its ordinary JSON error.
"""

# No `from __future__ import annotations`: FastAPI reads the handlers' annotations at run time.
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from executors import ExecutionRecord
from serve_app.api import current_request_id
from serve_app.errors import (
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    OverloadedError,
    PolicyViolationError,
)
from serve_app.http._artifacts import download_headers
from serve_app.http._openapi import (
    BODY_ERRORS,
    IDEMPOTENCY_KEY,
    LOCATION,
    event_stream,
    v1_errors,
)
from serve_app.http._sse import EventStreamResponse, wants_event_stream
from serve_app.http.deps import (
    DEFAULT_PAGE_ITEMS,
    CurrentKey,
    ExecutionBody,
    IdempotencyKey,
    PageCursor,
    PageLimit,
    ServiceDep,
    WaitS,
)
from serve_app.http.service import ExecutionPage

__all__ = ["router"]

router = APIRouter(prefix="/v1/executions", tags=["executions"])


@router.post(
    "",
    summary="Run one program",
    response_model=ExecutionRecord,
    responses={
        200: {
            "description": "The finished record (`wait: true`); with `Accept: "
            "text/event-stream`, the run as Server-Sent Events.",
            "headers": LOCATION,
            "content": event_stream("The run"),
        },
        202: {
            "model": ExecutionRecord,
            "description": "The record, `queued` (`wait: false`): it runs in the background.",
            "headers": LOCATION,
        },
        **v1_errors(*BODY_ERRORS, PolicyViolationError, ConflictError, OverloadedError),
    },
    openapi_extra=IDEMPOTENCY_KEY,
)
async def create_execution(
    request: Request,
    service: ServiceDep,
    key: CurrentKey,
    body: ExecutionBody,
    idempotency_key: IdempotencyKey,
) -> Response:
    if wants_event_stream(request):
        stream = await service.stream_execution(
            key, body, idempotency_key=idempotency_key, request_id=current_request_id()
        )
        location = {"Location": f"/v1/executions/{stream.execution_id}"}
        return EventStreamResponse(stream, headers=location)
    created = await service.create(
        key, body, idempotency_key=idempotency_key, request_id=current_request_id()
    )
    record = created.record
    return JSONResponse(
        record.to_api(),
        status_code=200 if created.terminal else 202,
        headers={"Location": f"/v1/executions/{record.id}"},
    )


@router.get(
    "/{execution_id}",
    summary="Read an execution",
    response_model=ExecutionRecord,
    responses=v1_errors(NotFoundError, InvalidRequestError),
)
async def get_execution(
    execution_id: str, service: ServiceDep, key: CurrentKey, wait_s: WaitS = 0.0
) -> JSONResponse:
    record = await service.get(key, execution_id, wait_s)
    return JSONResponse(record.to_api())


# artifact_path: any file name, line breaks included (serve_app/http/_artifacts.py).
@router.get(
    "/{execution_id}/artifacts/{path:artifact_path}",
    summary="Download an artifact",
    response_class=Response,
    responses={
        200: {
            "description": "The file's bytes, as an attachment (`nosniff`, `CSP: sandbox`).",
            "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}},
            "headers": {"Content-Disposition": {"schema": {"type": "string"}}},
        },
        **v1_errors(NotFoundError),
    },
)
async def get_artifact(
    execution_id: str, path: str, service: ServiceDep, key: CurrentKey
) -> Response:
    artifact = await service.artifact(key, execution_id, path)
    return Response(artifact.content(), headers=download_headers(artifact))


@router.get(
    "",
    summary="List the key's executions, newest first",
    response_model=ExecutionPage,
    responses=v1_errors(InvalidRequestError),
)
async def list_executions(
    service: ServiceDep,
    key: CurrentKey,
    limit: PageLimit = DEFAULT_PAGE_ITEMS,
    cursor: PageCursor = None,
) -> JSONResponse:
    return JSONResponse((await service.page(key, limit, cursor)).to_api())
