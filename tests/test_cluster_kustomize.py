"""The kustomize base and overlays of cluster/ build, and each overlay changes what it says and
nothing else.

Built by the real kustomize (scripts/install-kustomize puts it in .venv/bin; ./scripts/setup
--test runs it). tests/test_cluster_manifests.py checks every property of the manifests (KubeRay's
strict schema, Serve's schema, secrets, node pools, drains...) on each build; this file checks
the builds themselves: the base is its files, and an overlay's difference from the base is
exactly its documented patches. The admission policy's CEL is checked for shape only: nothing
here evaluates CEL.
"""

from __future__ import annotations

import re
import subprocess
from typing import Any

import pytest
import yaml

from tests.support.cluster import (
    CLUSTER_BASE,
    OVERLAYS,
    kustomize,
    kustomize_build,
    load_cluster_yamls,
)
from tests.support.paths import CLUSTER, SCRIPTS

SANDBOX = "/spec/rayClusterConfig/workerGroupSpecs/1"
API = "/spec/rayClusterConfig/workerGroupSpecs/0"
UNPRIVILEGED_CHANGES = {
    ("ConfigMap", "exec-agent-config", "/data/ENVIRONMENT"),
    ("ConfigMap", "exec-agent-config", "/data/SANDBOX_REQUIRE_FULL_ISOLATION"),
    ("RayService", "exec-agent", "/spec/serveConfigV2"),
}
CHANGES: dict[str, set[tuple[str, str, str]]] = {
    "dev": {
        (
            "RayService",
            "exec-agent",
            f"{API}/template/spec/topologySpreadConstraints/0/whenUnsatisfiable",
        ),
    },
    "production": {
        ("RayService", "exec-agent", "/spec/upgradeStrategy/type"),
        ("RayService", "exec-agent", "/spec/upgradeStrategy/clusterUpgradeOptions"),
        ("ValidatingAdmissionPolicy", "exec-agent-privileged-sandbox-only", ""),
        ("ValidatingAdmissionPolicyBinding", "exec-agent-privileged-sandbox-only", ""),
    },
    "userns": UNPRIVILEGED_CHANGES
    | {
        ("RayService", "exec-agent", f"{SANDBOX}/template/spec/hostUsers"),
        ("RayService", "exec-agent", f"{SANDBOX}/template/spec/containers/0/securityContext"),
    },
    "kata": UNPRIVILEGED_CHANGES
    | {
        ("RayService", "exec-agent", f"{SANDBOX}/template/spec/runtimeClassName"),
        ("RayService", "exec-agent", f"{SANDBOX}/template/spec/containers/0/securityContext"),
        ("RuntimeClass", "kata", ""),
    },
}
"""What each overlay changes: (kind, name, JSON pointer of the change; "" for a new document).
A change below a pointer (a replaced object's fields) counts as that pointer."""


def by_name(documents: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    found = {(d["kind"], d["metadata"]["name"]): d for d in documents}
    assert len(found) == len(documents), "two documents of one kind and name"
    return found


def differences(old: Any, new: Any, path: str = "") -> set[str]:
    """JSON pointers where ``new`` differs from ``old`` (the deepest that differ)."""
    if isinstance(old, dict) and isinstance(new, dict):
        found: set[str] = set()
        for key in old.keys() | new.keys():
            if key not in old or key not in new:
                found.add(f"{path}/{key}")
            else:
                found |= differences(old[key], new[key], f"{path}/{key}")
        return found
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return {
            p
            for i, (a, b) in enumerate(zip(old, new, strict=True))
            for p in differences(a, b, f"{path}/{i}")
        }
    return set() if old == new else {path}


@pytest.fixture(scope="module")
def base() -> dict[tuple[str, str], dict[str, Any]]:
    return by_name(kustomize_build(CLUSTER_BASE))


def test_kustomize_is_the_pinned_version() -> None:
    script = (SCRIPTS / "install-kustomize").read_text()
    match = re.search(r'^VERSION = "([0-9.]+)"', script, re.MULTILINE)
    assert match
    done = subprocess.run([kustomize(), "version"], capture_output=True, text=True, check=True)
    assert f"kustomize/v{match.group(1)} " in done.stdout


def test_the_base_builds_to_its_files(base: dict[tuple[str, str], dict[str, Any]]) -> None:
    listed = yaml.safe_load((CLUSTER_BASE / "kustomization.yaml").read_text())["resources"]
    files = by_name([doc for name in listed for doc in load_cluster_yamls(name)])
    assert base == files
    listed_files = {path.name for path in CLUSTER_BASE.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(listed) == listed_files, "a manifest of the base left out of its kustomization"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_overlay_changes_only_what_it_says(
    overlay: str, base: dict[tuple[str, str], dict[str, Any]]
) -> None:
    built = by_name(kustomize_build(CLUSTER / "overlays" / overlay))
    changes = {(kind, name, "") for kind, name in built.keys() - base.keys()}
    assert not base.keys() - built.keys(), "an overlay dropped a document"
    for key in built.keys() & base.keys():
        changes |= {(*key, pointer) for pointer in differences(base[key], built[key])}
    wanted = CHANGES[overlay]

    def covered(change: tuple[str, str, str]) -> bool:
        kind, name, pointer = change
        return any(
            (k, n) == (kind, name) and (pointer == p or pointer.startswith(f"{p}/"))
            for k, n, p in wanted
        )

    assert all(covered(change) for change in changes), sorted(changes)
    assert {c for c in wanted if c[2] == ""} <= changes
    assert all(
        any(c[:2] == w[:2] and (c[2] == w[2] or c[2].startswith(f"{w[2]}/")) for c in changes)
        for w in wanted
    ), "a documented change is missing"


def test_every_overlay_is_listed() -> None:
    assert {path.name for path in (CLUSTER / "overlays").iterdir()} == set(OVERLAYS)
    assert set(CHANGES) == set(OVERLAYS)


def test_the_admission_policy_allows_privileged_only_for_the_sandbox_group() -> None:
    """Its shape: a v1 policy on pods (ephemeral containers included) bound in Deny mode, whose
    rules name the sandbox group's KubeRay labels and the project's image (as the RayService)."""
    policy, binding = load_cluster_yamls("admission/policy.yaml")
    assert policy["apiVersion"] == binding["apiVersion"] == "admissionregistration.k8s.io/v1"
    assert (policy["kind"], binding["kind"]) == (
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    )
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    assert binding["spec"]["validationActions"] == ["Deny"]
    assert policy["spec"]["failurePolicy"] == "Fail"
    (rule,) = policy["spec"]["matchConstraints"]["resourceRules"]
    assert set(rule["resources"]) == {"pods", "pods/ephemeralcontainers"}
    expressions = " ".join(v["expression"] for v in policy["spec"]["variables"])
    expressions += " ".join(v["expression"] for v in policy["spec"]["validations"])
    for needed in ("'ray.io/group'", "'sandbox'", "'ray.io/node-type'", "'worker'", "RayCluster"):
        assert needed in expressions
    rayservice = load_cluster_yamls("rayservice.yaml")[0]
    group = rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"][1]
    assert group["groupName"] == "sandbox"
    image = group["template"]["spec"]["containers"][0]["image"]
    repository = image.rsplit(":", 1)[0]
    assert f"c.image.startsWith('{repository}:')" in expressions
    assert expressions.count("(") == expressions.count(")")
