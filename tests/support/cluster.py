"""The files of cluster/ as data, and the service as Serve builds it from its config."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.paths import CLUSTER, TEST_DATA

__all__ = [
    "CLUSTER_BASE",
    "OVERLAYS",
    "PROMTOOL",
    "SERVE_SCHEMA",
    "alert_rules",
    "cluster_file",
    "deployments",
    "kustomize",
    "kustomize_build",
    "load_cluster_yaml",
    "load_cluster_yamls",
    "without_nulls",
]

CLUSTER_BASE = CLUSTER / "base"
"""The kustomize base: the manifests kustomize applies (cluster/base/kustomization.yaml)."""
OVERLAYS = ("dev", "production", "userns", "kata")
"""The overlays of cluster/overlays/, each a kustomization over the base."""

SERVE_SCHEMA = json.loads((TEST_DATA / "serve-config.schema.json").read_text())
"""Ray Serve's schema of a Serve config (tests/data/serve-config.schema.json)."""


PROMTOOL = str(Path(sys.executable).with_name("promtool"))
"""scripts/setup unpacks it there from Debian's ``prometheus`` package; missing, the tests fail."""


def alert_rules(rules: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every alerting rule of a Prometheus rules file's ``rules``, group after group."""
    for group in rules["groups"]:
        yield from group["rules"]


def cluster_file(name: str) -> Path:
    """cluster/``name``, or cluster/base/``name`` for the manifests of the kustomize base
    (rayservice.yaml, configmap.yaml, networkpolicy.yaml, ...): kustomize refuses a base whose
    directory holds its overlays, so the base has a directory of its own."""
    for directory in (CLUSTER, CLUSTER_BASE):
        if (directory / name).is_file():
            return directory / name
    raise FileNotFoundError(f"neither cluster/{name} nor cluster/base/{name}")


def load_cluster_yaml(name: str) -> Any:
    """cluster/``name`` (or cluster/base/``name``), one YAML document."""
    return yaml.safe_load(cluster_file(name).read_text())


def load_cluster_yamls(name: str) -> list[Any]:
    """cluster/``name``'s (or cluster/base/``name``'s) YAML documents, the empty ones left out."""
    return [doc for doc in yaml.safe_load_all(cluster_file(name).read_text()) if doc]


def kustomize() -> str:
    """The kustomize binary scripts/install-kustomize puts next to this interpreter (setup
    --test runs it); missing, the test fails and says how to get it."""
    for directory in (Path(sys.executable).parent, Path(sysconfig.get_path("scripts"))):
        found = shutil.which("kustomize", path=str(directory))
        if found:
            return found
    pytest.fail("kustomize is missing: run scripts/install-kustomize (./scripts/setup --test does)")


def kustomize_build(directory: Path) -> list[dict[str, Any]]:
    """The documents ``kustomize build directory`` prints: what ``kubectl apply -k`` applies."""
    done = subprocess.run(
        [kustomize(), "build", str(directory)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


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
