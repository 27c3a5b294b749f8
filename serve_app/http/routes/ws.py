"""``GET /v1/ws``: interactive programs over a WebSocket (API.md, "Streaming output").

The handshake is always accepted: every refusal, authentication's included, is an error event
the client can read before the close (1008 for a refused key, 1009 for a message over
``WS_MAX_MESSAGE_BYTES``). The protocol is :mod:`serve_app.http.service.interactive`'s.
Frames are JSON objects in text frames; a binary frame is answered ``unsupported_media_type``
and the connection goes on.
"""

# No `from __future__ import annotations`: FastAPI reads the handlers' annotations at run time.
import uuid

from fastapi import APIRouter, WebSocket

from serve_app.api import RequestBounds
from serve_app.http.deps import presented_key
from serve_app.http.service import ExecutionService
from serve_app.http.service.interactive import Conversation

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["streaming"])


@router.websocket("/ws")
async def interactive(websocket: WebSocket) -> None:
    service = websocket.app.state.service
    bounds = websocket.app.state.request_bounds
    if not isinstance(service, ExecutionService) or not isinstance(bounds, RequestBounds):
        raise TypeError("no service on the app: call attach(app, service) and install_edge")
    headers = websocket.headers
    # No key header: the key comes in the first message. A header without a usable key ("")
    # is refused as a missing key, as over HTTP.
    sent = "authorization" in headers or "x-api-key" in headers
    presented = (presented_key(websocket) or "") if sent else None
    await websocket.accept()
    conversation = Conversation(
        service,
        websocket,
        bounds,
        presented=presented,
        source_address=websocket.client.host if websocket.client else None,
        connection_id=uuid.uuid4().hex,
    )
    await conversation.serve()
