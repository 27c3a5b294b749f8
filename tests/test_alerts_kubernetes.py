"""The alerts on Kubernetes' state fire when they should and stay quiet on a healthy cluster.

promtool (scripts/setup unpacks it into .venv/bin) runs cluster/alert-rules.yaml on synthetic
series shaped as their exporters publish them: the KubeRay operator's (KubeRay 1.7: gauges of
value 1 whose `condition` label says "true" or "false"), kube-state-metrics' (pods by phase,
readiness, restarts, last termination reason, and their labels in kube_pod_labels) and Ray
Serve's (ExecAgentNoHealthyReplica, whose series may be missing altogether). Every alert of the
group exec-agent-kubernetes has a case that fires it and one where it stays quiet.

Also the scrape jobs feeding them (cluster/prometheus.yaml): the head's autoscaler and dashboard
exporters on the ports Ray serves them on, the operator's and kube-state-metrics' pods.
tests/test_dashboards.py checks the expressions themselves (metrics, labels, values).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from ray.autoscaler._private.constants import AUTOSCALER_METRIC_PORT
from ray.dashboard.consts import DASHBOARD_METRIC_PORT

from serve_app.deployment import EXECUTOR_NAME, INGRESS_NAME
from tests.support.cluster import PROMTOOL, alert_rules, load_cluster_yaml
from tests.support.paths import CLUSTER

NS = 'namespace="ray"'
KSM = 'job="kube-state-metrics", instance="10.0.0.9:8080"'
OPERATOR = 'job="kuberay-operator", instance="10.0.0.8:8080"'
KSM_AGAIN = 'job="monitoring/kube-state-metrics", instance="10.0.0.9:8080"'
RAY_POD = 'job="exec-agent", instance="10.0.0.7:8080", ray_io_cluster="exec-agent-abcde"'
CLUSTER_NAME = "exec-agent-abcde"
HEAD = "exec-agent-abcde-head-x1"
SANDBOX = "exec-agent-abcde-sandbox-worker-y2"

RULES: dict[str, Any] = {
    rule["alert"]: rule for rule in alert_rules(load_cluster_yaml("alert-rules.yaml"))
}
KUBERNETES_ALERTS = frozenset(
    rule["alert"]
    for group in load_cluster_yaml("alert-rules.yaml")["groups"]
    if group["name"] == "exec-agent-kubernetes"
    for rule in group["rules"]
)


def series(name: str, labels: str, values: str) -> dict[str, str]:
    return {"series": f"{name}{{{labels}}}", "values": values}


def pod_labels(
    pod: str, component: str, node_type: str, group: str, app: str = "exec-agent"
) -> str:
    """The kube_pod_labels series of one pod, as kube-state-metrics exports it with the
    allowlist of cluster/prometheus.yaml."""
    return (
        f'{NS}, pod="{pod}", uid="uid-{pod}", label_app_kubernetes_io_name="{app}", '
        f'label_app_kubernetes_io_component="{component}", label_ray_io_cluster="{CLUSTER_NAME}", '
        f'label_ray_io_group="{group}", label_ray_io_node_type="{node_type}", {KSM}'
    )


def of_pod(pod: str, extra: str = "") -> str:
    """The labels kube-state-metrics gives a series about ``pod``."""
    return ", ".join(part for part in (NS, f'pod="{pod}"', f'uid="uid-{pod}"', extra, KSM) if part)


def fires(alert: str, at: str, summary: str, **labels: str) -> dict[str, Any]:
    """``alert`` firing at ``at`` with these labels (and its severity), its summary rendered."""
    rule = RULES[alert]
    return {
        "eval_time": at,
        "alertname": alert,
        "exp_alerts": [
            {
                "exp_labels": {"severity": rule["labels"]["severity"], **labels},
                "exp_annotations": {
                    "summary": summary,
                    "description": rule["annotations"]["description"],
                },
            }
        ],
    }


def quiet(alert: str, at: str) -> dict[str, Any]:
    return {"eval_time": at, "alertname": alert, "exp_alerts": []}


def promtool_test(tests: list[dict[str, Any]], tmp_path: Path) -> None:
    """``promtool test rules`` on cluster/alert-rules.yaml; fails with promtool's report."""
    assert Path(PROMTOOL).is_file(), "promtool is missing: run scripts/setup"
    spec = tmp_path / "alert-tests.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "rule_files": [str(CLUSTER / "alert-rules.yaml")],
                "evaluation_interval": "1m",
                "tests": [{"interval": "1m", **test} for test in tests],
            }
        )
    )
    done = subprocess.run(
        [PROMTOOL, "test", "rules", str(spec)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def checked_alerts(tests: list[dict[str, Any]]) -> dict[str, set[bool]]:
    """Per alert, whether the tests expect it firing (True), quiet (False), or both."""
    checked: dict[str, set[bool]] = {}
    for test in tests:
        for case in test["alert_rule_test"]:
            checked.setdefault(case["alertname"], set()).add(bool(case.get("exp_alerts")))
    return checked


# --------------------------------------------------------------------------- KubeRay's conditions


def kuberay_service(name: str, condition: str, ready: str, upgrading: str) -> list[dict[str, str]]:
    """The operator's three series of one RayService (each gauge is 1; `condition` varies)."""
    labels = f'name="{name}", {NS}, uid="uid-{name}"'
    return [
        series("kuberay_service_info", f"{labels}, {OPERATOR}", "1x60"),
        series(
            "kuberay_service_condition_ready",
            f'{labels}, condition="{ready}", {OPERATOR}',
            condition,
        ),
        series(
            "kuberay_service_condition_upgrade_in_progress",
            f'{labels}, condition="{upgrading}", {OPERATOR}',
            condition,
        ),
    ]


KUBERAY_TESTS: list[dict[str, Any]] = [
    {  # not Ready, and an upgrade that never finishes (a kustomize prefix on the name)
        "input_series": [
            *kuberay_service("prod-exec-agent", "1x60", ready="false", upgrading="true"),
            series("up", RAY_POD, "1x60"),
            series("kube_pod_labels", pod_labels(HEAD, "ray-head", "head", "headgroup"), "1x60"),
        ],
        "alert_rule_test": [
            quiet("ExecAgentRayServiceNotReady", "9m"),
            fires(
                "ExecAgentRayServiceNotReady",
                "12m",
                "RayService ray/prod-exec-agent not Ready for 10 minutes",
                namespace="ray",
                name="prod-exec-agent",
            ),
            quiet("ExecAgentRayServiceUpgradeStuck", "25m"),
            fires(
                "ExecAgentRayServiceUpgradeStuck",
                "35m",
                "RayService ray/prod-exec-agent upgrading for over 30 minutes",
                namespace="ray",
                name="prod-exec-agent",
            ),
            quiet("ExecAgentKubeRayMetricsMissing", "40m"),
            quiet("ExecAgentPodLabelsMissing", "40m"),
        ],
    },
    {  # healthy: Ready, no upgrade; another team's RayService failing is not ours
        "input_series": [
            *kuberay_service("exec-agent", "1x60", ready="true", upgrading="false"),
            *kuberay_service("recommender", "1x60", ready="false", upgrading="true"),
            series("up", RAY_POD, "1x60"),
        ],
        "alert_rule_test": [
            quiet("ExecAgentRayServiceNotReady", "50m"),
            quiet("ExecAgentRayServiceUpgradeStuck", "50m"),
            quiet("ExecAgentKubeRayMetricsMissing", "50m"),
        ],
    },
    {  # Ray pods scraped, but neither the operator's metrics nor the pods' labels
        "input_series": [series("up", RAY_POD, "1x60")],
        "alert_rule_test": [
            quiet("ExecAgentKubeRayMetricsMissing", "10m"),
            fires(
                "ExecAgentKubeRayMetricsMissing",
                "20m",
                "The KubeRay operator reports nothing about the exec-agent RayService",
            ),
            fires(
                "ExecAgentPodLabelsMissing",
                "20m",
                "kube-state-metrics exports no labels of the exec-agent pods",
                label_app_kubernetes_io_name="exec-agent",  # absent() keeps its equalities
            ),
        ],
    },
    {  # a local `exec-agent serve`: no Kubernetes, nothing missing
        "input_series": [
            series("up", 'job="exec-agent-local", instance="127.0.0.1:8080"', "1x60"),
        ],
        "alert_rule_test": [
            quiet("ExecAgentKubeRayMetricsMissing", "30m"),
            quiet("ExecAgentPodLabelsMissing", "30m"),
        ],
    },
]


def test_kuberay_alerts_fire_on_kuberays_conditions(tmp_path: Path) -> None:
    promtool_test(KUBERAY_TESTS, tmp_path)


# --------------------------------------------------------------------------- the pods


def pod_state(pod: str, phase: str, ready: str, minutes: int = 60) -> list[dict[str, str]]:
    """kube-state-metrics' phase series of ``pod`` (1 for ``phase``, 0 for the others) and its
    Ready condition (``ready``: the values of the condition="true" series)."""
    phases = ("Pending", "Running", "Succeeded", "Failed", "Unknown")
    return [
        *(
            series(
                "kube_pod_status_phase",
                of_pod(pod, f'phase="{p}"'),
                f"{int(p == phase)}x{minutes}",
            )
            for p in phases
        ),
        series("kube_pod_status_ready", of_pod(pod, 'condition="true"'), ready),
    ]


def container(
    pod: str, name: str, restarts: str, reason: str = "", when: str = ""
) -> list[dict[str, str]]:
    """A container's restart counter and, once it has ended, its last termination reason."""
    found = [
        series(
            "kube_pod_container_status_restarts_total", of_pod(pod, f'container="{name}"'), restarts
        )
    ]
    if reason:
        found.append(
            series(
                "kube_pod_container_status_last_terminated_reason",
                of_pod(pod, f'container="{name}", reason="{reason}"'),
                when,
            )
        )
    return found


PENDING = "exec-agent-abcde-sandbox-worker-z3"
OTHER = "recommender-worker-q9"
LABELS = [
    series("kube_pod_labels", pod_labels(HEAD, "ray-head", "head", "headgroup"), "1x60"),
    series("kube_pod_labels", pod_labels(SANDBOX, "sandbox-worker", "worker", "sandbox"), "1x60"),
    series("kube_pod_labels", pod_labels(PENDING, "sandbox-worker", "worker", "sandbox"), "1x60"),
    series(
        "kube_pod_labels", pod_labels(OTHER, "worker", "worker", "cpu", app="recommender"), "1x60"
    ),
]

POD_TESTS: list[dict[str, Any]] = [
    {  # a sandbox pod Pending, a head that never gets Ready, an OOMKill, a crash loop
        "input_series": [
            *LABELS,
            *pod_state(HEAD, "Running", "0x60"),
            *pod_state(SANDBOX, "Running", "1x60"),
            *pod_state(PENDING, "Pending", "_x60"),  # never scheduled: no Ready condition yet
            # kube-state-metrics scraped twice (another job, say the cluster's own monitoring):
            # still one pod Pending, one restart loop.
            *(
                {**item, "series": item["series"].replace(KSM, KSM_AGAIN)}
                for item in (
                    *pod_state(PENDING, "Pending", "_x60"),
                    *container(HEAD, "ray-head", "0x5 1x5 2x5 3x45", "Error", "_x5 1x55"),
                )
            ),
            *container(SANDBOX, "ray-worker", "0x10 1x50", "OOMKilled", "_x10 1x50"),
            *container(HEAD, "ray-head", "0x5 1x5 2x5 3x45", "Error", "_x5 1x55"),
            *container(HEAD, "autoscaler", "0x60"),
        ],
        "alert_rule_test": [
            quiet("ExecAgentPodsPending", "10m"),
            fires(
                "ExecAgentPodsPending",
                "20m",
                f"1 sandbox-worker pods of {CLUSTER_NAME} Pending 15m",
                namespace="ray",
                label_app_kubernetes_io_component="sandbox-worker",
                label_ray_io_cluster=CLUSTER_NAME,
            ),
            quiet("ExecAgentRayHeadNotReady", "8m"),
            fires(
                "ExecAgentRayHeadNotReady",
                "15m",
                f"Ray head {HEAD} of {CLUSTER_NAME} not Ready for 10 minutes",
                namespace="ray",
                pod=HEAD,
                label_ray_io_cluster=CLUSTER_NAME,
            ),
            quiet("ExecAgentContainerOOMKilled", "9m"),
            fires(
                "ExecAgentContainerOOMKilled",
                "12m",
                f"Container ray-worker of {SANDBOX} was OOMKilled",
                namespace="ray",
                pod=SANDBOX,
                container="ray-worker",
                label_app_kubernetes_io_component="sandbox-worker",
            ),
            quiet("ExecAgentContainerOOMKilled", "30m"),  # long ago: its restart left the window
            fires(
                "ExecAgentContainerRestarting",
                "20m",
                f"Container ray-head of {HEAD} restarted 3 times in 30 minutes",
                namespace="ray",
                pod=HEAD,
                container="ray-head",
                label_app_kubernetes_io_component="ray-head",
            ),
        ],
    },
    {  # healthy: everything Running and Ready; one restart long ago; someone else's pod Pending
        "input_series": [
            *LABELS[:2],
            LABELS[3],
            *pod_state(HEAD, "Running", "1x60"),
            *pod_state(SANDBOX, "Running", "1x60"),
            *pod_state(OTHER, "Pending", "_x60"),
            *container(SANDBOX, "ray-worker", "0x10 1x50", "Error", "_x10 1x50"),
            *container(HEAD, "ray-head", "0x60"),
            *container(OTHER, "worker", "0x5 3x55", "OOMKilled", "_x5 1x55"),
        ],
        "alert_rule_test": [
            quiet(name, at)
            for name in (
                "ExecAgentPodsPending",
                "ExecAgentRayHeadNotReady",
                "ExecAgentContainerOOMKilled",
                "ExecAgentContainerRestarting",
                "ExecAgentPodLabelsMissing",
            )
            for at in ("12m", "30m", "55m")
        ],
    },
]


def test_pod_alerts_fire_on_the_projects_pods_only(tmp_path: Path) -> None:
    promtool_test(POD_TESTS, tmp_path)


# --------------------------------------------------------------------------- Serve's replicas

HEALTHY = "ray_serve_deployment_replica_healthy"
SERVE = f'application="exec-agent", SessionName="s1", Component="core_worker", {RAY_POD}'

REPLICA_TESTS: list[dict[str, Any]] = [
    {  # nothing of Serve scraped at all: both deployments are down, not unknown
        "input_series": [series("up", RAY_POD, "0x30")],
        "alert_rule_test": [
            quiet("ExecAgentNoHealthyReplica", "3m"),
            {
                "eval_time": "10m",
                "alertname": "ExecAgentNoHealthyReplica",
                "exp_alerts": [
                    fires(
                        "ExecAgentNoHealthyReplica",
                        "10m",
                        f"Serve deployment {deployment} has no healthy replica",
                        application="exec-agent",
                        deployment=deployment,
                    )["exp_alerts"][0]
                    for deployment in (INGRESS_NAME, EXECUTOR_NAME)
                ],
            },
        ],
    },
    {  # the executor's series gone (its deployment failed), the ingress healthy
        "input_series": [
            series(HEALTHY, f'deployment="{INGRESS_NAME}", replica="i1", {SERVE}', "1x30"),
        ],
        "alert_rule_test": [
            fires(
                "ExecAgentNoHealthyReplica",
                "10m",
                f"Serve deployment {EXECUTOR_NAME} has no healthy replica",
                application="exec-agent",
                deployment=EXECUTOR_NAME,
            ),
        ],
    },
    {  # both healthy: quiet
        "input_series": [
            series(HEALTHY, f'deployment="{INGRESS_NAME}", replica="i1", {SERVE}', "1x30"),
            series(HEALTHY, f'deployment="{EXECUTOR_NAME}", replica="e1", {SERVE}', "1x30"),
            series(HEALTHY, f'deployment="{EXECUTOR_NAME}", replica="e2", {SERVE}', "0x30"),
        ],
        "alert_rule_test": [quiet("ExecAgentNoHealthyReplica", "20m")],
    },
]


def test_no_healthy_replica_fires_when_the_series_are_absent(tmp_path: Path) -> None:
    promtool_test(REPLICA_TESTS, tmp_path)


def test_every_kubernetes_alert_is_seen_firing_and_quiet() -> None:
    """The cases above cover each alert of the group both ways (and only alerts that exist)."""
    assert KUBERNETES_ALERTS
    checked = checked_alerts(KUBERAY_TESTS + POD_TESTS + REPLICA_TESTS)
    assert set(checked) <= set(RULES), sorted(set(checked) - set(RULES))
    for name in KUBERNETES_ALERTS | {"ExecAgentNoHealthyReplica"}:
        assert checked.get(name) == {True, False}, f"{name}: {checked.get(name)}"


def test_a_wrong_expectation_fails(tmp_path: Path) -> None:
    """So that a passing promtool run means something: an alert expected where it is quiet."""
    wrong = [
        {
            "input_series": [series("up", RAY_POD, "1x60")],
            "alert_rule_test": [
                fires(
                    "ExecAgentRayServiceNotReady",
                    "20m",
                    "RayService ray/exec-agent not Ready for 10 minutes",
                    namespace="ray",
                    name="exec-agent",
                )
            ],
        }
    ]
    with pytest.raises(AssertionError, match="ExecAgentRayServiceNotReady"):
        promtool_test(wrong, tmp_path)


# --------------------------------------------------------------------------- the scrape jobs


def scrape_jobs() -> dict[str, dict[str, Any]]:
    return {job["job_name"]: job for job in load_cluster_yaml("prometheus.yaml")["scrape_configs"]}


def keeps(job: dict[str, Any]) -> dict[str, str]:
    return {
        ";".join(relabel["source_labels"]): relabel["regex"]
        for relabel in job["relabel_configs"]
        if relabel.get("action") == "keep"
    }


HEAD_EXPORTERS = {"as-metrics": AUTOSCALER_METRIC_PORT, "dash-metrics": DASHBOARD_METRIC_PORT}
"""The head's other exporters: KubeRay's port names (its ray-cluster.embed-grafana.yaml sample and
PodMonitor; at most 15 characters) and the ports Ray 2.60 serves them on."""


def test_the_head_job_scrapes_the_autoscaler_and_dashboard_exporters() -> None:
    assert HEAD_EXPORTERS == {"as-metrics": 44217, "dash-metrics": 44227}
    job = scrape_jobs()["exec-agent-head"]
    kept = keeps(job)
    assert kept["__meta_kubernetes_pod_label_app_kubernetes_io_name"] == "exec-agent"
    port_regex = kept["__meta_kubernetes_pod_container_port_name"]
    assert {name for name in ("metrics", *HEAD_EXPORTERS) if re.fullmatch(port_regex, name)} == set(
        HEAD_EXPORTERS
    ), "the `metrics` port is job exec-agent's"
    assert all(len(name) <= 15 for name in HEAD_EXPORTERS)
    # Where the head declares Ray's exporter ports, it names them as the job keeps them (a longer
    # name, say autoscaler-metrics, is no valid port name: Kubernetes refuses the pod).
    head = load_cluster_yaml("rayservice.yaml")["spec"]["rayClusterConfig"]["headGroupSpec"]
    by_number = {number: name for name, number in HEAD_EXPORTERS.items()}
    for container in head["template"]["spec"]["containers"]:
        for port in container.get("ports", []):
            if port["containerPort"] in by_number:
                assert port.get("name") == by_number[port["containerPort"]], port


@pytest.mark.parametrize(
    ("job_name", "app"),
    [("kuberay-operator", "kuberay-operator"), ("kube-state-metrics", "kube-state-metrics")],
)
def test_the_exporter_jobs_keep_the_resources_labels(job_name: str, app: str) -> None:
    """Both describe other objects: their `namespace` (and `pod`, `name`) are the objects',
    which honor_labels keeps; each job finds its exporter's pod by its Helm chart's labels."""
    job = scrape_jobs()[job_name]
    assert job["honor_labels"] is True
    assert keeps(job) == {
        "__meta_kubernetes_pod_label_app_kubernetes_io_name": app,
        "__meta_kubernetes_pod_container_port_name": "http",
    }
    assert not any(
        r.get("target_label") in ("namespace", "pod", "name") for r in job["relabel_configs"]
    )
