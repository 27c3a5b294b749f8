"""Ray clusters of several nodes on this machine, for the tests that need more than one node.

Each node is a ``ray start --block`` of its own, started in a session of its own: ports of its
own (never Redis' 6379), its own temporary directory, CPUs, object store and node labels. Every
process of a node (its ``ray start``, raylet, agents and workers) carries the session id of its
``ray start``, so a node is stopped, or killed as a lost machine would be, by the process ids
of its session: never with ``ray stop``, which would end every Ray on the machine (the suite's
own session Ray among them).

What Ray knows of the cluster (its nodes and their labels, actors and the nodes they run on) is
read from the head's GCS by a probe: a subprocess with Ray's GCS client (as ``ray status``
reads it), not a driver. The test process cannot be a driver of this cluster: it may already
be one of the session's Ray, and the probe has the cluster's token in its own environment.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from tests.support.limits import MIB
from tests.support.polling import eventually
from tests.support.ports import free_ports

__all__ = [
    "ActorInfo",
    "GcsProbe",
    "LocalCluster",
    "NodeInfo",
    "NodeSpec",
    "RayNode",
    "local_cluster",
]

RAY = Path(sys.executable).with_name("ray")
NODE_START_TIMEOUT_S = 90.0
KILL_TIMEOUT_S = 30.0
NODE_PORTS = (
    "node-manager-port",
    "object-manager-port",
    "dashboard-agent-listen-port",
    "dashboard-agent-grpc-port",
    "runtime-env-agent-port",
    "metrics-export-port",
)
HEAD_PORTS = ("port", "ray-client-server-port", "dashboard-port")
"""The head's own: the GCS (``--port``), the Ray Client server (Ray takes no port 0 for it) and
the dashboard's API server (the dashboard itself is off)."""
WORKER_PORTS = 16
"""Ports of a node's worker processes (``--worker-port-list``): one per live worker."""
SMALL_ENVIRONMENT = {
    # No idle workers started ahead of work: each costs a Python process (about 100 MB).
    "RAY_enable_worker_prestart": "0",
    "RAY_prestart_worker_first_driver": "0",
}
"""Ray settings of every node that keep its memory small."""


@dataclass(frozen=True)
class NodeSpec:
    """A node to start: its name (a directory name here), CPUs, labels and object store."""

    name: str
    num_cpus: int
    labels: Mapping[str, str] = field(default_factory=dict)
    object_store_bytes: int = 80 * MIB
    """Ray's minimum is 75 MiB."""
    env: Mapping[str, str] = field(default_factory=dict)
    """This node's own environment, over the cluster's (the head's external Redis for GCS
    fault tolerance, which only its GCS reads)."""


class RayNode:
    """A running ``ray start --block``: the leader of a session of its own."""

    def __init__(
        self,
        spec: NodeSpec,
        process: subprocess.Popen[bytes],
        temp_dir: Path,
        ports: dict[str, int],
        worker_ports: Sequence[int] = (),
    ) -> None:
        self.spec = spec
        self.process = process
        self.temp_dir = temp_dir
        self.ports = ports
        self.worker_ports = list(worker_ports)
        self.node_id: str | None = None
        """Its id in the GCS' node table, once listed there (a restarted head has the ports
        of the one it replaces, not its id)."""

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def node_manager_port(self) -> int:
        """How the GCS' node table tells this node from the others (one IP for all)."""
        return self.ports["node-manager-port"]

    @property
    def log(self) -> Path:
        return self.temp_dir / "ray-start.log"

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the ``ray start`` output."""
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")[-chars:]
        return ""

    def session_logs(self, pattern: str, chars: int = 3000) -> str:
        """The ends of the node's Ray logs matching ``pattern`` (``serve/controller_*.log``),
        each under its name: what a failed test shows."""
        logs = sorted(
            p for p in self.temp_dir.glob(f"session_latest/logs/{pattern}") if p.is_file()
        )
        return "".join(
            f"\n--- {path.name}\n{path.read_text(errors='replace')[-chars:]}" for path in logs
        )

    def running(self) -> bool:
        return self.process.poll() is None

    def pids(self) -> list[int]:
        """The node's processes now: its session's (``ray start``, raylet, GCS on the head,
        agents, workers) and their descendants in sessions of their own (the executors'
        sandboxes); zombies left out."""
        leaders = []
        for process in psutil.process_iter():
            with contextlib.suppress(psutil.Error, ProcessLookupError):
                if os.getsid(process.pid) == self.process.pid:
                    leaders.append(process)
        found = set()
        for process in leaders:
            with contextlib.suppress(psutil.Error):
                for member in (process, *process.children(recursive=True)):
                    if member.status() != psutil.STATUS_ZOMBIE:
                        found.add(member.pid)
        return sorted(found)

    def process_names(self) -> dict[int, str]:
        """The node's processes now (:meth:`pids`) with their names (``raylet``, ``bwrap``,
        ``ray::ServeReplica:...``)."""
        names = {}
        for pid in self.pids():
            with contextlib.suppress(psutil.Error):
                names[pid] = psutil.Process(pid).name()
        return names

    def kill(self) -> list[int]:
        """SIGKILL every process of the node, each by its own process id, as if its machine
        were gone, and wait until they are dead; the process ids killed."""
        killed = self.pids()
        for pid in killed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait()
        eventually(lambda: not any(map(_alive, killed)), KILL_TIMEOUT_S, f"node {self.name} dead")
        for pid in killed:
            _reap(pid)
        return killed

    def stop(self) -> None:
        """End the node at once: SIGKILL its process group, then what else is left of its
        session (a worker in a process group of its own), then any stray that still names its
        temporary directory. Nothing of a test's cluster needs a graceful end."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.kill()
        marker = str(self.temp_dir)
        for process in psutil.process_iter(["cmdline"]):
            with contextlib.suppress(psutil.Error, ProcessLookupError):
                if any(marker in part for part in process.info["cmdline"] or ()):
                    os.kill(process.pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (a zombie does not: it only waits to be reaped)."""
    _reap(pid)
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _reap(pid: int) -> None:
    """Reap ``pid`` if it is a zombie child of this process: a killed node's processes are
    orphans, the children of this process when it is its pid namespace's init (the suite runs
    under ``unshare --pid``). A zombie's pid still exists: the pool of a killed replica would
    keep its cgroups (a new pool removes those of pools whose process is gone)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


@dataclass(frozen=True)
class NodeInfo:
    """A node as the GCS sees it."""

    node_id: str
    alive: bool
    is_head: bool
    labels: dict[str, str]
    node_manager_port: int


@dataclass(frozen=True)
class ActorInfo:
    """An actor as the GCS sees it (``state``: ALIVE, RESTARTING, DEAD, ...)."""

    actor_id: str
    class_name: str
    name: str
    state: str
    node_id: str
    pid: int


PROBE_CODE = """\
import asyncio, json, sys
import ray._raylet
from ray.core.generated import gcs_pb2

client = ray._raylet.GcsClient(address=sys.argv[1])

def nodes():
    return [
        {
            "node_id": node_id.hex(),
            "alive": info.state == gcs_pb2.GcsNodeInfo.GcsNodeState.ALIVE,
            "is_head": info.is_head_node,
            "labels": dict(info.labels),
            "node_manager_port": info.node_manager_port,
        }
        for node_id, info in client.get_all_node_info(timeout=10).items()
    ]

async def actors():
    table = await client.async_get_all_actor_info(timeout=10)
    return [
        {
            "actor_id": actor_id.hex(),
            "class_name": data.class_name,
            "name": data.name,
            "state": gcs_pb2.ActorTableData.ActorState.Name(data.state),
            "node_id": data.address.node_id.hex(),
            "pid": data.pid,
        }
        for actor_id, data in table.items()
    ]

for line in sys.stdin:
    try:
        answer = nodes() if line.strip() == "nodes" else asyncio.run(actors())
        print(json.dumps({"ok": answer}), flush=True)
    except Exception as exc:
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
"""


class GcsProbe:
    """Reads the cluster's node and actor tables from its GCS, through one long-lived
    subprocess (a GCS client, no driver); an answer the GCS could not give raises
    ``RuntimeError``."""

    def __init__(self, gcs_address: str, env: Mapping[str, str]) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-c", PROBE_CODE, gcs_address],
            env=dict(env),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )

    def _ask(self, what: str) -> list[dict[str, Any]]:
        stdin, stdout = self._process.stdin, self._process.stdout
        assert stdin is not None and stdout is not None
        stdin.write(what + "\n")
        stdin.flush()
        line = stdout.readline()
        if not line:
            raise RuntimeError(f"the GCS probe exited ({self._process.poll()})")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"GCS probe: {answer['error']}")
        found: list[dict[str, Any]] = answer["ok"]
        return found

    def nodes(self) -> list[NodeInfo]:
        return [NodeInfo(**node) for node in self._ask("nodes")]

    def actors(self) -> list[ActorInfo]:
        return [ActorInfo(**actor) for actor in self._ask("actors")]

    def close(self) -> None:
        """End the probe (its input closed, it exits) and close its pipes."""
        with self._process:  # closes the pipes, waits
            if self._process.stdin is not None:
                self._process.stdin.close()
            try:
                self._process.wait(5)
            except subprocess.TimeoutExpired:
                self._process.kill()


class LocalCluster:
    """A head and worker nodes on this machine, sharing one environment (``env``: also what
    a client of the cluster, such as ``serve run``, needs to reach it)."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root = root
        self.env = env
        self.nodes: list[RayNode] = []
        self._probe: GcsProbe | None = None

    @property
    def head(self) -> RayNode:
        return self.nodes[0]

    @property
    def workers(self) -> list[RayNode]:
        return self.nodes[1:]

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.head.ports['port']}"

    @property
    def probe(self) -> GcsProbe:
        if self._probe is None:
            self._probe = GcsProbe(self.gcs_address, self.env)
        return self._probe

    def start_node(self, spec: NodeSpec) -> RayNode:
        """Start ``spec`` (the first one: the head) and wait until the GCS lists it alive."""
        head = not self.nodes
        names = NODE_PORTS + (HEAD_PORTS if head else ())
        found = free_ports(len(names) + WORKER_PORTS)
        ports = dict(zip(names, found, strict=False))
        node = self._launch(spec, self.root / spec.name, ports, found[len(names) :], head=head)
        self.nodes.append(node)
        self._wait_listed(node)
        return node

    def restart_head(self) -> RayNode:
        """Start the head again once its ``ray start`` has exited, as KubeRay restarts a head
        container: the same spec, environment and ports (the GCS' address the workers know), a
        fresh temporary directory; what was left of the old head is killed first. Waits until
        the GCS lists the new head alive (with GCS fault tolerance, the workers' raylets
        reconnect to it); the probe is started anew."""
        old = self.head
        assert not old.running(), "restart_head: the head still runs"
        old.kill()
        if self._probe is not None:
            self._probe.close()
            self._probe = None
        restarts = len(list(self.root.glob(f"{old.name}.*")))
        temp_dir = self.root / f"{old.name}.{restarts + 1}"
        node = self._launch(old.spec, temp_dir, old.ports, old.worker_ports, head=True)
        self.nodes[0] = node
        self._wait_listed(node, replaced=old.node_id)
        return node

    def _launch(
        self,
        spec: NodeSpec,
        temp_dir: Path,
        ports: dict[str, int],
        worker_ports: Sequence[int],
        *,
        head: bool,
    ) -> RayNode:
        """``ray start --block`` of ``spec`` on ``ports``, in a session of its own."""
        temp_dir.mkdir()
        argv = [
            str(RAY),
            "start",
            "--block",
            *(f"--{name}={port}" for name, port in ports.items()),
            "--worker-port-list=" + ",".join(map(str, worker_ports)),
            "--node-ip-address=127.0.0.1",
            f"--num-cpus={spec.num_cpus}",
            "--num-gpus=0",
            f"--object-store-memory={spec.object_store_bytes}",
            f"--temp-dir={temp_dir}",
            "--include-log-monitor=false",  # nobody reads the workers' output live
            "--disable-usage-stats",
        ]
        if spec.labels:
            argv.append("--labels=" + ",".join(f"{k}={v}" for k, v in spec.labels.items()))
        if head:
            argv += ["--head", "--include-dashboard=false", "--no-monitor"]  # no autoscaler
        else:
            argv.append(f"--address={self.gcs_address}")
        with (temp_dir / "ray-start.log").open("wb") as log:
            process = subprocess.Popen(
                argv,
                cwd=temp_dir,  # no .env of the repository for the settings of the replicas
                env={**self.env, **spec.env},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return RayNode(spec, process, temp_dir, ports, worker_ports)

    def _wait_listed(self, node: RayNode, replaced: str | None = None) -> None:
        """Until the GCS lists ``node`` alive (not the node of id ``replaced``, on the same
        ports); its id noted."""
        try:
            eventually(
                lambda: self._listed_alive(node, replaced),
                NODE_START_TIMEOUT_S,
                f"{node.name} up",
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{node.log_tail()}") from None

    def _listed_alive(self, node: RayNode, replaced: str | None = None) -> bool:
        assert node.running(), f"node {node.name} exited:\n{node.log_tail()}"
        try:
            listed = [
                info
                for info in self.probe.nodes()
                if info.alive
                and info.node_manager_port == node.node_manager_port
                and info.node_id != replaced
            ]
        except RuntimeError:  # the GCS is not up yet
            return False
        if listed:
            node.node_id = listed[0].node_id
        return bool(listed)

    def info(self, node: RayNode) -> NodeInfo | None:
        """``node`` in the GCS' node table, alive; None if it is not (or no longer) there."""
        for info in self.probe.nodes():
            ours = info.node_manager_port == node.node_manager_port
            if info.alive and ours and node.node_id in (None, info.node_id):
                return info
        return None

    def node_of(self, node_id: str) -> RayNode | None:
        """Which of our nodes has ``node_id`` (alive or dead, as the GCS last knew it)."""
        for node in self.nodes:
            if node.node_id == node_id:
                return node
        ports = {info.node_id: info.node_manager_port for info in self.probe.nodes()}
        for node in self.nodes:
            if ports.get(node_id) == node.node_manager_port:
                return node
        return None

    def actors(self, class_name: str) -> list[ActorInfo]:
        """The actors of class ``class_name`` that are alive now."""
        return [
            actor
            for actor in self.probe.actors()
            if actor.class_name == class_name and actor.state == "ALIVE"
        ]

    def stop(self) -> None:
        """Stop every node, workers first, and the probe."""
        if self._probe is not None:
            self._probe.close()
        for node in reversed(self.nodes):
            node.stop()


@contextlib.contextmanager
def local_cluster(
    head: NodeSpec,
    workers: Sequence[NodeSpec],
    env: Mapping[str, str],
    *,
    unset: Collection[str] = (),
) -> Iterator[LocalCluster]:
    """A cluster of ``head`` and ``workers``, each node a ``ray start`` of its own, with token
    authentication; every node's environment is this process' without Ray's address and
    token variables and the variables named in ``unset`` (in any case), with ``env`` and
    :data:`SMALL_ENVIRONMENT`. Stopped at the end, by process ids."""
    root = Path(tempfile.mkdtemp(prefix="ray-mn-", dir="/tmp"))  # short: socket paths
    dropped = {name.upper() for name in unset}
    inherited = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("RAY_ADDRESS", "RAY_AUTH", "RAY_API_SERVER"))
        and key.upper() not in dropped
    }
    cluster = LocalCluster(
        root,
        {
            **inherited,
            **SMALL_ENVIRONMENT,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": secrets.token_hex(32),
            **env,
        },
    )
    try:
        for spec in (head, *workers):
            cluster.start_node(spec)
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
