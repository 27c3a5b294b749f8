"""The ingress deployment's class: one FastAPI app per replica, in front of the executor pool.

Ray Serve builds the app in the replica (``__serve_build_asgi_app__``), after the constructor
has made the database engine and the limiter there: neither travels between processes, and the
limiter binds to the replica's event loop. The API (:mod:`serve_app.http`, which imports Ray)
is imported there too: ``exec-agent serve`` configures its logging before Ray is imported.

The replica is the only process of the service that holds secrets: it is bound the settings
without them (:class:`~serve_app.settings.PublicSettings`: what is bound, Ray keeps in its GCS)
and reads them itself, from ``secrets_dir`` or its own ``SECRETS_DIR`` and environment.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from serve_app.observability import configure_process, flush_tracing

if TYPE_CHECKING:
    from fastapi import FastAPI

    from serve_app.settings import Settings

__all__ = ["INGRESS_NAME", "ApiIngress"]

INGRESS_NAME = "ApiIngress"


class ApiIngress:
    """The HTTP API's deployment class; ``executor`` is the executor deployment's handle,
    ``runtime_executors`` the handles of the runtimes' own (runtime: handle);
    ``session_label_selector`` the Ray node labels session hosts must run on (the executors').
    ``settings``: :class:`~serve_app.settings.PublicSettings`, completed here with the secrets
    of ``secrets_dir`` (None: this process's ``SECRETS_DIR``) or of this process's environment
    (:func:`~serve_app.settings.with_secrets`); full settings are taken as they are."""

    def __init__(
        self,
        settings: Settings,
        executor: Any,
        runtime_executors: dict[str, Any] | None = None,
        session_label_selector: dict[str, str] | None = None,
        secrets_dir: str | None = None,
    ) -> None:
        from serve_app.settings import PublicSettings, with_secrets

        if isinstance(settings, PublicSettings):
            settings = with_secrets(settings, secrets_dir)
        # JSON logs, Sentry (SENTRY_DSN), tracing (OTEL_EXPORTER_OTLP_ENDPOINT)
        configure_process(settings, component="ingress")
        from executors import SessionHosts
        from serve_app.db import Database
        from serve_app.http import ExecutionService
        from serve_app.ratelimit import build_rate_limiter

        database = Database.from_settings(settings)
        limiter = build_rate_limiter(settings)
        # The session hosts are Ray actors of their own: this replica only knows them by name.
        options = settings.session_host_options(label_selector=session_label_selector)
        hosts = SessionHosts(settings.sandbox_config(), options)
        self.settings = settings
        self.service = ExecutionService(
            settings,
            database,
            limiter,
            executor,
            runtime_executors=runtime_executors,
            session_hosts=hosts,
        )

    def __serve_build_asgi_app__(self) -> FastAPI:
        from serve_app.http import build_api

        return build_api(self.settings, self.service)

    def __del__(self) -> None:
        # Serve calls this as the replica stops, after the app's shutdown (which let background
        # runs finish); Ray then ends the process without atexit: send the last spans now.
        flush_tracing()
