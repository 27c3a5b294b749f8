"""The Serve config of the whole service, as cluster/serve-config.yaml writes it, deployed on a
test's local cluster (tests/support/ray_nodes.py) with ``serve run``: once, and again as a new
version (a rolling update).

Serve rolls a deployment's replicas when its actor options change; changing the application's
``args`` (or its ``runtime_env``) would give every deployment of it a new code version, the
ingress included. So :func:`with_executor_release` changes the executor deployment alone,
through the config's per-deployment override (``deployments``), as an operator would.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from serve_app.deployment import APP_NAME, EXECUTOR_NAME
from tests.support.cluster import load_cluster_yaml
from tests.support.ray_nodes import LocalCluster

__all__ = ["RELEASE_VARIABLE", "serve_deploy", "service_config", "with_executor_release"]

BIN = Path(sys.executable).parent
DEPLOY_TIMEOUT_S = 180
RELEASE_VARIABLE = "EXEC_AGENT_RELEASE"
"""An environment variable of the executor replicas that only says which release they are."""


def service_config(
    port: int,
    *,
    ingress: dict[str, Any] | None = None,
    executor: dict[str, Any] | None = None,
    args: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """cluster/serve-config.yaml, its proxies on 127.0.0.1:``port``: ``ingress`` and
    ``executor`` over its application's args of the same names, ``args`` over its other args
    (``graceful_shutdown_timeout_s``)."""
    config = load_cluster_yaml("serve-config.yaml")
    config["http_options"] = {"host": "127.0.0.1", "port": port}
    (app,) = config["applications"]
    assert app["name"] == APP_NAME
    app["args"]["ingress"].update(ingress or {})
    app["args"]["executor"].update(executor or {})
    app["args"].update(args or {})
    return config


def with_executor_release(
    config: dict[str, Any], release: str, actor_options: dict[str, Any]
) -> dict[str, Any]:
    """``config`` whose executor deployment runs with ``actor_options`` (Ray actor options,
    written out whole: Serve's override replaces the builder's) and
    ``RELEASE_VARIABLE=release`` in its environment: a new version of the executor only."""
    updated = copy.deepcopy(config)
    (app,) = updated["applications"]
    options = copy.deepcopy(actor_options)
    options.setdefault("runtime_env", {}).setdefault("env_vars", {})[RELEASE_VARIABLE] = release
    app["deployments"] = [{"name": EXECUTOR_NAME, "ray_actor_options": options}]
    return updated


def serve_deploy(cluster: LocalCluster, config: dict[str, Any], name: str) -> None:
    """``serve run --non-blocking`` of ``config`` (written as ``name``.yaml in the cluster's
    directory) against the cluster's head: the first deploys the service, the next update it."""
    path = cluster.root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    done = subprocess.run(
        [str(BIN / "serve"), "run", str(path), "--address", cluster.gcs_address, "--non-blocking"],
        env=cluster.env,
        cwd=cluster.root,
        capture_output=True,
        text=True,
        timeout=DEPLOY_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
