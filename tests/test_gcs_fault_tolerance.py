"""No single point of failure (issue 17): the head's GCS killed under load, nothing accepted lost.

A cluster as the production design has it, three ``ray start`` processes on this machine
(tests/support/ray_nodes.py): a head with GCS fault tolerance on a dedicated ``redis-server``
(its own free port, never the cache's 6379; ``RAY_REDIS_ADDRESS`` and
``RAY_external_storage_namespace`` in the head's environment only, as KubeRay's
``gcsFaultToleranceOptions`` sets them) that runs no replica of ours (no CPUs, role ``head``),
an ``api`` worker for the ingress and a ``sandbox`` worker for the executor. The application is
cluster/serve-config.yaml deployed with ``serve run``, one replica of each deployment, with a
proxy on every node that holds a replica (``EveryNode``: Serve binds them with SO_REUSEPORT, so
on one machine they share the port as the api pods share their Service) and the ingress on the
``api`` worker, whatever the config file says.

Why not the head: with a ``HeadOnly`` proxy and the ingress on the head, the same scenario was
measured here to end an accepted execution as ``internal_error`` (one of 48: the run in flight
when the ingress died with the head; the new ingress took it over as such,
serve_app/http/_recovery.py), and no request can reach the service until the head is back.

Under a steady stream of submissions (``wait: false``), the head's ``gcs_server`` is SIGKILLed.
``ray start --block`` then kills the rest of the head and exits (ray/scripts/scripts.py: any
subprocess dead with an unexpected code); the test starts the head again as KubeRay restarts
its container: same ports, same Redis, same namespace. The workers' raylets and the replicas'
core workers wait for the GCS (``RAY_gcs_rpc_server_reconnect_timeout_s``) and reconnect;
Serve's controller, a detached actor with unlimited restarts that only the head runs, starts
again there and recovers the application from its checkpoint in the GCS (so, in Redis).

Asserted: the head comes back and Serve's controller with it; a new execution runs; every
execution the service accepted (202 with an id) ends, every one ``ok``, as stored in the
database. Submissions refused meanwhile (connection refused, 5xx) were never accepted. The
outage's figures are recorded (printed and as user properties), never asserted.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import redis

from serve_app.api.middleware import PROXY_MIDDLEWARES_IMPORT_PATH
from serve_app.db import Database
from serve_app.deployment import (
    APP_NAME,
    EXECUTOR_NAME,
    INGRESS_NAME,
    PROXY_CALLBACK_VARIABLE,
    SERVE_TUNING,
)
from tests.support.api import auth
from tests.support.databases import postgres_schema
from tests.support.multinode import MultiNodeService, cli, ready, serve_delete
from tests.support.polling import eventually
from tests.support.ports import free_port
from tests.support.private_servers import REDIS_SERVER, PrivateRedis
from tests.support.ray_nodes import ActorInfo, NodeSpec, local_cluster
from tests.support.serve_deploy import serve_deploy, service_config
from tests.support.settings import settings_variables

pytestmark = [pytest.mark.ray, pytest.mark.sandbox, pytest.mark.slow]

ROLE = "exec-agent/role"
HEAD = NodeSpec("head", num_cpus=0, labels={ROLE: "head"})
"""The head runs the GCS and Serve's controller (and a proxy), none of our replicas."""
API = NodeSpec("api-1", num_cpus=1, labels={ROLE: "api"})
SANDBOX = NodeSpec("sandbox-1", num_cpus=2, labels={ROLE: "sandbox"})
NAMESPACE = "exec-agent-gcs-ft"
"""``RAY_external_storage_namespace``: KubeRay sets the RayCluster's own; one is enough here."""
RECONNECT_TIMEOUT_S = 60
"""``RAY_gcs_rpc_server_reconnect_timeout_s`` of every node (Ray's default, said here): how long
raylets and workers wait for the GCS before they exit. KubeRay gives workers 600 s."""

CONTROLLER = "ServeController"
INGRESS = f"ServeReplica:{APP_NAME}:{INGRESS_NAME}"
EXECUTOR = f"ServeReplica:{APP_NAME}:{EXECUTOR_NAME}"
KEY_NAME = "gcs-ft"
RUN = "import time\ntime.sleep(0.3)\nprint('ok')"
SUBMIT_INTERVAL_S = 0.2
"""One submission every 0.2 s: about 5/s, within the executor's two slots."""
LOAD_BEFORE_KILL_S = 4.0
LOAD_AFTER_RECOVERY_S = 4.0
START_TIMEOUT_S = 120.0
EXIT_TIMEOUT_S = 30.0
RECOVERY_TIMEOUT_S = 120.0


def serve_config(port: int) -> dict[str, Any]:
    """The service's Serve config with a proxy on every node holding a replica, the ingress on
    the ``api`` worker, one replica of each deployment, the proxies on 127.0.0.1:``port``."""
    config = service_config(
        port,
        ingress={"min_replicas": 1, "max_replicas": 1, "label_selector": {ROLE: "api"}},
        executor={"num_cpus": 1, "min_replicas": 1, "max_replicas": 1},
    )
    config["proxy_location"] = "EveryNode"
    return config


@dataclass
class Load:
    """Submissions from a thread of their own, one every ``SUBMIT_INTERVAL_S``, each answer
    noted: accepted ids (202) with their times, and how the others were refused."""

    client: httpx.Client
    key: str
    accepted: list[tuple[float, str]] = field(default_factory=list)
    refused: Counter[str] = field(default_factory=Counter)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="gcs-ft-load", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
            assert not self._thread.is_alive()

    def accepted_since(self, moment: float) -> list[str]:
        return [execution_id for at, execution_id in list(self.accepted) if at >= moment]

    def _run(self) -> None:
        body = {"code": RUN, "wait": False, "limits": {"wall_timeout_s": 10}}
        while not self._stop.wait(SUBMIT_INTERVAL_S):
            try:
                answer = self.client.post("/v1/executions", json=body, headers=auth(self.key))
            except httpx.HTTPError as exc:
                self.refused[type(exc).__name__] += 1  # never accepted (or never told so)
                continue
            if answer.status_code == 202:
                self.accepted.append((time.monotonic(), answer.json()["id"]))
            else:
                self.refused[str(answer.status_code)] += 1


@dataclass
class FaultTolerantService(MultiNodeService):
    """The deployed service (:class:`MultiNodeService`) and the Redis of its GCS."""

    redis: PrivateRedis = field(kw_only=True)

    def gcs_keys(self) -> list[str]:
        """The keys in the GCS' Redis."""
        client = redis.Redis.from_url(self.redis.url, socket_timeout=5)
        try:
            return sorted(key.decode(errors="replace") for key in client.scan_iter(count=1000))
        finally:
            client.close()

    def actor(self, class_name: str) -> ActorInfo | None:
        """The one live actor of ``class_name``; None while there is none (or the GCS does
        not answer)."""
        try:
            found = self.cluster.actors(class_name)
        except RuntimeError:
            return None
        return found[0] if len(found) == 1 else None

    def run(self, code: str) -> dict[str, Any] | None:
        """Run ``code`` and wait for its record; None if the service did not take it."""
        try:
            answer = self.client.post("/v1/executions", json={"code": code}, headers=auth(self.key))
        except httpx.HTTPError:
            return None
        if answer.status_code != 200:
            return None
        record: dict[str, Any] = answer.json()
        return record


@pytest.fixture
def service() -> Iterator[FaultTolerantService]:
    """The service on a fault-tolerant head, an api worker and a sandbox worker."""
    if REDIS_SERVER is None:
        pytest.fail("redis-server is needed (scripts/setup)")
    redis = PrivateRedis(free_port())
    redis.start()
    head = dataclasses.replace(
        HEAD,
        env={
            "RAY_REDIS_ADDRESS": f"127.0.0.1:{redis.port}",
            "RAY_external_storage_namespace": NAMESPACE,
        },
    )
    try:
        with postgres_schema() as database_url:
            env = {
                "ENVIRONMENT": "production",
                "DATABASE_URL": database_url,
                "API_KEY_SECRET": secrets.token_hex(32),
                "RATE_LIMIT_PER_MINUTE": "100000",
                PROXY_CALLBACK_VARIABLE: PROXY_MIDDLEWARES_IMPORT_PATH,
                **SERVE_TUNING,
                "RAY_gcs_rpc_server_reconnect_timeout_s": str(RECONNECT_TIMEOUT_S),
            }
            unset = settings_variables(old_names=True) | {"RAY_REDIS_ADDRESS"}
            with local_cluster(head, [API, SANDBOX], env, unset=unset) as cluster:
                cli(cluster, "db", "upgrade")
                created = cli(
                    cluster, "keys", "create", "--name", KEY_NAME, "--max-concurrent", "64"
                )
                key = created.strip().splitlines()[-1]
                port = free_port()
                serve_deploy(cluster, serve_config(port), "serve-config")
                database = Database.from_url(database_url)
                with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
                    deployed = FaultTolerantService(
                        cluster, client, key, KEY_NAME, database, redis=redis
                    )
                    try:
                        wait_until_deployed(deployed)
                        yield deployed
                    finally:
                        database.dispose()
                        serve_delete(cluster)
    finally:
        redis.stop()


def wait_until_deployed(service: FaultTolerantService) -> None:
    try:
        eventually(lambda: ready(service.client), START_TIMEOUT_S, "the service is ready")
        for name in (INGRESS, EXECUTOR):
            eventually(lambda: service.actor(name), START_TIMEOUT_S, f"{name} runs")  # noqa: B023
    except AssertionError as exc:
        logs = service.cluster.head.session_logs("serve/controller_*.log")
        raise AssertionError(f"{exc}{logs}") from None


def test_the_head_gcs_killed_under_load_loses_nothing_accepted(
    service: FaultTolerantService, record_property: Any
) -> None:
    cluster = service.cluster
    old_head = cluster.head
    api, sandbox = cluster.workers
    ingress, executor = service.actor(INGRESS), service.actor(EXECUTOR)
    assert ingress is not None and executor is not None
    assert cluster.node_of(ingress.node_id) is api
    assert cluster.node_of(executor.node_id) is sandbox
    controller = service.actor(CONTROLLER)
    assert controller is not None and controller.node_id == old_head.node_id
    # The GCS keeps its tables in the dedicated Redis, under the namespace.
    tables = {f"RAY{NAMESPACE}@{table}" for table in ("NODE", "ACTOR", "KV")}
    assert tables <= set(service.gcs_keys()), service.gcs_keys()
    gcs_servers = [pid for pid, name in old_head.process_names().items() if name == "gcs_server"]
    assert len(gcs_servers) == 1

    load = Load(service.client, service.key)
    load.start()
    try:
        eventually(lambda: len(load.accepted) >= 5, START_TIMEOUT_S, "load accepted")
        time.sleep(LOAD_BEFORE_KILL_S)
        # Under load: runs at the executor when the GCS goes.
        eventually(
            lambda: "running" in service.stored().values(),
            START_TIMEOUT_S,
            "a run at the executor",
            interval_s=0.05,
        )
        accepted_before = len(load.accepted)

        killed_at = time.monotonic()
        os.kill(gcs_servers[0], signal.SIGKILL)
        # `ray start --block` sees its GCS die, kills the head's other processes and exits.
        eventually(lambda: not old_head.running(), EXIT_TIMEOUT_S, "the head's ray start exits")
        exit_code = old_head.process.returncode
        new_head = cluster.restart_head()
        head_back_s = time.monotonic() - killed_at

        def controller_back() -> ActorInfo | None:
            found = service.actor(CONTROLLER)
            return found if found is not None and found.node_id == new_head.node_id else None

        try:
            eventually(controller_back, RECOVERY_TIMEOUT_S, "Serve's controller on the new head")
        except AssertionError as exc:
            logs = new_head.session_logs("serve/controller_*.log")
            raise AssertionError(f"{exc}{logs}") from None
        controller_back_s = time.monotonic() - killed_at

        record = eventually(
            lambda: service.run("print(6 * 7)"), RECOVERY_TIMEOUT_S, "a new run after the loss"
        )
        answered_s = time.monotonic() - killed_at
        assert (record["status"], record["stdout"]) == ("ok", "42\n"), record
        time.sleep(LOAD_AFTER_RECOVERY_S)
    finally:
        load.stop()
    # The workers lived through it: their raylets reconnected to the new GCS (a raylet that
    # finds another cluster, or no GCS in time, exits, and its `ray start` with it).
    for node in (api, sandbox):
        assert node.running(), node.log_tail()
        assert cluster.info(node) is not None, node.name

    accepted = [execution_id for _, execution_id in load.accepted]
    during = load.accepted_since(killed_at)
    first_after = min((at for at, _ in load.accepted if at >= killed_at), default=None)
    figures = {
        "ray_start_exit_code": exit_code,
        "head_back_s": round(head_back_s, 1),
        "controller_back_s": round(controller_back_s, 1),
        "first_run_after_kill_s": round(answered_s, 1),
        "first_accepted_after_kill_s": (
            None if first_after is None else round(first_after - killed_at, 1)
        ),
        "accepted_before_kill": accepted_before,
        "accepted_after_kill": len(during),
        "refused": dict(load.refused),
        "ingress_kept": service.actor(INGRESS) == ingress,
        "executor_kept": service.actor(EXECUTOR) == executor,
    }
    print(f"\nGCS fault tolerance: {figures}")
    for name, value in figures.items():
        record_property(name, value)

    statuses = service.finish(accepted)
    assert Counter(statuses.values()) == Counter(ok=len(accepted)), Counter(statuses.values())
    # One record for every accepted execution, each as the API answered; any other record
    # (a submission whose answer the client never got) ended too, and well.
    stored = service.stored()
    assert {i: stored.get(i) for i in accepted} == statuses
    others = {i: s for i, s in stored.items() if i not in statuses}
    assert set(others.values()) <= {"ok"}, others
