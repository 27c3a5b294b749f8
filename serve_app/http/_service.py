"""The names the routes, readiness, the ingress and tests import from here, now in
:mod:`serve_app.http.service` (one module per job)."""

from serve_app.http.service import (
    AUTH_CACHE_TTL_S,
    MAX_WAIT_S,
    Created,
    ExecutionService,
    rate_limit_headers,
)

__all__ = ["AUTH_CACHE_TTL_S", "MAX_WAIT_S", "Created", "ExecutionService", "rate_limit_headers"]
