"""A lost zone, a cordon and a NotReady blip look alike in the node list; the operator must not
treat them alike (issue 13: a cordon or a blip deleted pods, primaries included, at once)."""

from __future__ import annotations

import dataclasses

from cluster_state import NOW, nodes, running, spec

from engram_operator.availability import NODE_LOSS_GRACE, NodeInfo
from engram_operator.decisions import decide
from engram_operator.observe import EngineStatus, Observed, node_from_api, pod_from_api

CLUSTER = spec(shards=3, replicasPerShard=2, placement={"spreading": "Preferred"})


def created_pods(plan) -> list[dict]:
    return [o for o in plan.create if o["kind"] == "Pod"]


def in_zone(seen: Observed, zone: str) -> list[str]:
    return sorted(p.name for p in seen.pods if p.zone == zone)


def test_a_cordoned_zone_deletes_nothing_and_hands_its_primary_over_to_another_zone() -> None:
    seen = dataclasses.replace(running(CLUSTER), nodes=nodes(cordoned=("zone-b",)))
    primary = next(p for p in seen.pods if p.zone == "zone-b" and p.role_label == "primary")
    plan = decide(CLUSTER, seen)
    assert plan.delete_pods == [] and created_pods(plan) == []
    [switch] = plan.switchovers
    assert switch.pod == primary.name
    target = next(p for p in seen.pods if p.name == switch.target)
    assert target.shard == primary.shard and target.zone != "zone-b"
    assert [e.reason for e in plan.events] == ["NodeCordoned"]


def test_a_cordoned_primary_with_no_replica_elsewhere_stays_primary_and_nothing_is_deleted() -> None:
    cluster = spec(shards=1, replicasPerShard=1)
    seen = running(cluster)
    # Every node cordoned (a whole-cluster node upgrade): no target that would not move again.
    seen = dataclasses.replace(seen, nodes=nodes(cordoned=("zone-a", "zone-b", "zone-c")))
    plan = decide(cluster, seen)
    assert not plan.changes
    [event] = plan.events
    assert event.reason == "NodeCordoned" and event.standing


def test_a_not_ready_blip_deletes_nothing_and_says_what_it_waits_for() -> None:
    seen = dataclasses.replace(running(CLUSTER), nodes=nodes(blinking=("zone-b",)))
    plan = decide(CLUSTER, seen)
    assert not plan.changes
    assert any(w.startswith("zone zone-b has no Ready node") for w in plan.waiting)
    assert not any(e.type == "Warning" for e in plan.events)


def test_a_zone_not_ready_beyond_the_grace_is_lost_and_its_replicas_replaced_elsewhere() -> None:
    seen = dataclasses.replace(running(CLUSTER), nodes=nodes(down=("zone-b",)))
    plan = decide(CLUSTER, seen)
    replicas = [p.name for p in seen.pods if p.zone == "zone-b" and p.role_label == "replica"]
    assert sorted(plan.delete_pods) == sorted(replicas)
    assert all(p["metadata"]["labels"]["engram.io/zone"] != "zone-b" for p in created_pods(plan))
    assert {e.reason for e in plan.events} >= {"ZoneLost"}


def test_a_primary_still_answering_from_a_lost_zone_hands_over_before_it_is_replaced() -> None:
    """Its kubelet is gone, not the pod: deleting it would fail the shard over unplanned."""
    seen = dataclasses.replace(running(CLUSTER), nodes=nodes(down=("zone-b",)))
    primary = next(p for p in seen.pods if p.zone == "zone-b" and p.role_label == "primary")
    plan = decide(CLUSTER, seen)
    assert primary.name not in plan.delete_pods
    [switch] = plan.switchovers
    assert switch.pod == primary.name
    assert next(p for p in seen.pods if p.name == switch.target).zone != "zone-b"
    # Next reconcile: it reports replica now, and goes.
    statuses = {
        **seen.statuses,
        primary.name: EngineStatus(role="replica"),
        switch.target: EngineStatus("primary"),
    }
    after = decide(CLUSTER, dataclasses.replace(seen, statuses=statuses))
    assert primary.name in after.delete_pods and after.switchovers == []


def test_a_zone_whose_nodes_are_all_gone_is_lost_at_once() -> None:
    seen = dataclasses.replace(running(CLUSTER), nodes=nodes(zones=["zone-a", "zone-c"]))
    seen = dataclasses.replace(seen, statuses={n: s for n, s in seen.statuses.items() if n != "demo-1-0"})
    plan = decide(CLUSTER, seen)
    assert sorted(plan.delete_pods) == in_zone(seen, "zone-b")


def test_one_lost_node_in_a_healthy_zone_has_its_pods_replaced_in_that_zone() -> None:
    base = running(CLUSTER)
    dead = NodeInfo("zone-b-0", "zone-b", ready=False, schedulable=True, not_ready_since=NOW - 600)
    spare = NodeInfo("zone-b-1", "zone-b", ready=True, schedulable=True)
    others = [n for n in nodes() if n.zone != "zone-b"]
    seen = dataclasses.replace(base, nodes=[*others, dead, spare])
    seen = dataclasses.replace(seen, statuses={n: s for n, s in seen.statuses.items() if n != "demo-1-0"})
    plan = decide(CLUSTER, seen)
    assert sorted(plan.delete_pods) == in_zone(seen, "zone-b")
    assert {p["metadata"]["labels"]["engram.io/zone"] for p in created_pods(plan)} == {"zone-b"}
    assert {e.reason for e in plan.events if e.type == "Warning"} == {"NodeLost"}


def test_the_grace_is_measured_from_when_the_node_stopped_being_ready() -> None:
    node = NodeInfo("n", "zone-a", ready=False, schedulable=True, not_ready_since=NOW - NODE_LOSS_GRACE + 1)
    assert node.blinking(NOW) and not node.lost(NOW)
    assert node.lost(NOW + 1) and not node.blinking(NOW + 1)
    # A node that has not reported its Ready condition yet is registering, not lost.
    assert not NodeInfo("new", "zone-a", ready=False, schedulable=True).lost(NOW)


def test_readiness_times_come_from_the_api_objects_ready_conditions() -> None:
    node = node_from_api(
        {
            "metadata": {"name": "n1", "labels": {"topology.kubernetes.io/zone": "zone-a"}},
            "spec": {"unschedulable": True},
            "status": {
                "conditions": [
                    {"type": "Ready", "status": "Unknown", "lastTransitionTime": "2025-06-15T15:06:40Z"}
                ]
            },
        },
        "topology.kubernetes.io/zone",
    )
    assert (node.ready, node.schedulable, node.not_ready_since) == (False, False, 1_750_000_000.0)
    pod = pod_from_api(
        {
            "metadata": {
                "name": "demo-0-1",
                "creationTimestamp": "2025-06-15T15:05:40Z",
                "labels": {"engram.io/shard": "0", "engram.io/node-index": "1"},
            },
            "spec": {"nodeName": "n1"},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "False"}]},
        }
    )
    assert pod is not None and pod.node == "n1" and pod.created == 1_750_000_000.0 - 60
    # No transition time on the condition: the pod has not been Ready since it was created.
    assert pod.not_ready_since is None and pod.not_ready_for(1_750_000_000.0) == 60
