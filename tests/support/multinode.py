"""The whole service on a local cluster of several Ray nodes (tests/support/ray_nodes.py), as
the multi-node tests see it: the nodes as cluster/base/rayservice.yaml makes them, the
``exec-agent`` CLI run as an operator runs it against them, the deployed service (an HTTP
client, a key, the database and every execution it accepted) and its removal.

Used by tests/test_multinode.py, tests/test_rolling_update.py and
tests/test_gcs_fault_tolerance.py.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select

from executors import TERMINAL_STATUSES
from serve_app.db import Database
from serve_app.db.models import ApiKey, Execution
from serve_app.deployment import APP_NAME
from tests.support.api import auth
from tests.support.polling import eventually
from tests.support.ray_nodes import ActorInfo, LocalCluster, NodeSpec, RayNode

__all__ = [
    "EXECUTOR",
    "HEAD",
    "ROLE",
    "START_TIMEOUT_S",
    "WORKERS",
    "MultiNodeService",
    "cli",
    "ready",
    "serve_delete",
    "wait_until_deployed",
]

BIN = Path(sys.executable).parent
ROLE = "exec-agent/role"
HEAD = NodeSpec("head", num_cpus=0, labels={ROLE: "api"})
"""As the RayService's head and api pods at once: no CPUs, so no executor replica (one CPU
each) can land there."""
WORKERS = [NodeSpec(f"worker-{n}", num_cpus=2, labels={ROLE: "sandbox"}) for n in (1, 2)]
"""Two sandbox workers, 2 CPUs each."""
EXECUTOR = f"ServeReplica:{APP_NAME}:SandboxExecutor"
"""The actor class of an executor replica (Serve's ``ServeReplica:<app>:<deployment>``)."""
START_TIMEOUT_S = 120.0
FINISH_TIMEOUT_S = 240.0


@dataclass
class MultiNodeService:
    """The deployed service as the tests see it: the cluster, an HTTP client and key, the
    database, and every execution the service accepted."""

    cluster: LocalCluster
    client: httpx.Client
    key: str
    key_name: str
    """The name the key was created with (its executions are the stored ones)."""
    database: Database
    accepted: list[str] = field(default_factory=list)

    def submit(self, code: str) -> str:
        """Queue a run (``wait: false``); its id, once accepted."""
        body = {"code": code, "wait": False, "limits": {"wall_timeout_s": 10}}
        answer = self.client.post("/v1/executions", json=body, headers=auth(self.key))
        assert answer.status_code == 202, answer.text
        execution_id: str = answer.json()["id"]
        self.accepted.append(execution_id)
        return execution_id

    def run(self, code: str) -> dict[str, Any]:
        """Run ``code`` and wait for its record."""
        answer = self.client.post("/v1/executions", json={"code": code}, headers=auth(self.key))
        assert answer.status_code == 200, answer.text
        self.accepted.append(answer.json()["id"])
        record: dict[str, Any] = answer.json()
        return record

    def status(self, execution_id: str, wait_s: float = 0.0) -> str:
        answer = self.client.get(
            f"/v1/executions/{execution_id}",
            params={"wait_s": wait_s},
            headers=auth(self.key),
        )
        assert answer.status_code == 200, answer.text
        status: str = answer.json()["status"]
        return status

    def finish(self, ids: list[str]) -> dict[str, str]:
        """Wait for every execution of ``ids`` to end; their terminal statuses."""
        deadline = time.monotonic() + FINISH_TIMEOUT_S
        statuses: dict[str, str] = {}
        for execution_id in ids:
            status = self.status(execution_id)
            while status not in TERMINAL_STATUSES and time.monotonic() < deadline:
                status = self.status(execution_id, wait_s=10)
            statuses[execution_id] = status
        unfinished = {i: s for i, s in statuses.items() if s not in TERMINAL_STATUSES}
        assert not unfinished, f"not terminal within {FINISH_TIMEOUT_S} s: {unfinished}"
        return statuses

    def executors(self) -> list[ActorInfo]:
        """The executor replicas alive now."""
        return self.cluster.actors(EXECUTOR)

    def executors_on(self) -> Counter[str]:
        """How many executor replicas each node runs now, by node name."""
        return Counter(self.node(actor).name for actor in self.executors())

    def node(self, actor: ActorInfo) -> RayNode:
        node = self.cluster.node_of(actor.node_id)
        assert node is not None, f"{actor} runs on a node not ours"
        return node

    def stored(self) -> dict[str, str]:
        """The key's executions as stored: status by id."""
        with self.database.session() as session:
            rows = session.execute(
                select(Execution.id, Execution.status)
                .join(ApiKey, ApiKey.id == Execution.key_id)
                .where(ApiKey.name == self.key_name)
            )
            return {str(row.id): str(row.status) for row in rows}


def cli(cluster: LocalCluster, *argv: str) -> str:
    """``exec-agent argv...`` with the cluster's environment, as an operator runs it; its
    standard output."""
    done = subprocess.run(
        [str(BIN / "exec-agent"), *argv],
        env=cluster.env,
        cwd=cluster.root,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


SERVE_DELETE = """\
import sys
import ray
from ray import serve
ray.init(address=sys.argv[1], namespace="serve", logging_level="ERROR")
serve.delete(sys.argv[2])
"""


def serve_delete(cluster: LocalCluster) -> None:
    """Delete the application, as ``exec-agent serve`` does before it stops: its replicas
    drain and close their sandbox pools (their cgroups with them), which killing the nodes
    would leave behind. Best effort: the nodes are killed next in any case."""
    with contextlib.suppress(subprocess.TimeoutExpired):
        subprocess.run(
            [sys.executable, "-c", SERVE_DELETE, cluster.gcs_address, APP_NAME],
            env=cluster.env,
            cwd=cluster.root,
            capture_output=True,
            timeout=120,
            check=False,
        )


def ready(client: httpx.Client) -> bool:
    try:
        return client.get("/health/ready").status_code == 200
    except httpx.HTTPError:
        return False


def wait_until_deployed(service: MultiNodeService, executors: int) -> None:
    """Until the service is ready with ``executors`` executor replicas (their
    ``min_replicas``); else fail showing Serve's controller log."""
    try:
        eventually(lambda: ready(service.client), START_TIMEOUT_S, "the service is ready")
        eventually(
            lambda: len(service.executors()) == executors,
            START_TIMEOUT_S,
            "the executor's min_replicas run",
        )
    except AssertionError as exc:
        logs = service.cluster.head.session_logs("serve/controller_*.log")
        raise AssertionError(f"{exc}{logs}") from None
