"""Sessions across machines: Ray places session hosts by the resources they reserve, a full node
sends the next host elsewhere, a host that fits nowhere is refused (an autoscaler would add a
node for it), and a lost node takes its sessions with it (``lost``) and no other.

Three ``ray start`` processes stand for three machines (tests/support/ray_nodes.py): a head
without CPUs and two workers of one CPU each. Hosts of one place reserving one CPU each: the
first fills one worker, the second must go to the other, a third fits nowhere. A driver
subprocess speaks to the cluster (the test process is the session Ray's driver already).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.ray_nodes import LocalCluster, NodeSpec, local_cluster

pytestmark = [pytest.mark.ray, pytest.mark.sandbox, pytest.mark.slow]

ROLE = "exec-agent/role"
HEAD = NodeSpec("head", num_cpus=0, labels={ROLE: "api"})
WORKERS = [NodeSpec(f"worker-{n}", num_cpus=1, labels={ROLE: "sandbox"}) for n in (1, 2)]
DRIVER_TIMEOUT_S = 180

DRIVER = r"""
import asyncio, json, sys, uuid
import ray
from executors import (EndReason, ExecutionRequest, Limits, SandboxConfig, SessionEndedError,
                       SessionHostOptions, SessionHosts, SessionPlacementError, SessionSpec)

MIB = 1 << 20
LIMITS = Limits(wall_timeout_s=5, cpu_time_s=5, memory_bytes=128 * MIB, max_output_bytes=65536,
                max_processes=16, max_file_bytes=MIB)
OPTIONS = SessionHostOptions(namespace="multinode", capacity=1, num_cpus_per_session=1.0,
                             memory_bytes_per_session=0, min_hosts=0, placement_timeout_s=10,
                             label_selector={"exec-agent/role": "sandbox"})
step, argument = sys.argv[1], json.loads(sys.argv[2])

def request(code):
    return ExecutionRequest(code=code, limits=LIMITS, runtime="minimal")

async def place(hosts):
    placed, refused = [], None
    for number in range(3):
        spec = SessionSpec(runtime="minimal", limits=LIMITS, idle_timeout_s=600, ttl_s=600)
        try:
            state = await hosts.create(spec)
        except SessionPlacementError as exc:
            refused = str(exc)
            continue
        answer = await hosts.call(state.host, state.id, request(f"n = {number}\nn"))
        placed.append({"id": str(state.id), "host": state.host, "node_id": state.node_id,
                       "result": answer.record.result})
    return {"placed": placed, "refused": refused}

async def check(hosts):
    answers = {}
    for session in argument:
        try:
            answer = await hosts.call(session["host"], uuid.UUID(session["id"]), request("n"))
            answers[session["id"]] = {"result": answer.record.result}
        except SessionEndedError as exc:
            answers[session["id"]] = {"ended": exc.reason, "detail": exc.detail}
    return answers

ray.init(address="auto", namespace="multinode-driver", log_to_driver=False)
hosts = SessionHosts(SandboxConfig(default_runtime="minimal"), OPTIONS)
print(json.dumps(asyncio.run({"place": place, "check": check}[step](hosts))))
"""


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with local_cluster(HEAD, WORKERS, {}) as cluster:
        yield cluster


def drive(cluster: LocalCluster, step: str, argument: Any = None) -> Any:
    env = {**cluster.env, "RAY_ADDRESS": cluster.gcs_address}
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, step, json.dumps(argument)],
        env=env,
        capture_output=True,
        text=True,
        timeout=DRIVER_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_hosts_spread_by_their_reservations_and_a_lost_node_loses_only_its_sessions(
    cluster: LocalCluster,
) -> None:
    placed = drive(cluster, "place")
    sessions = placed["placed"]
    assert [s["result"] for s in sessions] == ["0", "1"]
    # Each host reserves a whole worker's CPU: the second could only go to the other worker.
    assert len({s["node_id"] for s in sessions}) == 2
    workers = {cluster.node_of(s["node_id"]) for s in sessions}
    assert workers == set(cluster.workers)
    # The third fits nowhere: refused after the placement timeout (its host stays pending,
    # which is what a cluster autoscaler scales up for).
    assert placed["refused"] is not None and "no node had room" in placed["refused"]

    lost, kept = sessions
    node = cluster.node_of(lost["node_id"])
    assert node is not None
    node.kill()
    answers = drive(cluster, "check", sessions)
    assert answers[kept["id"]] == {"result": "1"}
    assert answers[lost["id"]]["ended"] == "lost"
