"""The HTTP edge of the API that needs neither Ray nor a database.

- :mod:`.schemas`: the request bodies of ``API.md``, strict, bounded by :class:`RequestBounds`;
- :mod:`.json_body`: body bytes to a validated model (400 / 422, never 500);
- :mod:`.errors`: the one mapping from exceptions to the API's error format and statuses;
- :mod:`.middleware`: request ids, security headers, CORS, the body guard (415 / 413).

An app installs the whole edge with :func:`install_edge` and reads bodies with
:func:`read_model` (or :func:`body_parser` as a FastAPI dependency).
"""

from serve_app.api.errors import ApiError, api_error, error_response, install_error_handlers
from serve_app.api.json_body import (
    body_parser,
    decode_json,
    parse_body,
    read_body,
    read_model,
    request_bounds,
)
from serve_app.api.middleware import (
    REQUEST_ID_HEADER,
    BodyGuardMiddleware,
    RequestContextMiddleware,
    RequestIdLogFilter,
    current_request_id,
    install_edge,
    proxy_middlewares,
)
from serve_app.api.schemas import (
    MAX_CASES,
    MAX_JSON_DEPTH,
    BatchCreate,
    BatchItem,
    Case,
    ExecutionCreate,
    RequestBounds,
    SessionCall,
    SessionCreate,
    SessionInfo,
    validate_body,
)

__all__ = [
    "MAX_CASES",
    "MAX_JSON_DEPTH",
    "REQUEST_ID_HEADER",
    "ApiError",
    "BatchCreate",
    "BatchItem",
    "BodyGuardMiddleware",
    "Case",
    "ExecutionCreate",
    "RequestBounds",
    "RequestContextMiddleware",
    "RequestIdLogFilter",
    "SessionCall",
    "SessionCreate",
    "SessionInfo",
    "api_error",
    "body_parser",
    "current_request_id",
    "decode_json",
    "error_response",
    "install_edge",
    "install_error_handlers",
    "parse_body",
    "proxy_middlewares",
    "read_body",
    "read_model",
    "request_bounds",
    "validate_body",
]
