"""Builders of observed cluster state for decision tests: nodes in zones, running engine pods."""

from __future__ import annotations

from typing import Any

from engram_operator import builders, decisions
from engram_operator.observe import EngineStatus, NodeInfo, Observed, PodInfo
from engram_operator.spec import ClusterSpec

ZONES = ["zone-a", "zone-b", "zone-c"]


def spec(**overrides: Any) -> ClusterSpec:
    """A MemoryCluster as the API server stores it (defaults applied)."""
    body: dict[str, Any] = {
        "metadata": {"name": "demo", "namespace": "db", "uid": "uid-1", "generation": 1},
        "spec": overrides,
    }
    return ClusterSpec.from_body(body)


def nodes(zones: list[str] = ZONES, per_zone: int = 1, down: tuple[str, ...] = ()) -> list[NodeInfo]:
    """Kubernetes nodes; those in ``down`` zones are NotReady (the zone is lost)."""
    return [
        NodeInfo(name=f"{z}-{i}", zone=z, ready=z not in down, schedulable=True)
        for z in zones
        for i in range(per_zone)
    ]


def children_of(plan: decisions.Plan) -> frozenset[tuple[str, str]]:
    return frozenset((o["kind"], o["metadata"]["name"]) for o in plan.create if o["kind"] != "Pod")


def pods_from(plan: decisions.Plan, cluster: ClusterSpec, ready: bool = True) -> list[PodInfo]:
    """The pods a plan creates, as they look once running."""
    out = []
    for obj in plan.create:
        if obj["kind"] != "Pod":
            continue
        meta = obj["metadata"]
        out.append(
            PodInfo(
                name=meta["name"],
                shard=int(meta["labels"]["engram.io/shard"]),
                index=int(meta["labels"]["engram.io/node-index"]),
                zone=meta["labels"]["engram.io/zone"],
                phase="Running",
                ready=ready,
                spec_hash=builders.pod_spec_hash(cluster),
                role_label="primary" if meta["labels"]["engram.io/node-index"] == "0" else "replica",
                ip="10.0.0.1",
            )
        )
    return out


def statuses(pods: list[PodInfo]) -> dict[str, EngineStatus]:
    """Node answers matching the role labels: node 0 of each shard won leadership."""
    return {
        p.name: EngineStatus(role=p.role_label, applied_seq=100, committed_seq=100)
        for p in pods
        if not p.deleting
    }


def running(cluster: ClusterSpec, zones: list[str] = ZONES) -> Observed:
    """A cluster the operator created earlier, fully up: journal ready, every pod ready."""
    first = decisions.decide(cluster, Observed(nodes=nodes(zones), pods=[]))
    pods = pods_from(first, cluster)
    return Observed(
        nodes=nodes(zones),
        pods=pods,
        children=children_of(first),
        journal_ready=cluster.journal.replicas,
        statuses=statuses(pods),
    )
