"""The API's routes, one :class:`~fastapi.APIRouter` per resource; their dependencies are the
typed aliases of :mod:`serve_app.http.deps`.

    health.py       ``/health``, ``/health/ready``
    executions.py   ``/v1/executions``
    batches.py      ``/v1/batches``
    sessions.py     ``/v1/sessions``
    runtimes.py     ``/v1/runtimes``
    ws.py           ``/v1/ws`` (WebSocket)
    playground.py   ``/`` (the playground page, ``PLAYGROUND``)
    compat.py       ``/compat/sandbox-fusion`` (SandboxFusion's API)

Each router carries its own prefix, so each of its routes' ``path`` is the whole template
(``/v1/executions/{execution_id}``): the ``route`` label of the metrics and the traces.
:func:`serve_app.http.build_api` includes :data:`ROUTERS`.
"""

from fastapi import APIRouter
from starlette.routing import BaseRoute

from serve_app.http.routes import (
    batches,
    compat,
    executions,
    health,
    playground,
    runtimes,
    sessions,
    ws,
)

__all__ = ["ROUTERS", "ROUTES"]

ROUTERS: tuple[APIRouter, ...] = (
    health.router,
    executions.router,
    batches.router,
    sessions.router,
    runtimes.router,
    ws.router,
    playground.router,
    compat.router,
)
"""In the order the app tries them."""

ROUTES: tuple[BaseRoute, ...] = tuple(route for router in ROUTERS for route in router.routes)
"""Every route of the API, in the app's order: what a request answered before routing (the body
guard's 413 and 415) is matched against for its ``route`` label. Not the app's own route list:
newer FastAPIs keep an included router there as one entry, without a ``path``."""
