"""The HTTP service: the API of ``API.md`` as a Ray Serve application.

    service/      :class:`ExecutionService` and its parts, one job a module (auth, admission,
                  runner, results, executions, batches, ...)
    _health.py    ``/health/ready``'s checks
    _app.py       :func:`build_api`: the FastAPI app (the routers + the edge of :mod:`serve_app.api`)
    routes/       the routes, one ``APIRouter`` per resource (health, executions, batches)
    deps.py       the routes' dependencies as typed aliases (service, key, bodies, query bounds)
    _ratelimit_headers.py  the ``RateLimit-*`` headers the charge leaves for every answer

The Serve deployment around them (:class:`~serve_app.deployment.ApiIngress`) holds a
``DeploymentHandle`` to the executor deployment; see :mod:`serve_app.deployment`.
"""

from serve_app.http._app import build_api
from serve_app.http.service import ExecutionService

__all__ = [
    "ExecutionService",
    "build_api",
]
