"""Helpers of the HTTP tests: the service deployed on the session's Ray, ports, keys, errors."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from typing import Any

import httpx
from sqlalchemy import select

from serve_app.db import Database, migrate
from serve_app.db.models import ApiKey, Execution
from serve_app.settings import Settings


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the service binds it a moment later)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def run(client: httpx.Client, key: str, code: str, **fields: object) -> httpx.Response:
    """POST one execution of ``code`` (with any other request ``fields``) as ``key``."""
    return client.post("/v1/executions", json={"code": code, **fields}, headers=auth(key))


def error_code(response: httpx.Response) -> str:
    code: str = response.json()["error"]["code"]
    return code


EXECUTOR_TEST_CPUS = 0.5
INGRESS_TEST_CPUS = 0.1
"""What the test deployments reserve: the session's Ray has 2 CPUs for every module."""


@contextlib.contextmanager
def deployed_service(
    settings: Settings,
    app_name: str,
    *,
    executor_runtime_env: dict[str, Any] | None = None,
    ingress_runtime_env: dict[str, Any] | None = None,
) -> Iterator[Database]:
    """The whole service (API ingress + executor pool) on the session's Ray, as
    ``exec-agent serve`` deploys it, with Serve's proxy on ``settings.port``; its database,
    migrated. Deleted (drained) at the end."""
    from ray import serve

    from serve_app.deployment import IngressArgs, executor_app, service_app

    migrate.upgrade(settings)
    database = Database.from_settings(settings)
    serve.start(http_options={"host": "127.0.0.1", "port": settings.port})
    try:
        executor = executor_app(
            settings, num_cpus=EXECUTOR_TEST_CPUS, runtime_env=executor_runtime_env
        )
        app = service_app(
            settings,
            executor,
            IngressArgs(num_cpus=INGRESS_TEST_CPUS),
            runtime_env=ingress_runtime_env,
        )
        serve.run(app, name=app_name, route_prefix="/")
        yield database
    finally:
        serve.delete(app_name)
        serve.shutdown()  # type: ignore[no-untyped-call]
        database.dispose()


def stored_executions(database: Database, key_name: str) -> list[Execution]:
    """Every execution row of the key named ``key_name``, as stored."""
    with database.session() as session:
        rows = session.scalars(
            select(Execution)
            .join(ApiKey, ApiKey.id == Execution.key_id)
            .where(ApiKey.name == key_name)
        )
        return list(rows)
