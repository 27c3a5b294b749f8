"""The HTTP service: the API of ``API.md`` as a Ray Serve application.

    _service.py   :class:`ExecutionService`: keys, rate limits, persistence, the executor handle
    _health.py    ``/health/ready``'s checks
    _routes.py    :func:`build_api`: the FastAPI app (the routers + the edge of :mod:`serve_app.api`)
    routes/       the routes, one ``APIRouter`` per resource (health, executions, batches)
    deps.py       the routes' dependencies as typed aliases (service, key, bodies, query bounds)
    _ratelimit_headers.py  the ``RateLimit-*`` headers the charge leaves for every answer
    _ingress.py   :class:`ApiIngress`, the Serve deployment, and :func:`service_app`
    _builder.py   :func:`app_builder`: the whole service from a Serve config (``serve run``, KubeRay)

The ingress holds a ``DeploymentHandle`` to the executor deployment; its database engine and
limiter are built in the replica (the limiter binds to the replica's event loop).
"""

from serve_app.http._builder import ServiceAppArgs, app_builder
from serve_app.http._ingress import INGRESS_NAME, ApiIngress, service_app
from serve_app.http._routes import build_api
from serve_app.http._service import ExecutionService

__all__ = [
    "INGRESS_NAME",
    "ApiIngress",
    "ExecutionService",
    "ServiceAppArgs",
    "app_builder",
    "build_api",
    "service_app",
]
