"""A rolling update under load loses nothing (issue 17): a new version of the Serve config,
deployed while every executor replica has runs waiting in it, ends every accepted execution
with its program's own status, none ``internal_error``.

The service runs as tests/test_multinode.py deploys it (a head and two sandbox workers, each a
``ray start`` of its own; cluster/serve-config.yaml with ``serve run``), with two executor
replicas of two slots, and a drain shorter than their queues: ``graceful_shutdown_timeout_s``
and ``MAX_TIMEOUT`` of 10 s, while each replica holds about 20 s of queued runs. The new version
changes the executor deployment alone (an environment variable of its replicas, through the
config's per-deployment override: tests/support/serve_deploy.py), so Serve replaces every
executor replica, old ones stopping while runs wait in them. Without the hand-back of runs that
had not started, Serve kills each old replica once its drain runs out, with the runs it still
holds (seen here: about 20 of them each): the ingress tries those again once (a run that had
started then runs twice), and a run lost twice ends as ``internal_error``.

Deadlines bound the polling only; nothing here asserts a duration.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from serve_app.api.middleware import PROXY_MIDDLEWARES_IMPORT_PATH
from serve_app.db import Database
from serve_app.deployment import PROXY_CALLBACK_VARIABLE, SERVE_TUNING
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
from tests.support.ray_nodes import local_cluster
from tests.support.serve_deploy import serve_deploy, service_config, with_executor_release
from tests.support.settings import settings_variables

pytestmark = [pytest.mark.ray, pytest.mark.sandbox, pytest.mark.slow]

DRAIN_S = 10
"""The executors' ``graceful_shutdown_timeout_s``, and ``MAX_TIMEOUT`` (the settings keep the
drain at least as long)."""
MEMORY_BYTES = 1024 * 1024 * 1024
"""What Ray reserves per executor replica here, in both versions (any size that fits)."""
EXECUTOR_ACTOR_OPTIONS: dict[str, Any] = {
    "num_cpus": 1,  # two replicas fit a worker
    "memory": MEMORY_BYTES,
    "label_selector": {ROLE: "sandbox"},
}
"""The executor replicas' Ray actor options, as the builder makes them of the args below."""
EXECUTOR_ARGS = {
    "num_cpus": 1,
    "memory_bytes": MEMORY_BYTES,
    "label_selector": {ROLE: "sandbox"},
    "min_replicas": 2,
    "max_replicas": 2,
}
RUN = "import time\ntime.sleep(2)\nprint('slept')"
BURST = 48
"""Runs queued at once before the update: 96 s of work for the four slots, about 20 s waiting
in each replica's queue (twice its drain)."""
SUBMIT_INTERVAL_S = 0.5
"""During the update, one more run every half second."""
ROLLOUT_TIMEOUT_S = 180.0
FORCE_KILLED = "did not shut down after grace period"
"""What Serve's controller logs when it kills a replica whose drain ran out (Ray 2.60,
serve/_private/deployment_state.py)."""
FULL_LOG = 10_000_000
KEY_NAME = "rolling-update"


@pytest.fixture(scope="module")
def service() -> Iterator[MultiNodeService]:
    """The service on a head and two workers (cluster/serve-config.yaml, this module's sizes);
    the deployed config is ``service.cluster.root / "v1.yaml"``."""
    with postgres_schema() as database_url:
        env = {
            "ENVIRONMENT": "production",
            "DATABASE_URL": database_url,
            "API_KEY_SECRET": secrets.token_hex(32),
            "RATE_LIMIT_PER_MINUTE": "10000",
            "MAX_TIMEOUT": str(DRAIN_S),
            PROXY_CALLBACK_VARIABLE: PROXY_MIDDLEWARES_IMPORT_PATH,
            **SERVE_TUNING,
        }
        unset = settings_variables(old_names=True)
        with local_cluster(HEAD, WORKERS, env, unset=unset) as cluster:
            cli(cluster, "db", "upgrade")
            created = cli(cluster, "keys", "create", "--name", KEY_NAME, "--max-concurrent", "256")
            key = created.strip().splitlines()[-1]
            port = free_port()
            serve_deploy(cluster, first_version(port), "v1")
            database = Database.from_url(database_url)
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
                deployed = MultiNodeService(cluster, client, key, KEY_NAME, database)
                try:
                    wait_until_deployed(deployed, EXECUTOR_ARGS["min_replicas"])
                    yield deployed
                finally:
                    database.dispose()
                    serve_delete(cluster)


def first_version(port: int) -> dict[str, Any]:
    return service_config(
        port,
        ingress={"min_replicas": 1, "max_replicas": 1},  # this machine's memory
        executor=EXECUTOR_ARGS,
        args={"graceful_shutdown_timeout_s": DRAIN_S},
    )


class Load:
    """Runs submitted from a thread, one every :data:`SUBMIT_INTERVAL_S`, until stopped."""

    def __init__(self, service: MultiNodeService) -> None:
        self.service = service
        self.ids: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rolling-load", daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)
        assert not self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.wait(SUBMIT_INTERVAL_S):
            self.ids.append(self.service.submit(RUN))  # asserts it was accepted (202)


def test_a_rolling_update_under_load_fails_no_run(service: MultiNodeService) -> None:
    old = {actor.actor_id for actor in service.executors()}
    assert len(old) == 2
    burst = [service.submit(RUN) for _ in range(BURST)]

    def replaced() -> bool:
        now = {actor.actor_id for actor in service.executors()}
        return len(now) == 2 and not now & old

    with Load(service) as load:
        port = service.client.base_url.port
        assert port is not None
        update = with_executor_release(first_version(port), "2", EXECUTOR_ACTOR_OPTIONS)
        serve_deploy(service.cluster, update, "v2")
        try:
            eventually(replaced, ROLLOUT_TIMEOUT_S, "every executor replica replaced")
        except AssertionError as exc:
            logs = service.cluster.head.session_logs("serve/controller_*.log")
            raise AssertionError(f"{exc}{logs}") from None
        time.sleep(2)  # a few runs sent to the new replicas only
    ids = burst + load.ids
    statuses = service.finish(ids)
    assert Counter(statuses.values()) == {"ok": len(ids)}
    stored = service.stored()
    assert {i: stored[i] for i in ids} == statuses  # the API answers what is stored
    # Every old replica drained within its grace period. Killed instead, it would take its
    # waiting runs and its running ones with it: the ingress sends those again once (so they
    # may still end "ok"), and a run that had started then runs twice.
    controller = service.cluster.head.session_logs("serve/controller_*.log", chars=FULL_LOG)
    assert FORCE_KILLED not in controller, controller[-3000:]
