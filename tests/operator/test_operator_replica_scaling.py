"""Replica scaling on pods (decisions/replicas.py): spec.replicasPerShard changes which slots a shard has,
as the shared decision picks them; a primary is never removed, and a shard's indices can have gaps."""

from __future__ import annotations

import dataclasses

from cluster_state import running, spec, statuses
from k8s_offline import validate_manifest

from engram_operator.decisions import decide
from engram_operator.observe import EngineStatus, NodeInfo, Observed, PodInfo


def created(plan) -> list[tuple[int, int, str]]:
    """(shard, index, zone) of every pod the plan creates."""
    placed = [o["metadata"]["labels"] for o in plan.create if o["kind"] == "Pod"]
    return sorted((int(lab["engram.io/shard"]), int(lab["engram.io/node-index"]), lab["engram.io/zone"])
                  for lab in placed)


def with_pods(
    seen: Observed, pods: list[PodInfo], answers: dict[str, EngineStatus] | None = None
) -> Observed:
    return dataclasses.replace(seen, pods=pods, statuses={**statuses(pods), **(answers or {})})


def test_scaling_down_never_removes_the_primary_and_takes_the_highest_replica() -> None:
    seen = running(spec(shards=1, replicasPerShard=2))
    # Node 2 won leadership at some point: it stays, and nothing hands over.
    surplus = next(p for p in seen.pods if p.index == 2)
    answers = {surplus.name: EngineStatus(role="primary"), seen.pods[0].name: EngineStatus(role="replica")}
    plan = decide(spec(shards=1, replicasPerShard=1), with_pods(seen, seen.pods, answers))
    assert plan.delete_pods == ["demo-0-1"]
    assert plan.switchovers == [] and created(plan) == []
    assert [e.reason for e in plan.events] == ["ScalingDown"]


def test_scaling_down_removes_a_replica_that_does_not_answer_first() -> None:
    seen = running(spec(shards=1, replicasPerShard=2))
    silent = {p.name: s for p, s in zip(seen.pods, statuses(seen.pods).values(), strict=True) if p.index != 1}
    plan = decide(spec(shards=1, replicasPerShard=1), dataclasses.replace(seen, statuses=silent))
    assert plan.delete_pods == ["demo-0-1"]


def test_scaling_down_waits_while_the_shard_has_no_answering_primary() -> None:
    seen = running(spec(shards=1, replicasPerShard=2))
    answers = {p.name: EngineStatus(role="replica") for p in seen.pods}
    plan = decide(spec(shards=1, replicasPerShard=1), dataclasses.replace(seen, statuses=answers))
    assert plan.delete_pods == []
    assert any("no node answering as its primary" in w for w in plan.waiting)


def test_a_shard_with_a_gap_keeps_it_and_scaling_up_fills_it_in_the_zone_the_shard_lacks() -> None:
    seen = running(spec(shards=1, replicasPerShard=2))
    gap = [p for p in seen.pods if p.index != 1]
    lacking = next(p.zone for p in seen.pods if p.index == 1)
    # At one replica the shard has nodes 0 and 2: nothing to do.
    plan = decide(spec(shards=1, replicasPerShard=1), with_pods(seen, gap))
    assert not plan.changes
    plan = decide(spec(shards=1, replicasPerShard=2), with_pods(seen, gap))
    assert created(plan) == [(0, 1, lacking)] and plan.delete_pods == []
    # The pod of a refilled slot is as valid a Pod as any (the real Kubernetes schema).
    for obj in plan.create:
        validate_manifest(obj)


def test_a_lost_pod_at_an_index_beyond_the_planned_ones_is_replaced_in_its_slot() -> None:
    seen = running(spec(shards=1, replicasPerShard=2))
    # Nodes 0, 2 and 3 after a scale-down took node 1; node 3 has ended.
    three = dataclasses.replace(next(p for p in seen.pods if p.index == 1), name="demo-0-3", index=3,
                                phase="Failed")
    pods = [p for p in seen.pods if p.index != 1] + [three]
    plan = decide(spec(shards=1, replicasPerShard=2), with_pods(seen, pods))
    assert plan.delete_pods == ["demo-0-3"]
    assert created(plan) == [(0, 3, three.zone)]


def test_without_zone_labels_scaling_picks_by_index_and_leaves_pods_unpinned() -> None:
    unlabelled = [NodeInfo("n1", None, True, True)]
    seen = running(spec(shards=1, replicasPerShard=2))
    pods = [dataclasses.replace(p, zone="") for p in seen.pods]
    seen = dataclasses.replace(seen, nodes=unlabelled)
    plan = decide(spec(shards=1, replicasPerShard=1), with_pods(seen, pods))
    assert plan.delete_pods == ["demo-0-2"]
    grown = decide(spec(shards=1, replicasPerShard=2), with_pods(seen, [p for p in pods if p.index != 1]))
    assert created(grown) == [(0, 1, "")]
