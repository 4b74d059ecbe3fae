"""Reconcile decisions: what the operator creates, replaces and refuses, from spec and observed state."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter

from cluster_state import (
    CLUSTER_ID,
    NOW,
    ZONES,
    journal_up,
    just_applied,
    nodes,
    pods_from,
    provision_job,
    provisioned,
    running,
    spec,
)

from engram.orchestration.zones import plan_zones as zone_plan
from engram_operator.decisions import decide
from engram_operator.observe import EngineStatus, NodeInfo


def created_pods(plan) -> list[dict]:
    return [o for o in plan.create if o["kind"] == "Pod"]


def zone_of(pod: dict) -> str:
    return pod["metadata"]["labels"]["engram.io/zone"]


def test_new_cluster_gets_journal_services_and_pdbs_but_no_job_or_pod_before_the_journal_is_ready() -> None:
    cluster = spec(shards=2, replicasPerShard=2, placement={"spreading": "Required"})
    plan = decide(cluster, just_applied(cluster))
    kinds = Counter(o["kind"] for o in plan.create)
    assert kinds == {
        "Service": 3, "StatefulSet": 3, "ConfigMap": 1, "PodDisruptionBudget": 3, "NetworkPolicy": 2
    }
    assert plan.degraded is None and plan.delete_pods == []
    assert "journal servers ready: 0/3" in plan.waiting
    assert plan.provisioned is not None
    assert (plan.provisioned.status, plan.provisioned.reason) == ("False", "WaitingForJournal")


def test_provisioning_job_is_planned_once_the_journal_is_ready_and_alone() -> None:
    cluster = spec(shards=2, replicasPerShard=2)
    plan = decide(cluster, journal_up(cluster))
    [job] = plan.create
    assert job["kind"] == "Job" and job["metadata"]["name"] == "demo-provision"
    assert job["metadata"]["annotations"]["engram.io/cluster-id"] == CLUSTER_ID
    assert plan.provisioned is not None and plan.provisioned.reason == "Provisioning"
    assert [e.reason for e in plan.events] == ["Provisioning"]
    assert any(w.startswith("provisioning:") for w in plan.waiting)


def test_no_engine_pod_is_planned_while_the_provisioning_job_runs_and_its_error_is_shown() -> None:
    cluster = spec(shards=1, replicasPerShard=1)
    seen = dataclasses.replace(
        journal_up(cluster),
        provisioning=provision_job(cluster, error="engram provision: error: journal unreachable"),
    )
    plan = decide(cluster, seen)
    assert plan.create == [] and plan.delete_jobs == []
    assert plan.provisioned is not None and plan.provisioned.status == "False"
    assert "last attempt failed: engram provision: error: journal unreachable" in plan.provisioned.message


def test_engine_pods_are_planned_after_the_job_succeeded_one_per_zone_per_shard() -> None:
    cluster = spec(shards=2, replicasPerShard=2, placement={"spreading": "Required"})
    plan = decide(cluster, provisioned(cluster))
    assert Counter(o["kind"] for o in plan.create) == {"Pod": 6}
    for shard in (0, 1):
        zones = [
            zone_of(p) for p in created_pods(plan) if p["metadata"]["labels"]["engram.io/shard"] == str(shard)
        ]
        assert sorted(zones) == ZONES
    assert plan.provisioned is not None
    assert (plan.provisioned.status, plan.provisioned.reason) == ("True", "Provisioned")


def test_failed_provisioning_job_is_deleted_for_a_retry_with_a_warning() -> None:
    cluster = spec(shards=1, replicasPerShard=1)
    failed = provision_job(cluster, failed=True, error="BackoffLimitExceeded: held by cluster id ffff")
    plan = decide(cluster, dataclasses.replace(journal_up(cluster), provisioning=failed))
    assert plan.delete_jobs == ["demo-provision"] and created_pods(plan) == []
    [event] = plan.events
    assert event.type == "Warning" and event.reason == "ProvisioningFailed"
    assert "held by cluster id ffff" in event.message
    assert plan.provisioned is not None and plan.provisioned.reason == "ProvisioningFailed"


def test_a_succeeded_job_of_another_cluster_id_is_not_trusted_and_is_replaced() -> None:
    cluster = spec(shards=1, replicasPerShard=1)
    # An earlier MemoryCluster of the same name, not yet garbage collected.
    stale = dataclasses.replace(
        provision_job(cluster, succeeded=True), cluster_id="f" * 32, owner_uid="old-uid"
    )
    plan = decide(cluster, dataclasses.replace(journal_up(cluster), provisioning=stale))
    assert created_pods(plan) == [] and plan.delete_jobs == ["demo-provision"]
    assert plan.provisioned is not None and plan.provisioned.reason == "StaleJob"


def test_existing_pods_stay_but_none_is_replaced_before_provisioning_after_an_operator_upgrade() -> None:
    cluster = spec(shards=1, replicasPerShard=2)
    seen = running(cluster)
    # Made by an operator that had no provisioning Job: one pod since lost, no Job yet.
    upgraded = dataclasses.replace(seen, pods=seen.pods[:2], provisioning=None)
    plan = decide(cluster, upgraded)
    assert [o["kind"] for o in plan.create] == ["Job"] and plan.delete_pods == []
    done = decide(cluster, dataclasses.replace(upgraded, provisioning=provision_job(cluster, succeeded=True)))
    assert [p["metadata"]["name"] for p in created_pods(done)] == [seen.pods[2].name]


def test_rolling_update_waits_for_provisioning() -> None:
    old = spec(shards=1, replicasPerShard=1)
    seen = dataclasses.replace(running(old), provisioning=None)
    plan = decide(spec(shards=1, replicasPerShard=1, engine={"version": "0.2.0"}), seen)
    assert plan.delete_pods == [] and not plan.rolling


def test_engine_pods_carry_the_cluster_id_shard_count_and_the_planned_primary() -> None:
    cluster = spec(shards=3, replicasPerShard=2)
    pods = created_pods(decide(cluster, provisioned(cluster)))
    configs = [json.loads(p["metadata"]["annotations"]["engram.io/node-config"]) for p in pods]
    assert {c["cluster_id"] for c in configs} == {CLUSTER_ID}
    assert {c["shards"] for c in configs} == {3}
    preferred = {(c["shard"], c["zone"]) for c in configs if c["preferred_primary"]}
    # One planned primary per shard, balanced over the zones as the zone planner chose.
    assert sorted(s for s, _ in preferred) == [0, 1, 2]
    assert sorted(z for _, z in preferred) == ZONES
    plan = zone_plan(ZONES, 3, 2)
    for c in configs:
        index = int(c["node_id"].rsplit("-", 1)[1])
        assert c["preferred_primary"] == plan.node(c["shard"], index).primary


def test_a_settled_cluster_needs_nothing() -> None:
    cluster = spec(shards=3, replicasPerShard=2)
    plan = decide(cluster, running(cluster))
    assert not plan.changes and plan.waiting == [] and plan.role_labels == {}


def test_primaries_are_balanced_over_zones() -> None:
    cluster = spec(shards=3, replicasPerShard=2)
    seen = running(cluster)
    primaries = Counter(p.zone for p in seen.pods if p.index == 0)
    assert primaries == {"zone-a": 1, "zone-b": 1, "zone-c": 1}


def test_deleted_pod_is_recreated_with_its_name_in_its_zone() -> None:
    cluster = spec(shards=1, replicasPerShard=2)
    seen = running(cluster)
    gone = next(p for p in seen.pods if p.index == 1)
    plan = decide(cluster, dataclasses.replace(seen, pods=[p for p in seen.pods if p is not gone]))
    [pod] = created_pods(plan)
    assert pod["metadata"]["name"] == gone.name and zone_of(pod) == gone.zone
    assert plan.delete_pods == []


def test_failed_pod_is_deleted_and_replaced_under_a_fresh_name() -> None:
    cluster = spec(shards=1, replicasPerShard=1)
    seen = running(cluster)
    failed = dataclasses.replace(seen.pods[1], phase="Failed", ready=False)
    plan = decide(cluster, dataclasses.replace(seen, pods=[seen.pods[0], failed]))
    assert plan.delete_pods == [failed.name]
    [pod] = created_pods(plan)
    assert pod["metadata"]["name"] == f"{failed.name}-r1" and zone_of(pod) == failed.zone


def test_lost_zone_nodes_move_to_surviving_zones_with_preferred_spreading() -> None:
    cluster = spec(shards=3, replicasPerShard=2, placement={"spreading": "Preferred"})
    seen = dataclasses.replace(running(cluster), nodes=nodes(down=("zone-b",)))
    # Its primary no longer answers: the lease has moved on, nothing is left to hand over.
    answering = {name: s for name, s in seen.statuses.items() if name != "demo-1-0"}
    seen = dataclasses.replace(seen, statuses=answering)
    lost = sorted(p.name for p in seen.pods if p.zone == "zone-b")
    assert "demo-1-0" in lost
    plan = decide(cluster, seen)
    assert sorted(plan.delete_pods) == lost and plan.switchovers == []
    replacements = created_pods(plan)
    assert sorted(p["metadata"]["name"] for p in replacements) == [f"{n}-r1" for n in lost]
    assert all(zone_of(p) in ("zone-a", "zone-c") for p in replacements)
    assert any(e.reason == "ZoneLost" for e in plan.events)
    assert plan.degraded is None


def test_lost_zone_with_required_spreading_is_degraded_and_creates_nothing() -> None:
    cluster = spec(shards=1, replicasPerShard=2, placement={"spreading": "Required"})
    seen = dataclasses.replace(running(cluster), nodes=nodes(down=("zone-c",)))
    plan = decide(cluster, seen)
    assert created_pods(plan) == []
    assert plan.degraded is not None and plan.degraded.reason == "ZoneLost"
    assert "bring a lost zone" in plan.degraded.message


def test_impossible_required_spec_is_degraded_with_an_event_and_changes_nothing() -> None:
    before = spec(shards=2, replicasPerShard=2, placement={"spreading": "Required"})
    seen = running(before)
    after = spec(shards=2, replicasPerShard=3, placement={"spreading": "Required"})
    plan = decide(after, seen)
    assert not plan.changes
    assert plan.degraded is not None and plan.degraded.reason == "UnsatisfiableSpread"
    assert "4 nodes" in plan.degraded.message and "only 3 zones" in plan.degraded.message
    assert [e.type for e in plan.events] == ["Warning"]


def test_impossible_spec_on_a_new_cluster_creates_nothing() -> None:
    cluster = spec(shards=1, replicasPerShard=1, placement={"spreading": "Required"})
    plan = decide(cluster, just_applied(cluster, nodes(zones=["zone-a"])))
    assert plan.create == [] and plan.degraded is not None


def test_preferred_spreading_on_too_few_zones_proceeds_and_says_how() -> None:
    cluster = spec(shards=1, replicasPerShard=2, placement={"spreading": "Preferred"})
    plan = decide(cluster, provisioned(cluster, nodes(zones=["zone-a", "zone-b"])))
    assert len(created_pods(plan)) == 3
    assert plan.spread is not None and "only 2 zones" in plan.spread.message


def test_nodes_without_zone_labels_get_unpinned_pods_when_preferred() -> None:
    cluster = spec(shards=1, replicasPerShard=1)
    unlabelled = [NodeInfo("n1", None, True, True)]
    plan = decide(cluster, provisioned(cluster, unlabelled))
    pods = created_pods(plan)
    assert len(pods) == 2 and all("nodeAffinity" not in p["spec"]["affinity"] for p in pods)


def test_role_labels_follow_what_the_nodes_report() -> None:
    cluster = spec(shards=1, replicasPerShard=1)
    seen = running(cluster)
    old_primary, old_replica = seen.pods
    flipped = {
        old_primary.name: EngineStatus(role="replica"),
        old_replica.name: EngineStatus(role="primary"),
    }
    plan = decide(cluster, dataclasses.replace(seen, statuses=flipped))
    assert plan.role_labels == {old_primary.name: "replica", old_replica.name: "primary"}
    assert not plan.changes


def test_rolling_update_replaces_replicas_first_one_at_a_time() -> None:
    old = spec(shards=1, replicasPerShard=2)
    seen = running(old)
    new = spec(shards=1, replicasPerShard=2, engine={"version": "0.2.0"})
    plan = decide(new, seen)
    assert plan.rolling and len(plan.delete_pods) == 1
    assert plan.delete_pods[0] != next(p.name for p in seen.pods if p.role_label == "primary")


def test_rolling_update_switches_over_before_replacing_the_primary() -> None:
    old = spec(shards=1, replicasPerShard=1)
    new = spec(shards=1, replicasPerShard=1, engine={"version": "0.2.0"})
    seen = running(old)
    primary, replica = seen.pods
    new_hash = pods_from(decide(new, provisioned(new)), new)[0].spec_hash
    seen = dataclasses.replace(seen, pods=[primary, dataclasses.replace(replica, spec_hash=new_hash)])
    plan = decide(new, seen)
    assert plan.delete_pods == []
    assert [(s.pod, s.target) for s in plan.switchovers] == [(primary.name, replica.name)]


def test_rolling_update_waits_while_a_pod_is_not_ready() -> None:
    old = spec(shards=1, replicasPerShard=1)
    seen = running(old)
    # Not Ready for five seconds: a replica catching up, most likely.
    late = dataclasses.replace(seen.pods[1], ready=False, not_ready_since=NOW - 5)
    seen = dataclasses.replace(seen, pods=[seen.pods[0], late])
    plan = decide(spec(shards=1, replicasPerShard=1, engine={"version": "0.2.0"}), seen)
    assert not plan.changes and plan.rolling
    assert any(late.name in w for w in plan.waiting)


def test_engine_pods_know_each_journal_servers_zone_so_a_primary_can_keep_its_stream_leader_away() -> None:
    cluster = spec(shards=1, replicasPerShard=2)
    configs = [json.loads(p["metadata"]["annotations"]["engram.io/node-config"])
               for p in created_pods(decide(cluster, provisioned(cluster)))]
    # The journal's server names are its pods' names (one single-pod StatefulSet per server).
    expected = {f"{cluster.name}-journal-{i}-0": zone.lower() for i, zone in enumerate(sorted(ZONES))}
    assert all(c["journal_zones"] == expected for c in configs), configs[0]["journal_zones"]


def test_made_up_journal_tags_on_too_few_zones_are_not_given_to_nodes() -> None:
    cluster = spec(shards=1, replicasPerShard=2, placement={"spreading": "Preferred"})
    plan = decide(cluster, provisioned(cluster, nodes(zones=["zone-a", "zone-b"])))
    configs = [json.loads(p["metadata"]["annotations"]["engram.io/node-config"]) for p in created_pods(plan)]
    assert all(c["journal_zones"] == {} for c in configs)
