"""The operator spreads primaries over zones again with the engine's own decision
(engram.orchestration.rebalance): one planned switchover, only in a calm cluster."""

from __future__ import annotations

import dataclasses

from cluster_state import running, spec

from engram_operator.decisions import decide
from engram_operator.observe import EngineStatus, Observed


def _bunched(seen: Observed, zone: str = "zone-a") -> Observed:
    """Every shard's node in ``zone`` became its primary (failovers), labels already updated."""
    pods, statuses = [], {}
    for pod in seen.pods:
        role = "primary" if pod.zone == zone else "replica"
        pods.append(dataclasses.replace(pod, role_label=role))
        statuses[pod.name] = EngineStatus(role=role, applied_seq=100, committed_seq=100)
    return dataclasses.replace(seen, pods=pods, statuses=statuses)


def test_a_calm_cluster_with_primaries_bunched_in_one_zone_hands_one_shard_over() -> None:
    cluster = spec(shards=3, replicasPerShard=2)
    seen = _bunched(running(cluster))
    plan = decide(cluster, seen)
    assert len(plan.switchovers) == 1 and not plan.create and not plan.delete_pods
    move = plan.switchovers[0]
    source = next(p for p in seen.pods if p.name == move.pod)
    target = next(p for p in seen.pods if p.name == move.target)
    assert source.zone == "zone-a" and target.zone != "zone-a" and target.shard == source.shard
    event = next(e for e in plan.events if e.reason == "RebalancingPrimaries")
    assert "zone zone-a holds 3 primaries" in event.message and move.target in event.message


def test_even_primaries_and_a_restless_cluster_are_left_alone() -> None:
    cluster = spec(shards=3, replicasPerShard=2)
    assert decide(cluster, running(cluster)).switchovers == []
    seen = _bunched(running(cluster))
    # A role label not yet matching its node: roles just changed, so wait a reconcile.
    stale = next(p for p in seen.pods if p.zone == "zone-a")
    restless = dataclasses.replace(
        seen, pods=[dataclasses.replace(p, role_label="replica") if p is stale else p for p in seen.pods]
    )
    plan = decide(cluster, restless)
    assert plan.role_labels == {stale.name: "primary"} and plan.switchovers == []
    # A pod not ready: nothing moves until every node is back.
    last = dataclasses.replace(seen.pods[-1], ready=False)
    unready = dataclasses.replace(seen, pods=[last, *seen.pods[:-1]])
    assert decide(cluster, unready).switchovers == []
    # A halted node anywhere in the cluster: the same.
    halted = dict(seen.statuses)
    name = seen.pods[1].name
    halted[name] = dataclasses.replace(halted[name], halted="checksum mismatch at 42")
    assert decide(cluster, dataclasses.replace(seen, statuses=halted)).switchovers == []
