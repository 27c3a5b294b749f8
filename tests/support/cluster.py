"""The files of cluster/ as data, and the service as Serve builds it from its config."""

from __future__ import annotations

import json
from typing import Any

import yaml

from tests.support.paths import CLUSTER, TEST_DATA

__all__ = [
    "SERVE_SCHEMA",
    "deployments",
    "load_cluster_yaml",
    "load_cluster_yamls",
    "without_nulls",
]

SERVE_SCHEMA = json.loads((TEST_DATA / "serve-config.schema.json").read_text())
"""Ray Serve's schema of a Serve config (tests/data/serve-config.schema.json)."""


def load_cluster_yaml(name: str) -> Any:
    """cluster/``name``, one YAML document."""
    return yaml.safe_load((CLUSTER / name).read_text())


def load_cluster_yamls(name: str) -> list[Any]:
    """cluster/``name``'s YAML documents, the empty ones left out."""
    return [doc for doc in yaml.safe_load_all((CLUSTER / name).read_text()) if doc]


def without_nulls(value: Any) -> Any:
    """``value`` as the API server stores it: it prunes nulls, and the schemas are written for
    what it stores."""
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_nulls(v) for v in value]
    return value


def deployments(app: Any) -> dict[str, Any]:
    """The deployments of a built service by name: the ingress, the executor it binds and the
    runtimes' own executors (``runtime_executors``).

    ``Application._bound_deployment`` is Serve's own (private) view of what ``serve.run`` and
    a config deploy get; there is no public one without a running cluster.
    """
    ingress = app._bound_deployment
    (executor_app,) = [arg for arg in ingress.init_args if hasattr(arg, "_bound_deployment")]
    own = ingress.init_kwargs.get("runtime_executors", {}).values()
    executors = [bound._bound_deployment for bound in (executor_app, *own)]
    return {ingress.name: ingress, **{executor.name: executor for executor in executors}}
