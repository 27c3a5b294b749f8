"""Several machines (issue 12): the service on a Ray cluster of a head and two worker nodes.

Three ``ray start`` processes on this machine stand for three machines (tests/support/
ray_nodes.py), as cluster/base/rayservice.yaml makes them: the head stands for the head and the
api pods at once (``exec-agent/role=api``, no CPUs; one ingress and one proxy, where the cluster
runs at least two of each), and two sandbox workers (``exec-agent/role=sandbox``, 2 CPUs each).
Every node gets the service's settings in its environment: production, the
machine's PostgreSQL (a schema of this module's own), a real API key secret. The database is
migrated and a key created with the ``exec-agent`` CLI, and the application is deployed with
``serve run`` of cluster/serve-config.yaml itself, its args sized for this machine: executor
replicas of one CPU (two fit a worker), between two and three of them, and an autoscaler that
waits seconds, not minutes, before it adds or removes one.

The tests, in order (the last one loses a node for good):

- executor replicas run on the worker nodes only; the ingress, Serve's controller and its proxy
  on the head, which runs no sandbox;
- Serve's autoscaler adds an executor replica under a queue of slow runs and removes it once
  idle;
- a worker node killed under load (every process of it, by its own process id) leaves every
  accepted execution with one terminal record, and Serve replaces its replicas on the other
  worker, where new runs succeed.

Deadlines bound the polling only; nothing here asserts a duration.
"""

from __future__ import annotations

import os
import secrets
import time
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from serve_app.api.middleware import PROXY_MIDDLEWARES_IMPORT_PATH
from serve_app.db import Database
from serve_app.deployment import APP_NAME, INGRESS_NAME, PROXY_CALLBACK_VARIABLE, SERVE_TUNING
from tests.support.databases import postgres_schema
from tests.support.multinode import (
    HEAD,
    ROLE,
    WORKERS,
    MultiNodeService,
    cli,
    serve_delete,
    wait_until_deployed,
)
from tests.support.polling import eventually
from tests.support.ports import free_port
from tests.support.ray_nodes import ActorInfo, LocalCluster, RayNode, local_cluster
from tests.support.serve_deploy import serve_deploy, service_config
from tests.support.settings import settings_variables

pytestmark = [pytest.mark.ray, pytest.mark.sandbox, pytest.mark.slow]


HEAD_ACTORS = (f"ServeReplica:{APP_NAME}:{INGRESS_NAME}", "ServeController", "ProxyActor")
EXECUTOR_ARGS = {
    "num_cpus": 1,  # two replicas fit a worker: the survivor of a lost node can take them
    "min_replicas": 2,
    "max_replicas": 3,
    "upscale_delay_s": 1,
    "downscale_delay_s": 5,
}
"""The executor's args over cluster/serve-config.yaml's. With at least two replicas and at most
three, two a node, the node killed (the one with the most replicas) leaves the survivor fewer
than ``min_replicas``: Serve must start a replacement there."""
SLOW_RUN = "import time\ntime.sleep(3)\nprint('slept')"
QUEUE = 24
"""Slow runs queued at once: 18 s of work for the two replicas' four slots (Serve's handles
report their load every 10 s)."""
KEY_NAME = "multinode"
SCALE_TIMEOUT_S = 90.0


def serve_run(cluster: LocalCluster, port: int) -> None:
    """``serve run`` of cluster/serve-config.yaml against the cluster's head, with Serve's proxy
    on 127.0.0.1:``port`` and the test's executor args."""
    # This machine's memory: one ingress is enough here, with one proxy beside it on the head
    # (the nodes share one machine's ports).
    config = service_config(
        port, ingress={"min_replicas": 1, "max_replicas": 1}, executor=EXECUTOR_ARGS
    )
    config["proxy_location"] = "HeadOnly"
    serve_deploy(cluster, config, "serve-config")


@pytest.fixture(scope="module")
def service() -> Iterator[MultiNodeService]:
    """The service deployed on a head and two workers, as cluster/ deploys it."""
    with postgres_schema() as database_url:
        env = {
            "ENVIRONMENT": "production",
            "DATABASE_URL": database_url,
            "API_KEY_SECRET": secrets.token_hex(32),
            "RATE_LIMIT_PER_MINUTE": "1000",
            # What cluster/Dockerfile sets for every node of the image.
            PROXY_CALLBACK_VARIABLE: PROXY_MIDDLEWARES_IMPORT_PATH,
            **SERVE_TUNING,
        }
        unset = settings_variables(old_names=True)
        with local_cluster(HEAD, WORKERS, env, unset=unset) as cluster:
            cli(cluster, "db", "upgrade")  # the RayService's init container
            created = cli(cluster, "keys", "create", "--name", KEY_NAME, "--max-concurrent", "64")
            key = created.strip().splitlines()[-1]
            port = free_port()
            serve_run(cluster, port)
            database = Database.from_url(database_url)
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
                deployed = MultiNodeService(cluster, client, key, KEY_NAME, database)
                try:
                    wait_until_deployed(deployed, EXECUTOR_ARGS["min_replicas"])
                    yield deployed
                finally:
                    database.dispose()
                    serve_delete(cluster)


def labels_by_node(cluster: LocalCluster) -> dict[str, dict[str, str]]:
    return {info.node_id: info.labels for info in cluster.probe.nodes()}


def check_executors_on_workers(service: MultiNodeService, actors: list[ActorInfo]) -> None:
    """Every replica of ``actors`` on a sandbox worker, as Ray places it and as this machine's
    processes show it (in a worker's session, never the head's)."""
    labels = labels_by_node(service.cluster)
    assert [labels[actor.node_id].get(ROLE) for actor in actors] == ["sandbox"] * len(actors)
    workers = {node.process.pid: node.name for node in service.cluster.workers}
    for actor in actors:
        node = service.node(actor)
        assert node in service.cluster.workers, f"{actor} on {node.name}"
        assert workers.get(os.getsid(actor.pid)) == node.name, actor


def test_executor_replicas_run_on_the_worker_nodes_only(service: MultiNodeService) -> None:
    cluster = service.cluster
    labels = labels_by_node(cluster)
    assert sorted(info.get(ROLE, "") for info in labels.values()) == ["api", "sandbox", "sandbox"]
    head = cluster.info(cluster.head)
    assert head is not None and head.is_head

    executors = service.executors()
    assert len(executors) == EXECUTOR_ARGS["min_replicas"]
    check_executors_on_workers(service, executors)
    for name in HEAD_ACTORS:
        (actor,) = cluster.actors(name)
        assert service.node(actor) is cluster.head, actor
        assert labels[actor.node_id][ROLE] == "api"

    # The head runs no sandbox: no bubblewrap among its processes; the workers' replicas have
    # their slots' sandboxes.
    def sandboxes(node: RayNode) -> int:
        return list(node.process_names().values()).count("bwrap")

    assert sandboxes(cluster.head) == 0
    assert sum(map(sandboxes, cluster.workers)) >= len(executors)

    record = service.run("print(6 * 7)")
    assert (record["status"], record["stdout"]) == ("ok", "42\n")


def test_serve_adds_an_executor_replica_under_a_queue_and_removes_it_idle(
    service: MultiNodeService,
) -> None:
    low, high = EXECUTOR_ARGS["min_replicas"], EXECUTOR_ARGS["max_replicas"]
    assert len(service.executors()) == low
    ids = [service.submit(SLOW_RUN) for _ in range(QUEUE)]

    def scaled_up() -> list[ActorInfo] | None:
        found = service.executors()
        return found if len(found) == high else None

    grown = eventually(
        scaled_up,
        SCALE_TIMEOUT_S,
        f"{high} executor replicas under a queue of {QUEUE}",
        interval_s=0.5,
    )
    check_executors_on_workers(service, grown)
    # Three replicas, two at most a worker: the pool spans both machines.
    assert {service.node(actor).name for actor in grown} == {w.name for w in WORKERS}
    assert set(service.finish(ids).values()) == {"ok"}
    eventually(
        lambda: len(service.executors()) == low,
        SCALE_TIMEOUT_S,
        f"back to {low} executor replicas once idle",
        interval_s=0.5,
    )
    check_executors_on_workers(service, service.executors())


def test_a_worker_node_lost_under_load(service: MultiNodeService) -> None:
    cluster = service.cluster
    ids = [service.submit(SLOW_RUN) for _ in range(QUEUE)]
    # Under load: runs already at the executors, and slots busy for seconds more.
    eventually(
        lambda: sum(service.status(i) == "running" for i in ids) >= 4,
        SCALE_TIMEOUT_S,
        "runs at the executors",
        interval_s=0.5,
    )
    time.sleep(1)
    placement = service.executors_on()
    victim_name, _ = placement.most_common(1)[0]
    (victim,) = [node for node in cluster.workers if node.name == victim_name]
    (survivor,) = [node for node in cluster.workers if node is not victim]
    replicas = service.executors()
    before = {actor.actor_id for actor in replicas}
    victim_replicas = [a for a in replicas if service.node(a) is victim]
    assert victim_replicas
    processes = victim.process_names()
    raylets = [pid for pid, name in processes.items() if name == "raylet"]
    assert len(raylets) == 1 and {a.pid for a in victim_replicas} <= processes.keys()

    killed = victim.kill()
    assert set(killed) >= {*raylets, *(a.pid for a in victim_replicas)}
    assert not set(killed) & set(victim.pids())
    # More work while the cluster has not noticed yet.
    ids += [service.submit(SLOW_RUN) for _ in range(4)]

    statuses = service.finish(ids)
    assert set(statuses.values()) <= {"ok", "internal_error"}, Counter(statuses.values())
    stored = service.stored()
    assert stored.keys() == set(service.accepted)  # one record each, no other
    assert {i: stored[i] for i in ids} == statuses  # the API answers what is stored

    def replaced() -> list[ActorInfo] | None:
        found = service.executors()
        on_survivor = [a for a in found if service.node(a) is survivor]
        new = [a for a in on_survivor if a.actor_id not in before]  # started after the kill
        enough = len(found) >= EXECUTOR_ARGS["min_replicas"]
        return found if enough and len(on_survivor) == len(found) and new else None

    check_executors_on_workers(
        service, eventually(replaced, SCALE_TIMEOUT_S, f"replicas replaced on {survivor.name}")
    )
    assert cluster.info(victim) is None  # the GCS knows the node is gone
    record = service.run("print(6 * 7)")
    assert (record["status"], record["stdout"]) == ("ok", "42\n")
