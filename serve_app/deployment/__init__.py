"""Deployment: the service's two Serve applications, Ray, and ``exec-agent serve``.

    _args.py     :class:`ServiceAppArgs` (:class:`IngressArgs`, :class:`ExecutorArgs`): a Serve
                 config's ``args``, every check written once; :func:`service_settings`
    _ingress.py  :class:`ApiIngress`, the HTTP API's deployment class (the one secrets reach)
    _secrets.py  :func:`private_secrets`: the secrets' way to the ingress, a private directory
    _apps.py     :func:`executor_app` (a runtime's own: :func:`executor_name`),
                 :func:`service_app`, :func:`build_service_app` and :func:`app_builder`
                 (``import_path: serve_app.deployment:app_builder``)
    _ray.py      :func:`start_ray`: start a local Ray or join ``RAY_ADDRESS``
    _serve.py    :func:`run_service`: ``exec-agent serve`` (``SERVE_INGRESS``: the ingress)
    _demo.py     :func:`run_demo`: ``exec-agent serve --demo``

The engine's own deployment (the executor actor, :func:`executors.build_executor_app`) stays in
:mod:`executors`; this package sizes it from the settings. Ray is imported only when used.
"""

from serve_app.deployment._apps import (
    EXECUTOR_NAME,
    app_builder,
    build_service_app,
    executor_app,
    executor_name,
    service_app,
)
from serve_app.deployment._args import (
    INGRESS_DRAIN_MARGIN_S,
    ExecutorArgs,
    IngressArgs,
    ServiceAppArgs,
    executor_settings,
    service_settings,
)
from serve_app.deployment._demo import run_demo
from serve_app.deployment._ingress import INGRESS_NAME, ApiIngress
from serve_app.deployment._ray import APP_NAME, PROXY_CALLBACK_VARIABLE, metrics_url, start_ray
from serve_app.deployment._secrets import (
    INGRESS_SECRETS,
    private_secrets,
    scrub_secret_environment,
    write_secrets,
)
from serve_app.deployment._serve import SERVE_TUNING, choose_ingress, haproxy_binary, run_service

__all__ = [
    "APP_NAME",
    "EXECUTOR_NAME",
    "INGRESS_DRAIN_MARGIN_S",
    "INGRESS_NAME",
    "INGRESS_SECRETS",
    "PROXY_CALLBACK_VARIABLE",
    "SERVE_TUNING",
    "ApiIngress",
    "ExecutorArgs",
    "IngressArgs",
    "ServiceAppArgs",
    "app_builder",
    "build_service_app",
    "choose_ingress",
    "executor_app",
    "executor_name",
    "executor_settings",
    "haproxy_binary",
    "metrics_url",
    "private_secrets",
    "run_demo",
    "run_service",
    "scrub_secret_environment",
    "service_app",
    "service_settings",
    "start_ray",
    "write_secrets",
]
