"""``/v1/sessions``: live interpreters that keep their state between calls (API.md, Sessions).

A call with ``Accept: text/event-stream`` answers as Server-Sent Events
(:mod:`serve_app.http._sse`); refused before it runs (409, 410, ...), its ordinary JSON error.
"""

# No `from __future__ import annotations`: FastAPI reads the handlers' annotations at run time.
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from executors import ExecutionRecord
from serve_app.api import SessionInfo, current_request_id
from serve_app.errors import (
    InvalidRequestError,
    NotFoundError,
    OverloadedError,
    PolicyViolationError,
    SessionInUseError,
    SessionLimitError,
    SessionTerminatedError,
)
from serve_app.http._openapi import BODY_ERRORS, LOCATION, SessionList, event_stream, v1_errors
from serve_app.http._sse import EventStreamResponse, wants_event_stream
from serve_app.http.deps import (
    DEFAULT_PAGE_ITEMS,
    CurrentKey,
    PageCursor,
    PageLimit,
    ServiceDep,
    SessionBody,
    SessionCallBody,
)

__all__ = ["router"]

router = APIRouter(prefix="/v1/sessions", tags=["sessions"])


@router.post(
    "",
    summary="Start a session: a live interpreter that keeps its state",
    status_code=201,
    response_model=SessionInfo,
    responses={
        201: {"description": "The session, active.", "headers": LOCATION},
        **v1_errors(*BODY_ERRORS, SessionLimitError, SessionTerminatedError),
    },
)
async def create_session(service: ServiceDep, key: CurrentKey, body: SessionBody) -> JSONResponse:
    created = await service.create_session(key, body, request_id=current_request_id())
    return JSONResponse(
        created.to_api(), status_code=201, headers={"Location": f"/v1/sessions/{created.id}"}
    )


@router.post(
    "/{session_id}/executions",
    summary="Run code in the session",
    response_model=ExecutionRecord,
    responses={
        200: {
            "description": "The call's record (`session_id`, `result`); with `Accept: "
            "text/event-stream`, the call as Server-Sent Events.",
            "headers": LOCATION,
            "content": event_stream("The call"),
        },
        **v1_errors(
            *BODY_ERRORS,
            PolicyViolationError,
            NotFoundError,
            SessionInUseError,
            SessionTerminatedError,
            OverloadedError,
        ),
    },
)
async def call_session(
    request: Request, session_id: str, service: ServiceDep, key: CurrentKey, body: SessionCallBody
) -> Response:
    if wants_event_stream(request):
        stream = await service.stream_session_call(
            key, session_id, body, request_id=current_request_id()
        )
        location = {"Location": f"/v1/executions/{stream.execution_id}"}
        return EventStreamResponse(stream, headers=location)
    record = await service.session_call(key, session_id, body, request_id=current_request_id())
    return JSONResponse(record.to_api(), headers={"Location": f"/v1/executions/{record.id}"})


@router.get(
    "/{session_id}",
    summary="Read a session",
    response_model=SessionInfo,
    responses=v1_errors(NotFoundError),
)
async def get_session(session_id: str, service: ServiceDep, key: CurrentKey) -> JSONResponse:
    return JSONResponse((await service.session(key, session_id)).to_api())


@router.get(
    "",
    summary="List the key's sessions, newest first",
    response_model=SessionList,
    responses=v1_errors(InvalidRequestError),
)
async def list_sessions(
    service: ServiceDep,
    key: CurrentKey,
    limit: PageLimit = DEFAULT_PAGE_ITEMS,
    cursor: PageCursor = None,
) -> JSONResponse:
    return JSONResponse((await service.session_page(key, limit, cursor)).to_api())


@router.delete(
    "/{session_id}",
    summary="End a session (its interpreter killed at once)",
    status_code=204,
    response_class=Response,
    responses={
        204: {"description": "Ended (or it had ended already)."},
        **v1_errors(NotFoundError),
    },
)
async def delete_session(session_id: str, service: ServiceDep, key: CurrentKey) -> Response:
    await service.delete_session(key, session_id)
    return Response(status_code=204)
