"""Operator metrics (Prometheus), served when ENGRAM_METRICS_PORT is set."""

from __future__ import annotations

import os

from prometheus_client import Counter, Gauge, start_http_server

RECONCILES = Counter(
    "engram_operator_reconciles_total", "Reconciles run", ["namespace", "cluster", "outcome"]
)
POD_ACTIONS = Counter("engram_operator_pod_actions_total", "Engine pods created or deleted", ["action"])
POD_REPLACEMENTS = Counter(
    "engram_operator_pod_replacements_total",
    "Engine pods deleted to be replaced, by reason: finished, lost, halted, stuck",
    ["namespace", "cluster", "reason"],
)
SNAPSHOT_REQUESTS = Counter(
    "engram_operator_snapshot_requests_total",
    "Shards asked for an on-demand snapshot (spec.snapshots.request), by outcome",
    ["namespace", "cluster", "outcome"],
)
READY_NODES = Gauge("engram_operator_ready_nodes", "Ready engine pods", ["namespace", "cluster"])
SNAPSHOT_FAILURES = Gauge(
    "engram_operator_snapshot_failures",
    "Failed snapshot attempts in a row on the shard's most failing node (ENGRAM.STATUS), 0 while none",
    ["namespace", "cluster", "shard"],
)


def serve_if_enabled() -> None:
    port = os.environ.get("ENGRAM_METRICS_PORT")
    if port:
        start_http_server(int(port))
