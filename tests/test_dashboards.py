"""The monitoring files of cluster/ are valid and name only what the service and Ray export.

Offline: no Prometheus, no Grafana, no Ray started. What is checked:

- cluster/grafana-dashboard.json: a Grafana dashboard (recent schemaVersion) whose every query
  goes through its `datasource` variable (no data source uid written in), panels that do not
  overlap, every panel with a query, and every service metric on some panel;
- cluster/alert-rules.yaml: Prometheus rule groups whose every rule has `alert`, `expr`, `for`,
  `labels.severity` and `summary`/`description` annotations, the annotations naming only labels
  the expression's result has;
- cluster/prometheus.yaml: scrapes the local `exec-agent serve` (127.0.0.1, the metrics export
  port of the settings) and, on Kubernetes, the container ports named `metrics` of the pods
  cluster/base/rayservice.yaml makes, with the labels the dashboard and the rules filter on;
- every PromQL expression of those files (the dashboard's queries and variables, the rules'
  expressions) is parsed and type-checked as Prometheus would by promql-parser (a range vector
  where a function wants one, bool on comparisons of scalars, ...), and the label names of its
  series followed through it: `le` kept for histogram_quantile, one-to-one matching only between
  equal label sets, grouping only by labels the series have. Every metric it names must be one
  the service defines (read from its code, as Ray names it) or one of Ray Serve's in
  RAY_SERVE_METRICS; every label it names one those series carry; every value of an enumerated
  label (status, state, limit, reason, ...) one the service emits;
- the rules on Kubernetes' state name the KubeRay operator's metrics (KubeRay 1.7) and
  kube-state-metrics' as they export them, and only the pod labels cluster/prometheus.yaml has
  kube-state-metrics export (its --metric-labels-allowlist);
- promtool (scripts/setup unpacks it from Debian's `prometheus` package): `promtool check
  rules` and `promtool test rules` on synthetic series: the main alerts fire when they should, and not
  when they should not (those on Kubernetes' state: tests/test_alerts_kubernetes.py).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import re
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

import promql_parser as promql
import pytest
import yaml
from ray.serve.metrics import APPLICATION_TAG, DEPLOYMENT_TAG, REPLICA_TAG

from executors import RUNTIMES, TERMINAL_STATUSES
from executors import _metrics as executor_side
from executors._sessions import _metrics as session_side
from serve_app.deployment import EXECUTOR_NAME, INGRESS_NAME, executor_name
from serve_app.http import _metrics as ingress_side
from serve_app.http import routes as api_side
from serve_app.settings import Settings
from tests.support.cluster import PROMTOOL, alert_rules, load_cluster_yaml
from tests.support.paths import CLUSTER

# --------------------------------------------------------------------------- what is exported

RAY_PREFIX = "ray_"
"""Ray exports every ray.util.metrics metric to Prometheus under this prefix (Ray 2.60: the
metrics agent's OpenTelemetry recorder names each instrument ``ray_<name>``; tested below), and a
counter as ``<name>_total`` whether or not its name already ends so. The one place it is
spelt."""

RAY_LABELS = frozenset(
    {
        "Component",
        "NodeAddress",
        "SessionName",
        "Version",
        "WorkerId",
        "otel_scope_name",
        "otel_scope_schema_url",
        "otel_scope_version",
    }
)
"""The labels Ray 2.60's metrics agent puts on every application series (seen on its endpoint)."""


HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

SERVE_REPLICA_TAGS = (DEPLOYMENT_TAG, REPLICA_TAG, APPLICATION_TAG)
"""Inside a Serve replica the service's metrics are ray.serve.metrics, which add these."""


@dataclass(frozen=True)
class MetricDef:
    kind: Literal["counter", "gauge", "histogram"]
    name: str
    tags: tuple[str, ...]


class _MetricTypes:
    """Stands in for ray.util.metrics (or ray.serve.metrics): notes each metric defined."""

    def __init__(self) -> None:
        self.defined: list[MetricDef] = []
        self.Counter = self._type("counter")
        self.Gauge = self._type("gauge")
        self.Histogram = self._type("histogram")

    def _type(self, kind: Literal["counter", "gauge", "histogram"]) -> type:
        defined = self.defined

        class Metric:
            def __init__(self, name: str, tag_keys: tuple[str, ...] = (), **_: Any) -> None:
                defined.append(MetricDef(kind, name, tuple(tag_keys)))

            def inc(self, *_: Any, **__: Any) -> None: ...
            def set(self, *_: Any, **__: Any) -> None: ...
            def observe(self, *_: Any, **__: Any) -> None: ...

        return Metric


@functools.cache
def service_metrics() -> dict[str, MetricDef]:
    """The metrics the service defines, read from the code itself (the one list): the ingress'
    and the executors' Ray metric sets built against a stand-in for Ray's metric types."""
    types = _MetricTypes()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(executor_side, "metric_types", lambda: types)
        patch.setattr(ingress_side, "metric_types", lambda: types)
        patch.setattr(session_side, "metric_types", lambda: types)
        patch.setattr(executor_side, "_refresher", SimpleNamespace(add=lambda gauge: None))
        executor_side._RayExecutorMetrics()
        ingress_side._RayIngressMetrics()
        session_side.ray_session_metrics()
    names = [metric.name for metric in types.defined]
    assert len(names) == len(set(names)), f"a metric defined twice: {sorted(names)}"
    return {metric.name: metric for metric in types.defined}


# Ray Serve's own metrics the files may use (exported name: tag keys), from Ray 2.60's
# ray/serve/_private (request_ingress_metrics.py, deployment_state.py, router.py). The test
# below finds each in the Grafana dashboards the installed Ray ships.
RAY_SERVE_METRICS: dict[str, tuple[str, ...]] = {
    "ray_serve_num_ongoing_http_requests": ("node_id", "node_ip_address"),
    "ray_serve_deployment_replica_healthy": ("deployment", "replica", "application"),
    "ray_serve_deployment_queued_queries": ("deployment", "application", "handle", "actor_id"),
}


# What the KubeRay operator exports (KubeRay 1.7, ray-operator/controllers/ray/metrics/
# ray_service_metrics.go and ray_cluster_metrics.go): name: (labels, enumerated values). Each is a
# gauge of value 1; `condition` is strconv.FormatBool of the resource's condition.
CONDITION = {"condition": frozenset({"true", "false"})}
KUBERAY_METRICS: dict[str, tuple[tuple[str, ...], dict[str, frozenset[str]]]] = {
    "kuberay_service_info": (("name", "namespace", "uid"), {}),
    "kuberay_service_condition_ready": (("name", "namespace", "uid", "condition"), CONDITION),
    "kuberay_service_condition_upgrade_in_progress": (
        ("name", "namespace", "uid", "condition"),
        CONDITION,
    ),
    "kuberay_cluster_info": (
        ("name", "namespace", "uid", "owner_kind"),
        {"owner_kind": frozenset({"None", "RayJob", "RayService"})},
    ),
    "kuberay_cluster_condition_provisioned": (("name", "namespace", "uid", "condition"), CONDITION),
    "kuberay_cluster_provisioned_duration_seconds": (("name", "namespace", "uid"), {}),
}

# kube-state-metrics' pod metrics the rules use (its docs/metrics/workload/pod-metrics.md), as
# name: (labels, enumerated values); kube_pod_labels' label_* labels are those the allowlist of
# cluster/prometheus.yaml lets it export (allowed_pod_labels()).
POD = ("namespace", "pod", "uid")
KUBE_STATE_METRICS: dict[str, tuple[tuple[str, ...], dict[str, frozenset[str]]]] = {
    "kube_pod_status_phase": (
        (*POD, "phase"),
        {"phase": frozenset({"Pending", "Running", "Succeeded", "Failed", "Unknown"})},
    ),
    "kube_pod_status_ready": (
        (*POD, "condition"),
        {"condition": frozenset({"true", "false", "unknown"})},
    ),
    "kube_pod_container_status_restarts_total": ((*POD, "container"), {}),
    "kube_pod_container_status_last_terminated_reason": (
        (*POD, "container", "reason"),
        # Kubernetes' own reasons (the container runtime may add others: not matched on here).
        {"reason": frozenset({"OOMKilled", "Error", "Completed", "ContainerCannotRun"})},
    ),
}

ALLOWLIST = re.compile(r"--metric-labels-allowlist=pods=\[([^\]]*)\]")


def kube_label(key: str) -> str:
    """kube-state-metrics' name for a Kubernetes label: label_ and the key, sanitized."""
    return "label_" + re.sub(r"[^a-zA-Z0-9_]", "_", key)


def allowed_pod_labels() -> dict[str, str]:
    """The pod labels cluster/prometheus.yaml tells kube-state-metrics to export (its one
    --metric-labels-allowlist), as kube_pod_labels names them: {label_...: Kubernetes key}."""
    (keys,) = ALLOWLIST.findall((CLUSTER / "prometheus.yaml").read_text())
    return {kube_label(key.strip()): key.strip() for key in keys.split(",")}


def pod_label_values() -> dict[str, frozenset[str]]:
    """The values the project's pods carry for the allowed labels (cluster/base/rayservice.yaml's pod
    templates, KubeRay's own labels as it sets them)."""
    cluster = load_cluster_yaml("rayservice.yaml")["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    values: dict[str, set[str]] = {}
    for group in groups:
        for key, value in group["template"]["metadata"].get("labels", {}).items():
            values.setdefault(kube_label(key), set()).add(value)
    values[kube_label("ray.io/node-type")] = {"head", "worker"}
    values[kube_label("ray.io/group")] = {"headgroup"} | {
        group["groupName"] for group in cluster["workerGroupSpecs"]
    }
    values.pop(kube_label("ray.io/cluster"), None)  # the RayCluster's generated name
    return {label: frozenset(found) for label, found in values.items()}


def exported_series(metric: MetricDef) -> dict[str, frozenset[str]]:
    """The Prometheus series one service metric becomes, each with its labels (the metric's
    tags, Serve's and Ray's)."""
    full = RAY_PREFIX + metric.name
    tags = frozenset(metric.tags) | frozenset(SERVE_REPLICA_TAGS) | RAY_LABELS
    if metric.kind == "counter":
        return {full.removesuffix("_total") + "_total": tags}
    if metric.kind == "histogram":
        return {f"{full}_bucket": tags | {"le"}, f"{full}_sum": tags, f"{full}_count": tags}
    return {full: tags}


def serve_application_names() -> frozenset[str]:
    config = load_cluster_yaml("serve-config.yaml")
    return frozenset(app["name"] for app in config["applications"])


def api_routes() -> frozenset[str]:
    """The route templates the API declares (the ``route`` label's values)."""
    routes = {getattr(route, "path", None) for route in api_side.ROUTES}
    assert routes and None not in routes, "a route of serve_app.http.routes without a template"
    return frozenset({*routes, ingress_side.UNMATCHED_ROUTE})


def label_values() -> dict[str, frozenset[str]]:
    """The values of each enumerated label: anything else in a matcher is a typo."""
    return {
        "status": frozenset(status.value for status in TERMINAL_STATUSES),
        "cached": frozenset({"true", "false"}),
        "state": frozenset({"busy", "free"}),
        "limit": frozenset(ingress_side.RATE_LIMITS),
        "reason": frozenset(ingress_side.REJECTION_REASONS.values()),
        "method": HTTP_METHODS | {"other"},
        "route": api_routes(),
        "application": serve_application_names(),
        "deployment": frozenset(
            {INGRESS_NAME, EXECUTOR_NAME, *(executor_name(runtime) for runtime in RUNTIMES)}
        ),
    }


# --------------------------------------------------------------------------- PromQL

SCALAR, STRING, VECTOR, MATRIX = (
    promql.ValueType.Scalar,
    promql.ValueType.String,
    promql.ValueType.Vector,
    promql.ValueType.Matrix,
)
MATCH_OPERATORS = {  # by str(): the library's enums are not hashable
    str(promql.MatchOp.Equal): "=",
    str(promql.MatchOp.NotEqual): "!=",
    str(promql.MatchOp.Re): "=~",
    str(promql.MatchOp.NotRe): "!~",
}
SELECTING = frozenset({"topk", "bottomk", "limitk", "limit_ratio"})  # keep the series' labels
SET_OPERATORS = frozenset({"and", "or", "unless"})


class PromQLError(ValueError):
    pass


@dataclass(frozen=True)
class Typed:
    """What an expression evaluates to, and the label names of its series (None: unknown)."""

    kind: promql.ValueType
    labels: frozenset[str] | None = None


@dataclass(frozen=True)
class Selector:
    name: str
    matchers: tuple[tuple[str, str, str], ...]


@dataclass(frozen=True)
class Catalog:
    """What the expressions may name: each series with its label names, enumerated values."""

    series: Mapping[str, frozenset[str]]
    values: Mapping[str, frozenset[str]]
    foreign: Mapping[str, Mapping[str, frozenset[str]]] = field(default_factory=dict)
    """Metrics of other exporters: their own enumerated values (the service's never apply)."""


@dataclass(frozen=True)
class Analysis:
    result: Typed
    selectors: tuple[Selector, ...]


def analyze(expr: str, catalog: Catalog) -> Analysis:
    """Parse and check ``expr``; a PromQLError says what is wrong, and where.

    promql-parser parses it and checks its value types as Prometheus does (a range vector where a
    function wants one, bool on comparisons of scalars, ...); what it cannot know is checked here,
    following the label names of the series through the expression."""
    try:
        tree = promql.parse(expr)
    except ValueError as exc:
        raise PromQLError(str(exc)) from exc
    checker = _Checker(catalog)
    return Analysis(checker.check(tree), tuple(checker.selectors))


class _Checker:
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.selectors: list[Selector] = []

    @staticmethod
    def fail(message: str, node: promql.Expr) -> PromQLError:
        return PromQLError(f"{message} (in {str(node)[:60]!r})")

    def check(self, node: promql.Expr) -> Typed:
        match node:
            case promql.NumberLiteral():
                return Typed(SCALAR)
            case promql.StringLiteral():
                return Typed(STRING)
            case promql.ParenExpr() | promql.UnaryExpr():
                return self.check(node.expr)
            case promql.VectorSelector():
                return self.selector(node)
            case promql.MatrixSelector():
                return Typed(MATRIX, self.selector(node.vector_selector).labels)
            case promql.SubqueryExpr():
                return Typed(MATRIX, self.check(node.expr).labels)
            case promql.AggregateExpr():
                return self.aggregation(node)
            case promql.Call():
                return self.call(node)
            case promql.BinaryExpr():
                return self.combine(node)
        raise self.fail(f"unexpected {type(node).__name__}", node)

    def selector(self, node: promql.VectorSelector) -> Typed:
        if node.matchers.or_matchers:
            raise self.fail("alternatives of label matchers ('or') are not checked", node)
        matchers = tuple(
            (matcher.name, MATCH_OPERATORS[str(matcher.op)], matcher.value)
            for matcher in node.matchers.matchers
        )
        name = node.name or next(
            (v for label, op, v in matchers if label == "__name__" and op == "="), None
        )
        if name is None:
            raise self.fail("a selector without a metric name", node)
        labels = self.catalog.series.get(name)
        if labels is None:
            raise self.fail(f"{name} is no exported metric", node)
        for label, operator, value in matchers:
            self.check_matcher(name, labels, label, operator, value, node)
        self.selectors.append(Selector(name, matchers))
        return Typed(VECTOR, labels)

    def check_matcher(
        self, name: str, labels: frozenset[str], label: str, op: str, value: str, at: promql.Expr
    ) -> None:
        if label == "__name__":
            return
        if label not in labels:
            raise self.fail(f"{name} has no label {label!r} (it has {sorted(labels)})", at)
        foreign = self.catalog.foreign.get(name)
        allowed = self.catalog.values.get(label) if foreign is None else foreign.get(label)
        if allowed is None or "$" in value:  # not enumerated, or a Grafana variable
            return
        if op in ("=", "!=") and value not in allowed:
            raise self.fail(f"{label}={value!r}: {label} is one of {sorted(allowed)}", at)
        if op in ("=~", "!~") and not any(re.fullmatch(value, v) for v in allowed):
            raise self.fail(f"{label}=~{value!r} matches none of {sorted(allowed)}", at)

    def aggregation(self, node: promql.AggregateExpr) -> Typed:
        operator = str(node.op)
        if node.param is not None:
            self.check(node.param)
        argument = self.check(node.expr)
        if operator in SELECTING:
            return Typed(VECTOR, argument.labels)
        if operator == "count_values":
            return Typed(VECTOR, None)
        if node.modifier is None:
            return Typed(VECTOR, frozenset())
        labels = frozenset(node.modifier.labels)
        keyword = "by" if node.modifier.type == promql.AggModifierType.By else "without"
        if argument.labels is not None and not labels <= argument.labels:
            missing = sorted(labels - argument.labels)
            raise self.fail(f"{operator} {keyword} {missing}: the series have no such label", node)
        if keyword == "by":
            return Typed(VECTOR, labels)
        return Typed(VECTOR, None if argument.labels is None else argument.labels - labels)

    def call(self, node: promql.Call) -> Typed:
        name, result = node.func.name, node.func.return_type
        args = [self.check(arg) for arg in node.args]
        if result != VECTOR:
            return Typed(result)
        if name == "histogram_quantile":
            buckets = args[1].labels
            if buckets is not None and "le" not in buckets:
                raise self.fail("histogram_quantile() over series without `le`", node)
            return Typed(VECTOR, None if buckets is None else buckets - {"le"})
        if name == "label_replace":
            source, target = args[0].labels, node.args[1].val
            return Typed(VECTOR, None if source is None else source | {target})
        if name.startswith("absent"):
            return Typed(VECTOR, None)
        series = [arg.labels for arg in args if arg.kind in (VECTOR, MATRIX)]
        return Typed(VECTOR, series[0] if series else frozenset())

    def combine(self, node: promql.BinaryExpr) -> Typed:
        operator = str(node.op)
        left, right = self.check(node.lhs), self.check(node.rhs)
        if left.kind == right.kind == SCALAR:
            return Typed(SCALAR)
        if SCALAR in (left.kind, right.kind):
            return Typed(VECTOR, left.labels if left.kind == VECTOR else right.labels)
        ours, theirs = left.labels, right.labels
        modifier = node.modifier
        matching = None if modifier is None else modifier.matching
        if modifier is None or matching is None:
            if operator == "or":
                return Typed(VECTOR, None if ours is None or theirs is None else ours | theirs)
            if ours is not None and theirs is not None and ours != theirs:
                raise self.fail(
                    f"{operator} matches series on all their labels, {sorted(ours)} on the left "
                    f"and {sorted(theirs)} on the right: nothing matches (on()/ignoring()?)",
                    node,
                )
            return Typed(VECTOR, ours)
        labels = frozenset(matching.labels)
        on = matching.type == promql.LabelModifierType.Include  # else ignoring()
        for side in (ours, theirs):
            if on and side is not None and not labels <= side:
                raise self.fail(f"on{sorted(labels)}: a side lacks one of these labels", node)
        if operator in SET_OPERATORS:
            return Typed(VECTOR, ours)
        include = frozenset(modifier.group_labels or ())
        if modifier.card == promql.VectorMatchCardinality.ManyToOne:  # group_left
            return Typed(VECTOR, None if ours is None else ours | include)
        if modifier.card == promql.VectorMatchCardinality.OneToMany:  # group_right
            return Typed(VECTOR, None if theirs is None else theirs | include)
        if on:
            return Typed(VECTOR, labels)
        return Typed(VECTOR, None if ours is None else ours - labels)


GRAFANA_INTERVALS = re.compile(r"\$(?:__rate_interval|__interval|__range)\b")


def grafana_query(expr: str) -> str:
    """A dashboard query as Prometheus gets it: Grafana's interval variables become durations
    (its other variables may only appear inside label values, where they stay)."""
    return GRAFANA_INTERVALS.sub("5m", expr)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((CLUSTER / "grafana-dashboard.json").read_text())
    return loaded


@pytest.fixture(scope="module")
def rules() -> dict[str, Any]:
    loaded: dict[str, Any] = load_cluster_yaml("alert-rules.yaml")
    return loaded


@pytest.fixture(scope="module")
def prometheus() -> dict[str, Any]:
    loaded: dict[str, Any] = load_cluster_yaml("prometheus.yaml")
    return loaded


def scrape_labels(prometheus: dict[str, Any]) -> frozenset[str]:
    """The labels Prometheus adds to every scraped series under cluster/prometheus.yaml."""
    labels = {"job", "instance"}
    for job in prometheus["scrape_configs"]:
        for static in job.get("static_configs", []):
            labels |= set(static.get("labels", {}))
        for relabel in job.get("relabel_configs", []):
            target = relabel.get("target_label")
            if target and not target.startswith("__"):
                labels.add(target)
    return frozenset(labels)


@pytest.fixture(scope="module")
def catalog(prometheus: dict[str, Any]) -> Catalog:
    scraped = scrape_labels(prometheus)
    series: dict[str, frozenset[str]] = {"up": scraped}
    for metric in service_metrics().values():
        for full, labels in exported_series(metric).items():
            series[full] = labels | scraped
    for name, serve_tags in RAY_SERVE_METRICS.items():
        series[name] = frozenset(serve_tags) | RAY_LABELS | scraped
    # Scraped with honor_labels: the exporter's `namespace` and `pod` are kept over the target's.
    foreign: dict[str, Mapping[str, frozenset[str]]] = {}
    for name, (labels, values) in (KUBERAY_METRICS | KUBE_STATE_METRICS).items():
        series[name] = frozenset(labels) | scraped
        foreign[name] = values
    allowed = allowed_pod_labels()
    series["kube_pod_labels"] = frozenset({*POD, *allowed}) | scraped
    foreign["kube_pod_labels"] = {
        label: values for label, values in pod_label_values().items() if label in allowed
    }
    return Catalog(series, label_values(), foreign)


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside collapsed rows too."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) of every query of the dashboard: panel targets and query variables."""
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r} {target['refId']}", grafana_query(target["expr"])
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]
        text = query["query"] if isinstance(query, dict) else query
        match = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", text.strip(), re.DOTALL)
        assert match, f"variable {variable['name']}: only label_values(selector, label) is checked"
        yield f"variable {variable['name']!r}", match.group(1)


def rule_queries(rules: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for rule in alert_rules(rules):
        yield f"alert {rule['alert']}", rule["expr"]


def every_query(dashboard: dict[str, Any], rules: dict[str, Any]) -> Iterator[tuple[str, str]]:
    yield from queries(dashboard)
    yield from rule_queries(rules)


# --------------------------------------------------------------------------- the parser itself

P = RAY_PREFIX


@pytest.mark.parametrize(
    ("expr", "error"),
    [
        (f"sum(rate({P}exec_agent_executions_total[5m])", "unclosed left parenthesis"),
        (
            f"rate({P}exec_agent_queue_depth)",
            "expected type matrix in call to function 'rate', got vector",
        ),
        (
            f"sum({P}exec_agent_queue_depth[5m])",
            "expected type vector in aggregation expression, got matrix",
        ),
        (
            f"{P}exec_agent_executions_total{{status='ok'}}[5m:1m] > 1",
            "must contain only scalar and instant vector types",
        ),
        ("histogram_quantile(0.9, sum by (route) (rate(x_bucket[5m])))", "no exported metric"),
        (
            f"histogram_quantile(0.9, sum(rate({P}exec_agent_queue_wait_seconds_bucket[5m])))",
            "without `le`",
        ),
        (f"{P}exec_agent_executions", "no exported metric"),
        ("exec_agent_executions_total", "no exported metric"),
        (f"{P}exec_agent_executions_total{{state='busy'}}", "has no label 'state'"),
        (f"{P}exec_agent_executions_total{{status='internal'}}", "status is one of"),
        (f"{P}exec_agent_sandbox_slots{{state=~'idle|spare'}}", "matches none of"),
        (f"sum by (route) ({P}exec_agent_queue_depth)", "no such label"),
        (
            f"sum({P}exec_agent_queue_depth) / sum by (state) ({P}exec_agent_sandbox_slots)",
            "nothing matches",
        ),
        (f"rates({P}exec_agent_queue_depth[5m])", "unknown function"),
        ("{job='exec-agent'}", "a selector without a metric name"),
        (f"{P}exec_agent_queue_depth / on (route) {P}exec_agent_queue_depth", "a side lacks"),
        (f"{P}exec_agent_queue_depth{{job=~$cluster}}", "unexpected character inside braces: '$'"),
        ("1 > 2", "comparisons between scalars must use BOOL modifier"),
        (f"{P}exec_agent_queue_depth by (state)", "invalid promql query"),
        ('kuberay_service_condition_ready{condition="False"}', "condition is one of"),
        (
            'kube_pod_container_status_last_terminated_reason{reason="OOMKill"}',
            "reason is one of",
        ),
        ('kube_pod_labels{label_app_kubernetes_io_instance="x"}', "has no label"),
        ('kube_pod_labels{label_app_kubernetes_io_component="sandbox"}', "is one of"),
        ("kuberay_service_ready", "no exported metric"),
    ],
)
def test_the_parser_refuses_broken_expressions(catalog: Catalog, expr: str, error: str) -> None:
    with pytest.raises(PromQLError, match=re.escape(error)):
        analyze(expr, catalog)


def test_the_parser_follows_result_labels(catalog: Catalog) -> None:
    def labels(expr: str) -> frozenset[str] | None:
        return analyze(expr, catalog).result.labels

    bucket = f"rate({P}exec_agent_request_duration_seconds_bucket[5m])"
    assert labels(f"histogram_quantile(0.99, sum by (le, route) ({bucket}))") == {"route"}
    assert labels(f"sum({P}exec_agent_queue_depth) > 10") == frozenset()
    slots = f"sum by (state) ({P}exec_agent_sandbox_slots)"
    assert labels(f"-{slots} * on (state) group_left () {slots}") == {"state"}
    assert labels(f"{slots} / ignoring (state) group_left sum({slots})") == {"state"}
    assert labels('up{job="exec-agent"} == 0') == catalog.series["up"]
    assert analyze(f"deriv(sum({P}exec_agent_queue_depth)[15m:1m])", catalog).result.kind == VECTOR
    assert analyze("time() - 1", catalog).result.kind == SCALAR


def test_ray_exports_application_metrics_under_the_prefix() -> None:
    """RAY_PREFIX is what the installed Ray's metrics agent puts before an application metric's
    name, and the Serve metrics allowed here are ones Ray's own Serve dashboards query."""
    from ray._private.telemetry import open_telemetry_metric_recorder as recorder

    assert f"{recorder.NAMESPACE}_" == RAY_PREFIX
    spec = importlib.util.find_spec("ray")
    assert spec is not None and spec.origin is not None
    ray_dashboards = Path(spec.origin).parent / "dashboard/modules/metrics/dashboards"
    shipped = "".join(path.read_text() for path in ray_dashboards.glob("serve*_panels.py"))
    for name in RAY_SERVE_METRICS:
        assert re.search(rf"\b{name}\b", shipped), f"{name}: not a metric Ray's Serve exports"


def test_the_service_defines_metrics_by_prometheus_conventions() -> None:
    assert service_metrics(), "the service defines no metric"
    for name, metric in service_metrics().items():
        assert name.startswith("exec_agent_")
        assert name.endswith("_total") == (metric.kind == "counter"), name
        if metric.kind == "histogram":
            assert name.endswith(("_seconds", "_bytes")), f"{name}: a unit suffix"
        assert not {"le", *SERVE_REPLICA_TAGS} & set(metric.tags), name


# --------------------------------------------------------------------------- the dashboard


def test_dashboard_is_a_recent_grafana_dashboard(dashboard: dict[str, Any]) -> None:
    assert dashboard["schemaVersion"] >= 39  # Grafana 11
    assert dashboard["title"]
    assert dashboard["uid"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    source = variables["datasource"]
    assert source["type"] == "datasource"
    assert source["query"] == "prometheus"
    assert "__inputs" not in dashboard  # an export for sharing would name its data source


def test_every_query_goes_through_the_datasource_variable(dashboard: dict[str, Any]) -> None:
    """No data source uid is written in: whoever imports the dashboard picks theirs."""

    def walk(value: Any, where: str) -> Iterator[tuple[str, Any]]:
        if isinstance(value, dict):
            for key, item in value.items():
                if key == "datasource":
                    yield where, item
                yield from walk(item, f"{where}.{key}")
        elif isinstance(value, list):
            for index, item in enumerate(value):
                yield from walk(item, f"{where}[{index}]")

    found = list(walk(dashboard["panels"], "panels")) + list(
        walk(dashboard["templating"], "templating")
    )
    assert found
    for where, source in found:
        assert source in (
            {"type": "prometheus", "uid": "${datasource}"},
            {"type": "prometheus", "uid": "$datasource"},
        ), f"{where}: data source {source!r}"
    assert "DS_PROMETHEUS" not in json.dumps(dashboard)


def test_panels_are_laid_out_and_each_has_a_query(dashboard: dict[str, Any]) -> None:
    everything = list(panels(dashboard))
    ids = [panel["id"] for panel in everything]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: dict[tuple[int, int], str] = {}
    for panel in everything:
        title = panel["title"]
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24, title
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{title!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = title
        if panel["type"] == "row":
            continue
        assert panel.get("description"), f"{title!r}: say what it shows and what is normal"
        targets = panel.get("targets", [])
        assert targets, f"{title!r} has no query"
        refs = [target["refId"] for target in targets]
        assert len(refs) == len(set(refs)), f"{title!r}: refIds must be unique"
        for target in targets:
            assert target.get("expr", "").strip(), f"{title!r} {target['refId']}: empty query"


@pytest.mark.parametrize("source", ["dashboard", "rules"])
def test_every_query_parses_and_names_exported_metrics(
    dashboard: dict[str, Any], rules: dict[str, Any], catalog: Catalog, source: str
) -> None:
    found = queries(dashboard) if source == "dashboard" else rule_queries(rules)
    problems = []
    count = 0
    for where, expr in found:
        count += 1
        try:
            analysis = analyze(expr, catalog)
        except PromQLError as exc:
            problems.append(f"{where}: {exc}")
            continue
        if analysis.result.kind not in (VECTOR, SCALAR):
            problems.append(f"{where}: evaluates to a {analysis.result.kind}")
        if not analysis.selectors:
            problems.append(f"{where}: names no metric")
    assert count > 0
    assert not problems, "\n".join(problems)


def test_the_dashboard_shows_every_service_metric(
    dashboard: dict[str, Any], catalog: Catalog
) -> None:
    named = {
        selector.name
        for _, expr in queries(dashboard)
        for selector in analyze(expr, catalog).selectors
    }
    for name, metric in service_metrics().items():
        assert named & set(exported_series(metric)), f"no panel shows {name}"
    assert named & set(RAY_SERVE_METRICS), "no panel shows Ray Serve's own view"


def test_dashboard_queries_filter_on_the_cluster_variable(
    dashboard: dict[str, Any], catalog: Catalog
) -> None:
    """Every selector of a panel carries the `cluster` filter, so that picking one Ray cluster
    (a RayService upgrade runs two) never mixes them in one panel."""
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert "cluster" in variables
    for where, expr in queries(dashboard):
        if not where.startswith("panel"):
            continue
        for selector in analyze(expr, catalog).selectors:
            assert ("ray_io_cluster", "=~", "$cluster") in selector.matchers, (
                f"{where}: {selector.name} not filtered on $cluster"
            )


# --------------------------------------------------------------------------- the alert rules


DURATION = re.compile(r"(?:\d+(?:ms|s|m|h|d|w|y))+")
TEMPLATE_LABELS = re.compile(r"\$labels\.(\w+)")


def test_alert_rules_are_complete(rules: dict[str, Any]) -> None:
    assert rules["groups"]
    names: list[str] = []
    for group in rules["groups"]:
        assert group["name"]
        assert group["rules"], f"group {group['name']} is empty"
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
            name = rule["alert"]
            names.append(name)
            assert re.fullmatch(r"ExecAgent[A-Z]\w+", name), name
            assert rule["expr"].strip(), name
            assert DURATION.fullmatch(str(rule["for"])), f"{name}: for {rule['for']!r}"
            assert rule["labels"]["severity"] in ("critical", "warning"), name
            annotations = rule["annotations"]
            assert len(annotations["summary"]) <= 120, f"{name}: a one-line summary"
            assert len(annotations["description"]) >= 80, f"{name}: say what to do"
    assert len(names) == len(set(names)), "alert names must be unique"


def test_annotations_name_labels_the_alert_has(rules: dict[str, Any], catalog: Catalog) -> None:
    for rule in alert_rules(rules):
        result = analyze(rule["expr"], catalog).result
        have = set(result.labels or ()) | set(rule["labels"])
        for text in rule["annotations"].values():
            for label in TEMPLATE_LABELS.findall(text):
                assert result.labels is None or label in have, (
                    f"{rule['alert']}: $labels.{label}, but its series have {sorted(have)}"
                )


def test_the_required_alerts_are_there(rules: dict[str, Any], catalog: Catalog) -> None:
    """Each concern of the service has a rule watching the metric that shows it."""
    watched: dict[str, set[str]] = {}
    for rule in alert_rules(rules):
        for selector in analyze(rule["expr"], catalog).selectors:
            watched.setdefault(selector.name, set()).add(rule["alert"])
    for needed in (
        f"{P}exec_agent_executions_total",  # internal_error share
        f"{P}exec_agent_request_duration_seconds_bucket",  # p99 latency
        f"{P}exec_agent_sandbox_slots",  # saturation
        f"{P}exec_agent_queue_depth",
        "up",  # readiness of the metrics endpoints
        "ray_serve_deployment_replica_healthy",
        f"{P}exec_agent_sandbox_start_failures_total",
        f"{P}exec_agent_db_write_retries_total",
        "kuberay_service_condition_ready",  # KubeRay's own view
        "kuberay_service_condition_upgrade_in_progress",  # a stuck upgrade
        "kuberay_service_info",  # the operator's metrics missing
        "kube_pod_status_phase",  # Pending pods
        "kube_pod_status_ready",  # a head that is not Ready
        "kube_pod_container_status_last_terminated_reason",  # OOMKills
        "kube_pod_container_status_restarts_total",
        "kube_pod_labels",  # the project's pods, by label
    ):
        assert needed in watched, f"no alert watches {needed}"


def test_alerts_on_scrape_jobs_name_the_jobs_prometheus_has(
    rules: dict[str, Any], dashboard: dict[str, Any], prometheus: dict[str, Any], catalog: Catalog
) -> None:
    jobs = {job["job_name"] for job in prometheus["scrape_configs"]}
    for where, expr in every_query(dashboard, rules):
        for selector in analyze(expr, catalog).selectors:
            for label, op, value in selector.matchers:
                if label != "job":
                    continue
                matched = {job for job in jobs if re.fullmatch(value, job)}
                if op == "=~":
                    for alternative in value.split("|"):
                        assert any(re.fullmatch(alternative, job) for job in jobs), (
                            f"{where}: job=~{value!r}: {alternative!r} is no scrape job"
                        )
                else:
                    assert op == "=" and matched, f"{where}: job {value!r} is no scrape job"


# --------------------------------------------------------------------------- Prometheus' config


def test_prometheus_scrapes_the_metrics_port(prometheus: dict[str, Any]) -> None:
    port = Settings.model_fields["metrics_port"].default
    assert port == 8080
    assert prometheus["rule_files"] == ["alert-rules.yaml"]
    assert (CLUSTER / prometheus["rule_files"][0]).is_file()
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}

    local = jobs["exec-agent-local"]
    (static,) = local["static_configs"]
    assert static["targets"] == [f"127.0.0.1:{port}"]

    kubernetes = jobs["exec-agent"]
    assert [sd["role"] for sd in kubernetes["kubernetes_sd_configs"]] == ["pod"]
    keeps = {
        tuple(relabel["source_labels"]): relabel["regex"]
        for relabel in kubernetes["relabel_configs"]
        if relabel.get("action") == "keep"
    }
    assert keeps[("__meta_kubernetes_pod_container_port_name",)] == "metrics"
    assert keeps[("__meta_kubernetes_pod_label_app_kubernetes_io_name",)] == "exec-agent"


def test_the_kubernetes_job_finds_every_ray_pod(prometheus: dict[str, Any]) -> None:
    """The pods cluster/base/rayservice.yaml makes pass the job's keep rules, each on its `metrics`
    port, 8080: the head (the API's metrics) and the sandbox workers (the executors')."""
    rayservice = load_cluster_yaml("rayservice.yaml")
    cluster = rayservice["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    job = next(j for j in prometheus["scrape_configs"] if j["job_name"] == "exec-agent")
    keeps = [r for r in job["relabel_configs"] if r.get("action") == "keep"]
    for group in groups:
        template = group["template"]
        meta: dict[str, str] = {
            f"__meta_kubernetes_pod_label_{re.sub(r'[^a-zA-Z0-9_]', '_', key)}": value
            for key, value in template["metadata"]["labels"].items()
        }
        ports = template["spec"]["containers"][0]["ports"]
        kept = []
        for port in ports:
            target = {**meta, "__meta_kubernetes_pod_container_port_name": port.get("name", "")}
            if all(
                re.fullmatch(
                    keep["regex"], ";".join(target.get(s, "") for s in keep["source_labels"])
                )
                for keep in keeps
            ):
                kept.append(port)
        assert [(p["name"], p["containerPort"]) for p in kept] == [("metrics", 8080)], group


# --------------------------------------------------------------------------- promtool


def test_promtool_checks_the_rules() -> None:
    assert Path(PROMTOOL).is_file(), "promtool is missing: run scripts/setup"
    done = subprocess.run(
        [PROMTOOL, "check", "rules", str(CLUSTER / "alert-rules.yaml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


SCRAPED = 'job="exec-agent", instance="10.0.0.7:8080", ray_io_cluster="c1"'
"""The labels cluster/prometheus.yaml gives every series of a pod."""
FROM_RAY = f'SessionName="session_1", Component="core_worker", NodeAddress="10.0.0.7", {SCRAPED}'
FROM_REPLICA = f'deployment="SandboxExecutor", replica="r1", application="exec-agent", {FROM_RAY}'


def test_promtool_fires_the_alerts_on_synthetic_series(
    rules: dict[str, Any], tmp_path: Path
) -> None:
    """The main alerts on series shaped as Ray exports them: they fire when the condition has
    held for their `for`, with the summary rendered, and stay quiet otherwise."""
    assert Path(PROMTOOL).is_file(), "promtool is missing: run scripts/setup"
    by_name = {rule["alert"]: rule for rule in alert_rules(rules)}

    def firing(name: str, summary: str, **labels: str) -> dict[str, Any]:
        return {
            "exp_labels": {
                "severity": by_name[name]["labels"]["severity"],
                "ray_io_cluster": "c1",
                **labels,
            },
            "exp_annotations": {
                "summary": summary,
                "description": by_name[name]["annotations"]["description"],
            },
        }

    def series(name: str, labels: str, values: str, origin: str = FROM_REPLICA) -> dict[str, str]:
        """A series as scraped: ``labels`` and those of its ``origin``."""
        matchers = ", ".join(part for part in (labels, origin) if part)
        return {"series": f"{name}{{{matchers}}}", "values": values}

    executions = f"{P}exec_agent_executions_total"
    tests = [
        {  # 2% internal_error: fires; the rest of the service quiet
            "interval": "1m",
            "input_series": [
                series(executions, 'status="ok", cached="false"', "0+98x40"),
                series(executions, 'status="internal_error", cached="false"', "0+2x40"),
                series(f"{P}exec_agent_sandbox_slots", 'state="busy"', "19x40"),
                series(f"{P}exec_agent_sandbox_slots", 'state="free"', "1x40"),
                series(f"{P}exec_agent_sandbox_start_failures_total", "", "0x20 1x20"),
                series("up", "", "1x10 0x30", SCRAPED),
            ],
            "alert_rule_test": [
                {
                    "eval_time": "30m",
                    "alertname": "ExecAgentInternalErrors",
                    "exp_alerts": [
                        firing(
                            "ExecAgentInternalErrors",
                            "More than 1% of executions end as internal_error (2%)",
                        )
                    ],
                },
                {
                    "eval_time": "30m",
                    "alertname": "ExecAgentSaturated",
                    "exp_alerts": [
                        firing(
                            "ExecAgentSaturated",
                            "More than 90% of sandbox slots busy for 10 minutes (95%)",
                        )
                    ],
                },
                {
                    "eval_time": "25m",
                    "alertname": "ExecAgentSandboxStartFailures",
                    "exp_alerts": [
                        firing(
                            "ExecAgentSandboxStartFailures",
                            "Sandboxes failed to start (1 in 10 minutes)",
                        )
                    ],
                },
                {"eval_time": "39m", "alertname": "ExecAgentSandboxStartFailures"},
                {
                    "eval_time": "30m",
                    "alertname": "ExecAgentTargetDown",
                    "exp_alerts": [
                        firing(
                            "ExecAgentTargetDown",
                            "Ray metrics endpoint 10.0.0.7:8080 unreachable for 5 minutes",
                            job="exec-agent",
                            instance="10.0.0.7:8080",
                        )
                    ],
                },
                {"eval_time": "30m", "alertname": "ExecAgentQueueDepthHigh"},
            ],
        },
        {  # 0.5% internal_error, 80% busy: quiet
            "interval": "1m",
            "input_series": [
                series(executions, 'status="ok", cached="false"', "0+199x40"),
                series(executions, 'status="internal_error", cached="false"', "0+1x40"),
                series(f"{P}exec_agent_sandbox_slots", 'state="busy"', "8x40"),
                series(f"{P}exec_agent_sandbox_slots", 'state="free"', "2x40"),
                series(
                    "ray_serve_deployment_replica_healthy",
                    'application="exec-agent", deployment="SandboxExecutor"',
                    "1x10 0x30",
                    FROM_RAY,  # Serve's controller, not a replica
                ),
                series(
                    "ray_serve_deployment_replica_healthy",
                    'application="exec-agent", deployment="ApiIngress"',
                    "1x40",
                    FROM_RAY,
                ),
            ],
            "alert_rule_test": [
                {"eval_time": "30m", "alertname": "ExecAgentInternalErrors"},
                {"eval_time": "30m", "alertname": "ExecAgentSaturated"},
                {
                    "eval_time": "30m",
                    "alertname": "ExecAgentNoHealthyReplica",
                    "exp_alerts": [
                        firing(
                            "ExecAgentNoHealthyReplica",
                            "Serve deployment SandboxExecutor has no healthy replica",
                            application="exec-agent",
                            deployment="SandboxExecutor",
                        )
                    ],
                },
            ],
        },
        {  # a queue growing by one a minute: high at 51, growing once above 10 for 15m
            "interval": "1m",
            "input_series": [series(f"{P}exec_agent_queue_depth", "", "0+1x60")],
            "alert_rule_test": [
                {
                    "eval_time": "40m",
                    "alertname": "ExecAgentQueueGrowing",
                    "exp_alerts": [
                        firing(
                            "ExecAgentQueueGrowing",
                            "The execution queue has grown for 15 minutes (40 waiting)",
                        )
                    ],
                },
                {"eval_time": "20m", "alertname": "ExecAgentQueueGrowing"},
                {"eval_time": "50m", "alertname": "ExecAgentQueueDepthHigh"},
                {
                    "eval_time": "58m",
                    "alertname": "ExecAgentQueueDepthHigh",
                    "exp_alerts": [
                        firing(
                            "ExecAgentQueueDepthHigh",
                            "58 executions waiting for a sandbox slot",
                        )
                    ],
                },
            ],
        },
    ]
    spec = tmp_path / "alert-tests.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "rule_files": [str(CLUSTER / "alert-rules.yaml")],
                "evaluation_interval": "1m",
                "tests": tests,
            }
        )
    )
    done = subprocess.run(
        [PROMTOOL, "test", "rules", str(spec)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
