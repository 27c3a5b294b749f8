"""The whole service (API ingress + executor pool) deployed on the session's Ray, as
``exec-agent serve`` deploys it, for the tests that talk to it over HTTP."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from pydantic import SecretStr
from sqlalchemy import select

from serve_app.db import Database, keys, migrate
from serve_app.db.models import ApiKey, Execution
from serve_app.settings import Settings
from tests.support.ports import free_port

__all__ = [
    "EXECUTOR_TEST_CPUS",
    "INGRESS_TEST_CPUS",
    "DeployedService",
    "deployed_service",
    "service_settings",
]

EXECUTOR_TEST_CPUS = 0.5
INGRESS_TEST_CPUS = 0.1
"""What the test deployments reserve: the session's Ray has 2 CPUs for every module."""


def service_settings(database_url: str, secret: SecretStr, **overrides: Any) -> Settings:
    """Settings of a test deployment with Serve's proxy on a free port: one executor replica
    of two slots, 1000 runs a minute per key, no session host started ahead of a first
    session; ``overrides`` win."""
    values: dict[str, Any] = {
        "database_url": database_url,
        "api_key_secret": secret,
        "port": free_port(),
        "rate_limit_per_minute": 1000,
        "max_concurrent_executions": 2,
        "executor_num_replicas_min": 1,
        "executor_num_replicas_max": 1,
        "session_hosts_min": 0,
    }
    return Settings(**{**values, **overrides})


@contextlib.contextmanager
def deployed_service(
    settings: Settings,
    app_name: str,
    *,
    executor_runtime_env: dict[str, Any] | None = None,
    ingress_runtime_env: dict[str, Any] | None = None,
    runtime_executors: Sequence[str] = (),
) -> Iterator[Database]:
    """The whole service (API ingress + executor pool) on the session's Ray, as
    ``exec-agent serve`` deploys it, with Serve's proxy on ``settings.port``; its database,
    migrated. ``runtime_executors``: runtimes on an executor deployment of their own, sized as
    the main one. Deleted (drained) at the end."""
    from ray import serve

    from serve_app.deployment import IngressArgs, executor_app, service_app

    migrate.upgrade(settings)
    database = Database.from_settings(settings)
    serve.start(http_options={"host": "127.0.0.1", "port": settings.port})
    try:
        executor, *own = (
            executor_app(
                settings,
                num_cpus=EXECUTOR_TEST_CPUS,
                runtime_env=executor_runtime_env,
                runtime=runtime,
            )
            for runtime in (None, *runtime_executors)
        )
        app = service_app(
            settings,
            executor,
            IngressArgs(num_cpus=INGRESS_TEST_CPUS),
            runtime_env=ingress_runtime_env,
            runtime_executors=dict(zip(runtime_executors, own, strict=True)),
        )
        serve.run(app, name=app_name, route_prefix="/")
        yield database
    finally:
        serve.delete(app_name)
        serve.shutdown()  # type: ignore[no-untyped-call]
        database.dispose()


@dataclass
class DeployedService:
    """A deployed service as its tests see it: its database and settings, its URL, new keys
    and what it stored."""

    database: Database
    settings: Settings

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings.port}"

    def client(self, **options: Any) -> httpx.Client:
        """An HTTP client of the service (a 60 s timeout unless ``options`` say otherwise)."""
        return httpx.Client(base_url=self.url, **{"timeout": 60, **options})

    def new_key(
        self,
        name: str,
        *,
        rate_limit_per_minute: int | None = None,
        max_concurrency: int | None = None,
    ) -> str:
        """A new API key named ``name``, with limits of its own if given."""
        with self.database.session() as session:
            new = keys.create_key(
                session,
                self.settings.api_key_secret,
                name,
                rate_limit_per_minute=rate_limit_per_minute,
                max_concurrency=max_concurrency,
            )
            return new.plaintext

    def stored(self, key_name: str) -> list[Execution]:
        """Every execution row of the key named ``key_name``, as stored."""
        with self.database.session() as session:
            rows = session.scalars(
                select(Execution)
                .join(ApiKey, ApiKey.id == Execution.key_id)
                .where(ApiKey.name == key_name)
            )
            return list(rows)
