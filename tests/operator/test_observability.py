"""Monitoring, offline: the chart's PodMonitors, alerts and dashboard against what Engram really exports.

Every metric a dashboard panel or an alert reads must be registered by the engine or the operator, and
every label it names must be one the scrape gives the series, so that renaming either breaks here and
not on somebody's pager.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from functools import cache
from typing import Any

import helm_python as helm
import promql_parser
import pytest
import yaml
from cluster_state import CLUSTER_ID, spec
from k8s_offline import CHART_DIR, ROOT, validate_manifest
from prometheus_client import REGISTRY
from prometheus_client.metrics import MetricWrapperBase

import engram.metrics as engine_metrics
import engram_operator.metrics as operator_metrics
from engram_operator import builders, labels
from engram_operator.builders.journal import plan_journal

ALL_ON: dict[str, Any] = {
    "monitoring": {
        "labels": {"release": "kube-prometheus-stack"},
        "podMonitor": {"enabled": True},
        "prometheusRule": {"enabled": True},
        "dashboards": {"enabled": True},
    }
}
DASHBOARD_FILE = CHART_DIR / "dashboards" / "engram.json"
OBSERVABILITY_DOC = ROOT / "docs" / "observability.md"
MONITORING_KINDS = ("PodMonitor", "PrometheusRule")
# Labels the Prometheus Operator gives every PodMonitor target (besides its podTargetLabels).
TARGET_LABELS = {"namespace", "pod", "container", "endpoint", "job", "instance"}
# Series Prometheus records itself for every target it scrapes.
PROMETHEUS_SERIES = {"up"}
# The Prometheus Operator's duration format (monitoring.coreos.com CRDs).
DURATION = re.compile(
    r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
)
# Grafana's own variables, replaced as Grafana would before a query reaches Prometheus.
GRAFANA_RANGES = {"$__rate_interval": "2m", "$__interval": "30s", "$__range": "6h"}
REQUIRED_ALERTS = {
    "EngramShardWithoutPrimary",
    "EngramReplicationLagHigh",
    "EngramJournalQuorumLost",
    "EngramNodeJournalUnreachable",
    "EngramSnapshotStale",
    "EngramNodeHalted",
    "EngramFrequentFailovers",
    "EngramRegionLagHigh",
    "EngramRegionApplierFailing",
}


def render(values: dict[str, Any], namespace: str = "engram-system") -> list[dict[str, Any]]:
    with helm.Chart.load(str(CHART_DIR)) as chart:
        files = chart.render(values, name="engram", namespace=namespace, is_install=True)
    docs: list[dict[str, Any]] = []
    for name, text in sorted(files.items()):
        if name.endswith(".yaml"):
            docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def pod_monitors(docs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The engine pods' PodMonitor and the operator's."""
    monitors = {d["metadata"]["name"]: d for d in of_kind(docs, "PodMonitor")}
    assert set(monitors) == {"engram-engram-operator-engine", "engram-engram-operator"}
    return monitors["engram-engram-operator-engine"], monitors["engram-engram-operator"]


def alert_rules(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    [rule] = of_kind(docs, "PrometheusRule")
    return [r for group in rule["spec"]["groups"] for r in group["rules"]]


def alert_groups(values: dict[str, Any]) -> list[dict[str, Any]]:
    """The rule groups the chart renders, as a Prometheus rule file holds them (for promtool)."""
    [rule] = of_kind(render(values), "PrometheusRule")
    return rule["spec"]["groups"]


@cache
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD_FILE.read_text())


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a collapsed row holds its panels


def dashboard_queries() -> list[str]:
    """Every PromQL expression the dashboard sends, its variables' selectors included."""
    queries = [t["expr"] for p in panels(dashboard()) for t in p.get("targets", [])]
    for var in dashboard()["templating"]["list"]:
        if var["type"] == "query":
            match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", var["query"]["query"])
            assert match, f"variable {var['name']}: unexpected query {var['query']['query']}"
            queries.append(match[1])
    return queries


def parse(expr: str) -> promql_parser.Expr:
    for var, value in GRAFANA_RANGES.items():
        expr = expr.replace(var, value)
    return promql_parser.parse(expr)


def selectors(expr: str) -> list[promql_parser.VectorSelector]:
    found: list[promql_parser.VectorSelector] = []

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            found.append(node)

    promql_parser.walk(parse(expr), visit)
    return found


def labels_named(expr: str) -> set[str]:
    """Every label an expression selects on, groups by or matches on."""
    names: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            names.update(m.name for m in node.matchers.matchers)
        elif isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            names.update(node.modifier.labels)
        elif isinstance(node, promql_parser.BinaryExpr) and node.modifier is not None:
            if node.modifier.matching is not None:
                names.update(node.modifier.matching.labels)
            names.update(node.modifier.group_labels or [])

    promql_parser.walk(parse(expr), visit)
    return names


def _metrics(module: Any) -> list[MetricWrapperBase]:
    return [m for m in vars(module).values() if isinstance(m, MetricWrapperBase)]


@cache
def exported_names() -> frozenset[str]:
    """The series names the engine and the operator expose (histograms as _bucket, _sum, _count)."""
    mine = {m._name for module in (engine_metrics, operator_metrics) for m in _metrics(module)}
    names: set[str] = set()
    for family in REGISTRY.collect():
        if family.name not in mine:
            continue
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names.update(f"{family.name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
        else:
            names.add(family.name)
    return frozenset(names)


def series_labels(docs: list[dict[str, Any]]) -> set[str]:
    """Labels a scraped series can carry: the metrics' own, le, and what the PodMonitors add."""
    engine, _ = pod_monitors(docs)
    own = {name for module in (engine_metrics, operator_metrics) for m in _metrics(module)
           for name in m._labelnames}  # prometheus_client keeps a metric's label names only there
    # The Prometheus Operator turns a pod label into a label name the way Prometheus sanitises one.
    copied = {re.sub(r"[^a-zA-Z0-9_]", "_", name) for name in engine["spec"]["podTargetLabels"]}
    return own | copied | TARGET_LABELS | {"le"}


def alert_expressions() -> list[str]:
    return [rule["expr"] for rule in alert_rules(render(ALL_ON))]


def github_anchor(heading: str) -> str:
    """The fragment GitHub gives a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


# -- the chart -----------------------------------------------------------------------------


def test_monitoring_is_off_by_default() -> None:
    docs = render({})
    assert not [d for d in docs if d["kind"] in MONITORING_KINDS]
    assert not [d for d in of_kind(docs, "ConfigMap") if "engram.json" in d.get("data", {})]


def test_chart_with_monitoring_on_renders_valid_objects_and_passes_lint() -> None:
    docs = render(ALL_ON)
    assert {d["kind"] for d in docs} >= {"PodMonitor", "PrometheusRule", "ConfigMap", "Deployment"}
    for doc in docs:
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # no schema for the Prometheus Operator's kinds here: checked field by field below
        validate_manifest(doc)
    result = helm.lint(str(CHART_DIR), ALL_ON)
    assert result["errors"] == []
    assert [m for m in result["messages"] if m["severity"] > 1] == []


def test_monitoring_objects_carry_the_labels_prometheus_selects_on() -> None:
    docs = render(ALL_ON)
    objects = [d for d in docs if d["kind"] in MONITORING_KINDS]
    objects += [d for d in of_kind(docs, "ConfigMap") if "engram.json" in d["data"]]
    assert len(objects) == 4
    for obj in objects:
        assert obj["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        assert obj["metadata"]["namespace"] == "engram-system"


def test_values_schema_refuses_bad_monitoring_values() -> None:
    with helm.Chart.load(str(CHART_DIR)) as chart:
        chart.validate_schema(ALL_ON)
        for bad in (
            {"podMonitor": {"enabled": True, "interval": "30 seconds"}},
            {"podMonitor": {"enable": True}},
            {"prometheusRule": {"snapshotStaleFactor": 1}},
            {"prometheusRule": {"replicationLagEntries": 0}},
            {"prometheusRule": {"regionLagEntries": 0}},
            {"prometheusRule": {"regionApplierStops": 1.5}},
            {"dashboards": {"labels": {"grafana_dashboard": 1}}},
        ):
            with pytest.raises(helm.HelmError):
                chart.validate_schema({"monitoring": bad})


# -- PodMonitors ---------------------------------------------------------------------------


def _engine_pod() -> dict[str, Any]:
    return builders.build_engine_pod(
        spec(shards=2, replicasPerShard=1), name="demo-1-0", shard=1, index=0, zone="zone-b",
        cluster_id=CLUSTER_ID,
    )


def _selected(monitor: dict[str, Any], pod_labels: dict[str, str]) -> bool:
    wanted = monitor["spec"]["selector"]["matchLabels"]
    return all(pod_labels.get(k) == v for k, v in wanted.items())


def _port_names(pod_spec: dict[str, Any]) -> set[str]:
    return {p["name"] for c in pod_spec["containers"] for p in c.get("ports", [])}


def _has_the_fields_the_prometheus_operator_requires(monitor: dict[str, Any]) -> None:
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["name"] and monitor["metadata"]["namespace"]
    assert monitor["spec"]["selector"]["matchLabels"]  # required; empty would select every pod
    selector = monitor["spec"]["namespaceSelector"]
    assert selector == {"any": True} or (set(selector) == {"matchNames"} and selector["matchNames"])
    assert monitor["spec"]["podMetricsEndpoints"]
    for endpoint in monitor["spec"]["podMetricsEndpoints"]:
        assert set(endpoint) <= {"port", "path", "interval", "honorLabels", "scheme", "tlsConfig"}
        assert isinstance(endpoint["port"], str) and endpoint["path"] == "/metrics"
        assert DURATION.match(endpoint["interval"]), endpoint["interval"]


def test_the_engine_pod_monitor_scrapes_engine_pods_on_their_metrics_port() -> None:
    engine, _ = pod_monitors(render(ALL_ON))
    _has_the_fields_the_prometheus_operator_requires(engine)
    pod = _engine_pod()
    assert _selected(engine, pod["metadata"]["labels"])
    by_port = {e["port"]: e for e in engine["spec"]["podMetricsEndpoints"]}
    # One endpoint per scheme: a plain cluster's pods are scraped over HTTP, a TLS cluster's over HTTPS.
    [plain] = [by_port[p] for p in _port_names(pod["spec"]) if p in by_port]
    assert plain.get("scheme", "http") == "http"
    tls_pod = builders.build_engine_pod(
        spec(tls={"secretName": "demo-certs"}), name="demo-0-0", shard=0, index=0, zone="zone-a",
        cluster_id=CLUSTER_ID,
    )
    [secure] = [by_port[p] for p in _port_names(tls_pod["spec"]) if p in by_port]
    assert secure["scheme"] == "https"
    # Unverified unless given a CA: Prometheus scrapes pod IPs, which no certificate names.
    assert secure["tlsConfig"] == {"insecureSkipVerify": True}
    # Engine pods live in the MemoryClusters' namespaces, not the operator's.
    assert engine["spec"]["namespaceSelector"] == {"any": True}


def test_the_engine_pod_monitor_leaves_journal_pods_alone() -> None:
    engine, _ = pod_monitors(render(ALL_ON))
    cluster = spec()
    [placement] = plan_journal(["zone-a", "zone-b", "zone-c"], 1, "Preferred")
    journal = builders.build_journal_statefulset(cluster, placement)
    assert not _selected(engine, journal["spec"]["template"]["metadata"]["labels"])


def test_engine_series_carry_cluster_shard_and_zone_but_not_the_moving_role() -> None:
    engine, _ = pod_monitors(render(ALL_ON))
    pod_labels = _engine_pod()["metadata"]["labels"]
    copied = engine["spec"]["podTargetLabels"]
    assert set(copied) == {labels.CLUSTER, labels.SHARD, labels.ZONE}
    assert all(name in pod_labels for name in copied)
    # The role label changes at every failover; a counter whose series changes identity then would
    # lose the increments that counted the failover (engram_role carries the role instead).
    assert labels.ROLE not in copied


def test_the_engine_pod_monitor_follows_the_watched_namespace() -> None:
    one = render({**ALL_ON, "watchNamespace": "databases"})
    engine, _ = pod_monitors(one)
    assert engine["spec"]["namespaceSelector"] == {"matchNames": ["databases"]}
    listed = render({"monitoring": {"podMonitor": {"enabled": True, "namespaces": ["a", "b"]}}})
    engine, _ = pod_monitors(listed)
    assert engine["spec"]["namespaceSelector"] == {"matchNames": ["a", "b"]}


def test_the_operator_pod_monitor_scrapes_the_operator_even_without_metrics_enabled() -> None:
    docs = render({"monitoring": {"podMonitor": {"enabled": True}}, "metrics": {"enabled": False}})
    _, operator = pod_monitors(docs)
    _has_the_fields_the_prometheus_operator_requires(operator)
    [deploy] = of_kind(docs, "Deployment")
    template = deploy["spec"]["template"]
    assert _selected(operator, template["metadata"]["labels"])
    assert {e["port"] for e in operator["spec"]["podMetricsEndpoints"]} <= _port_names(template["spec"])
    [container] = template["spec"]["containers"]
    assert {e["name"] for e in container["env"]} >= {"ENGRAM_METRICS_PORT"}
    assert operator["spec"]["namespaceSelector"] == {"matchNames": ["engram-system"]}
    # The operator's series name the MemoryCluster's namespace; the operator pod's must not replace it.
    assert all(e["honorLabels"] is True for e in operator["spec"]["podMetricsEndpoints"])


# -- alerts --------------------------------------------------------------------------------


def test_alert_rules_have_what_prometheus_needs_and_name_cluster_and_shard() -> None:
    docs = render(ALL_ON)
    [rule] = of_kind(docs, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    groups = rule["spec"]["groups"]
    assert groups and len({g["name"] for g in groups}) == len(groups) and all(g["name"] for g in groups)
    rules = alert_rules(docs)
    assert {r["alert"] for r in rules} >= REQUIRED_ALERTS
    assert len({r["alert"] for r in rules}) == len(rules)
    for r in rules:
        assert set(r) == {"alert", "expr", "for", "labels", "annotations"}, r["alert"]
        assert DURATION.match(r["for"]), r["alert"]
        assert r["labels"]["severity"] in ("critical", "warning"), r["alert"]
        notes = r["annotations"]
        assert set(notes) == {"summary", "description", "runbook_url"}, r["alert"]
        for text in (notes["summary"], notes["description"]):
            assert re.search(r"\$labels\.(engram_io_)?cluster\b", text), (r["alert"], text)
            assert re.search(r"\$labels\.(engram_io_)?shard\b", text), (r["alert"], text)


def test_every_alert_links_its_own_runbook_section() -> None:
    headings = {github_anchor(line.lstrip("#")) for line in OBSERVABILITY_DOC.read_text().splitlines()
                if line.startswith("#")}
    for r in alert_rules(render(ALL_ON)):
        base, _, anchor = r["annotations"]["runbook_url"].partition("#")
        assert base.endswith("/docs/observability.md")
        assert anchor == r["alert"].lower() and anchor in headings, r["alert"]


def test_alert_thresholds_come_from_the_values() -> None:
    values = {"monitoring": {"prometheusRule": {
        "enabled": True, "alertLabels": {"team": "databases"},
        "replicationLagEntries": 2_500_000, "snapshotStaleFactor": 2.5, "electionsPerHour": 7,
        "regionLagEntries": 750_000, "regionApplierStops": 4,
    }}}
    rules = {r["alert"]: r for r in alert_rules(render(values))}
    assert rules["EngramReplicationLagHigh"]["expr"].rstrip().endswith("> 2500000")
    assert "2.5 * max by" in rules["EngramSnapshotStale"]["expr"]
    assert rules["EngramFrequentFailovers"]["expr"].rstrip().endswith("> 7")
    assert "2500000 journal entries" in rules["EngramReplicationLagHigh"]["annotations"]["description"]
    assert rules["EngramRegionLagHigh"]["expr"].rstrip().endswith("> 750000")
    assert "750000 journal entries" in rules["EngramRegionLagHigh"]["annotations"]["description"]
    assert rules["EngramRegionApplierFailing"]["expr"].rstrip().endswith(">= 4")
    assert "at least 4 times" in rules["EngramRegionApplierFailing"]["annotations"]["description"]
    assert all(r["labels"]["team"] == "databases" for r in rules.values())


def test_the_annotations_name_only_labels_the_series_have() -> None:
    docs = render(ALL_ON)
    known = series_labels(docs)
    for r in alert_rules(docs):
        used = set(re.findall(r"\$labels\.(\w+)", " ".join(r["annotations"].values())))
        assert used <= known, (r["alert"], used - known)


# -- the dashboard -------------------------------------------------------------------------


def test_the_dashboard_ships_in_a_configmap_grafanas_sidecar_picks_up() -> None:
    docs = render({**ALL_ON, "monitoring": {**ALL_ON["monitoring"], "dashboards": {
        "enabled": True, "namespace": "monitoring", "annotations": {"grafana_folder": "Databases"}}}})
    [cm] = [d for d in of_kind(docs, "ConfigMap") if "engram.json" in d["data"]]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Databases"}
    assert json.loads(cm["data"]["engram.json"]) == dashboard()


def test_the_dashboard_has_a_panel_for_each_thing_an_operator_watches() -> None:
    texts = [" ".join(t["expr"] for t in p.get("targets", [])) for p in panels(dashboard())]

    def panel_with(*needles: str) -> bool:
        return any(all(n in text for n in needles) for text in texts)

    assert panel_with(
        "histogram_quantile(0.5,", "histogram_quantile(0.99,", "engram_commit_latency_seconds_bucket"
    )
    assert panel_with("rate(engram_commit_latency_seconds_count")  # the committed sequence's rate
    assert panel_with("engram_replication_lag_entries{")  # per replica: not aggregated away
    assert panel_with("engram_failovers_total")
    assert panel_with("engram_snapshot_age_seconds")
    assert panel_with("engram_journal_entries") and panel_with("engram_journal_bytes")
    assert panel_with("sum by (engram_io_shard) (engram_role")  # primaries per shard
    assert panel_with("engram_apply_halted")
    # multi-region: per shard and source region, on primaries only (an old primary keeps its gauge)
    assert panel_with("engram_region_pending_entries{", "region)", "engram_role{")
    assert panel_with("rate(engram_region_applier_stops_total")
    assert panel_with("rate(engram_region_source_restarts_total")
    names = {v["name"] for v in dashboard()["templating"]["list"]}
    assert {"datasource", "namespace", "cluster"} <= names


def test_every_dashboard_query_is_scoped_to_the_chosen_namespace_and_cluster() -> None:
    for expr in [t["expr"] for p in panels(dashboard()) for t in p.get("targets", [])]:
        for sel in selectors(expr):
            matchers = {(m.name, m.value) for m in sel.matchers.matchers}
            assert ("namespace", "$namespace") in matchers, (sel.name, expr)
            assert {("engram_io_cluster", "$cluster"), ("cluster", "$cluster")} & matchers, (sel.name, expr)


def test_dashboard_panels_use_the_datasource_variable_and_fit_the_grid() -> None:
    seen: set[int] = set()
    cells: set[tuple[int, int]] = set()
    for panel in panels(dashboard()):
        assert panel["id"] not in seen
        seen.add(panel["id"])
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24
        columns, rows = range(grid["x"], grid["x"] + grid["w"]), range(grid["y"], grid["y"] + grid["h"])
        area = {(x, y) for x in columns for y in rows}
        assert not area & cells, f"panel {panel['title']} overlaps another"
        cells |= area
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert panel["targets"] and all(t["datasource"] == panel["datasource"] for t in panel["targets"])


# -- every name used exists ------------------------------------------------------------------


def test_the_registries_export_the_gauges_the_dashboard_needs() -> None:
    assert {"engram_snapshot_age_seconds", "engram_journal_entries", "engram_journal_bytes",
            "engram_journal_reachable", "engram_commit_latency_seconds_bucket",
            "engram_failovers_total", "engram_operator_snapshot_failures", "engram_region_pending_entries",
            "engram_region_applier_stops_total", "engram_region_source_restarts_total"} <= exported_names()


@pytest.mark.parametrize("source", ["dashboard", "alerts"])
def test_every_metric_queried_is_exported_by_the_engine_or_the_operator(source: str) -> None:
    expressions = dashboard_queries() if source == "dashboard" else alert_expressions()
    assert expressions
    used = {sel.name for expr in expressions for sel in selectors(expr)}
    assert used - PROMETHEUS_SERIES, "no Engram metric queried at all"
    assert used - PROMETHEUS_SERIES <= exported_names(), used - PROMETHEUS_SERIES - exported_names()


@pytest.mark.parametrize("source", ["dashboard", "alerts"])
def test_every_label_queried_is_one_the_scraped_series_carry(source: str) -> None:
    known = series_labels(render(ALL_ON))
    expressions = dashboard_queries() if source == "dashboard" else alert_expressions()
    for expr in expressions:
        assert labels_named(expr) <= known, (expr, labels_named(expr) - known)


def test_a_renamed_metric_or_label_would_be_caught() -> None:
    """The checks above see through PromQL: a name that is not exported, or a label no series has, shows."""
    expr = 'histogram_quantile(0.99, sum by (le, shard_id) (rate(engram_commit_latency_bucket[5m])))'
    assert {s.name for s in selectors(expr)} == {"engram_commit_latency_bucket"}
    assert "engram_commit_latency_bucket" not in exported_names()
    assert "shard_id" not in series_labels(render(ALL_ON)) and "shard_id" in labels_named(expr)


def test_the_engine_pod_monitor_verifies_tls_metrics_with_a_ca_and_a_name_when_given() -> None:
    values = {**ALL_ON, "monitoring": {**ALL_ON["monitoring"], "podMonitor": {
        "enabled": True, "tls": {"caSecret": "engram-ca", "serverName": "orders.shop.svc"}}}}
    engine, _ = pod_monitors(render(values))
    [secure] = [e for e in engine["spec"]["podMetricsEndpoints"] if e.get("scheme") == "https"]
    assert secure["tlsConfig"] == {
        "ca": {"secret": {"name": "engram-ca", "key": "ca.crt"}}, "serverName": "orders.shop.svc"}
