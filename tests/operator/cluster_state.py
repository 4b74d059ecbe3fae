"""Builders of observed cluster state for decision tests: nodes in zones, the stages of a new cluster."""

from __future__ import annotations

from typing import Any

from engram_operator import builders, decisions, labels
from engram_operator.observe import EngineStatus, JobInfo, NodeInfo, Observed, PodInfo
from engram_operator.spec import ClusterSpec

ZONES = ["zone-a", "zone-b", "zone-c"]
CLUSTER_ID = "0123456789abcdef0123456789abcdef"
# The wall clock of every observation here; pods were created an hour before.
NOW = 1_750_000_000.0


def spec(**overrides: Any) -> ClusterSpec:
    """A MemoryCluster as the API server stores it (defaults applied)."""
    body: dict[str, Any] = {
        "metadata": {"name": "demo", "namespace": "db", "uid": "uid-1", "generation": 1},
        "spec": overrides,
    }
    return ClusterSpec.from_body(body)


def nodes(
    zones: list[str] = ZONES,
    per_zone: int = 1,
    down: tuple[str, ...] = (),
    blinking: tuple[str, ...] = (),
    cordoned: tuple[str, ...] = (),
) -> list[NodeInfo]:
    """Kubernetes nodes named ZONE-I. Those in ``down`` zones have been NotReady for ten minutes
    (the zone is lost), in ``blinking`` zones for ten seconds; ``cordoned`` zones are Ready but
    unschedulable."""

    def since(zone: str) -> float | None:
        return NOW - 600 if zone in down else NOW - 10 if zone in blinking else None

    return [
        NodeInfo(
            name=f"{z}-{i}",
            zone=z,
            ready=z not in down and z not in blinking,
            schedulable=z not in cordoned,
            not_ready_since=since(z),
        )
        for z in zones
        for i in range(per_zone)
    ]


def children_of(plan: decisions.Plan) -> frozenset[tuple[str, str]]:
    """What a plan creates besides pods, the Job and NetworkPolicies (which the observed state
    carries on their own)."""
    return frozenset(
        (o["kind"], o["metadata"]["name"])
        for o in plan.create
        if o["kind"] not in ("Pod", "Job", "NetworkPolicy")
    )


def policies_of(plan: decisions.Plan) -> dict[str, str]:
    """The NetworkPolicies a plan creates, as observed once they exist: name -> spec hash."""
    return {
        o["metadata"]["name"]: o["metadata"]["annotations"][labels.SPEC_HASH]
        for o in plan.create
        if o["kind"] == "NetworkPolicy"
    }


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
                cluster_id=CLUSTER_ID,
                node=f"{meta['labels']['engram.io/zone']}-0",
                created=NOW - 3600,
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


def provision_job(cluster: ClusterSpec, **state: Any) -> JobInfo:
    """The cluster's provisioning Job as observed; ``state`` sets succeeded, failed, error, ..."""
    return JobInfo(
        name=labels.provision_job_name(cluster.name),
        cluster_id=CLUSTER_ID,
        owner_uid=cluster.uid,
        **{"shards": cluster.shards, **state},
    )


def just_applied(cluster: ClusterSpec, node_infos: list[NodeInfo] | None = None) -> Observed:
    """A MemoryCluster just applied: nothing exists yet, its id is decided."""
    return Observed(
        nodes=nodes() if node_infos is None else node_infos, pods=[], cluster_id=CLUSTER_ID, now=NOW
    )


def journal_up(cluster: ClusterSpec, node_infos: list[NodeInfo] | None = None) -> Observed:
    """The children of the first reconcile exist and every journal server is ready; no Job yet."""
    seen = just_applied(cluster, node_infos)
    first = decisions.decide(cluster, seen)
    return Observed(
        nodes=seen.nodes,
        pods=[],
        children=children_of(first),
        network_policies=policies_of(first),
        journal_ready=cluster.journal.replicas,
        cluster_id=CLUSTER_ID,
        now=NOW,
    )


def provisioned(cluster: ClusterSpec, node_infos: list[NodeInfo] | None = None) -> Observed:
    """The provisioning Job succeeded: the moment engine pods may be created."""
    seen = journal_up(cluster, node_infos)
    return Observed(
        nodes=seen.nodes,
        pods=[],
        children=seen.children,
        network_policies=seen.network_policies,
        journal_ready=seen.journal_ready,
        cluster_id=CLUSTER_ID,
        provisioning=provision_job(cluster, succeeded=True),
        now=NOW,
    )


def running(cluster: ClusterSpec, zones: list[str] = ZONES) -> Observed:
    """A cluster the operator created earlier, fully up: journal ready, provisioned, every pod ready."""
    seen = provisioned(cluster, nodes(zones))
    pods = pods_from(decisions.decide(cluster, seen), cluster)
    return Observed(
        nodes=seen.nodes,
        pods=pods,
        children=seen.children,
        network_policies=seen.network_policies,
        journal_ready=seen.journal_ready,
        statuses=statuses(pods),
        cluster_id=CLUSTER_ID,
        provisioning=seen.provisioning,
        now=NOW,
    )
