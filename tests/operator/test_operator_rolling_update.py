"""Rolling updates that cannot stall, and halted nodes that surface and are replaced (issue 13: an
engine-version update stalled on the old primary, which halted after its switchover)."""

from __future__ import annotations

import dataclasses

from cluster_state import NOW, pods_from, provisioned, running, spec
from k8s_offline import crd_schema, memorycluster_crd, schema_errors

from engram_operator.decisions import HALTED_RETRY_AFTER, ROLL_STUCK_GRACE, decide
from engram_operator.observe import EngineStatus, Observed, PodInfo
from engram_operator.status import build_status

OLD = spec(shards=1, replicasPerShard=1)
NEW = spec(shards=1, replicasPerShard=1, engine={"version": "0.2.0"})
VERSION_HALT = "entry 57 was written by engine 0.2.0, newer than this node's 0.1.0; upgrade this node"


def new_hash() -> str:
    return pods_from(decide(NEW, provisioned(NEW)), NEW)[0].spec_hash


def after_switchover(old_primary: dict) -> tuple[Observed, PodInfo, PodInfo]:
    """The moment after the roll's switchover: the updated replica leads, the old primary replays."""
    seen = running(OLD)
    was_primary, was_replica = seen.pods
    leader = dataclasses.replace(was_replica, spec_hash=new_hash(), role_label="primary")
    old = dataclasses.replace(was_primary, role_label="replica", **old_primary)
    statuses = {leader.name: EngineStatus("primary", applied_seq=200, committed_seq=200)}
    return dataclasses.replace(seen, pods=[old, leader], statuses=statuses), old, leader


def test_the_old_primary_that_halts_on_the_new_engines_entries_is_replaced_at_once() -> None:
    seen, old, _ = after_switchover({"ready": False, "not_ready_since": NOW - 2})
    seen = dataclasses.replace(
        seen, statuses={**seen.statuses, old.name: EngineStatus("replica", halted=VERSION_HALT)}
    )
    plan = decide(NEW, seen)
    assert plan.delete_pods == [old.name]
    [event] = [e for e in plan.events if e.reason == "NodeHalted"]
    assert event.type == "Warning" and VERSION_HALT in event.message and not event.standing
    assert [(h.pod, h.reason) for h in plan.halted] == [(old.name, VERSION_HALT)]


def test_an_old_spec_pod_stuck_not_ready_is_replaced_instead_of_pausing_the_roll_forever() -> None:
    # It does not answer at all (replaying, or wedged); a minute is far past the grace.
    seen, old, _ = after_switchover({"ready": False, "not_ready_since": NOW - 60})
    plan = decide(NEW, seen)
    assert plan.rolling and plan.delete_pods == [old.name]
    assert "not ready for 60s" in plan.events[0].message


def test_an_old_spec_pod_just_turned_not_ready_gets_its_grace() -> None:
    seen, old, _ = after_switchover({"ready": False, "not_ready_since": NOW - ROLL_STUCK_GRACE + 5})
    plan = decide(NEW, seen)
    assert plan.delete_pods == [] and plan.rolling
    assert any(old.name in w for w in plan.waiting)


def test_a_not_ready_pod_on_the_new_spec_pauses_the_roll_and_is_not_replaced() -> None:
    """A new pod that does not become Ready says the new spec may be broken: stop rolling."""
    seen = running(spec(shards=1, replicasPerShard=2))
    big_new = spec(shards=1, replicasPerShard=2, engine={"version": "0.2.0"})
    fresh = dataclasses.replace(seen.pods[1], spec_hash=new_hash(), ready=False, not_ready_since=NOW - 600)
    seen = dataclasses.replace(seen, pods=[seen.pods[0], fresh, seen.pods[2]])
    plan = decide(big_new, seen)
    assert plan.delete_pods == [] and plan.rolling


def test_an_old_spec_pod_answering_as_primary_is_never_replaced_as_stuck() -> None:
    seen = running(OLD)
    primary = dataclasses.replace(seen.pods[0], ready=False, not_ready_since=NOW - 600)
    seen = dataclasses.replace(seen, pods=[primary, seen.pods[1]])
    plan = decide(NEW, seen)
    assert primary.name not in plan.delete_pods


def test_a_halted_pod_on_the_current_spec_is_kept_a_while_then_replaced() -> None:
    seen = running(OLD)
    replica = seen.pods[1]
    halted = {**seen.statuses, replica.name: EngineStatus("replica", halted="checksum mismatch at entry 9")}
    young = dataclasses.replace(replica, created=NOW - 60, ready=False, not_ready_since=NOW - 50)
    plan = decide(OLD, dataclasses.replace(seen, pods=[seen.pods[0], young], statuses=halted))
    assert plan.delete_pods == []
    [event] = [e for e in plan.events if e.reason == "NodeHalted"]
    assert event.standing and "checksum mismatch" in event.message
    old = dataclasses.replace(young, created=NOW - HALTED_RETRY_AFTER)
    plan = decide(OLD, dataclasses.replace(seen, pods=[seen.pods[0], old], statuses=halted))
    assert plan.delete_pods == [replica.name]


def test_halted_nodes_surface_in_a_condition_and_per_shard() -> None:
    seen, old, _ = after_switchover({"ready": False, "not_ready_since": NOW - 2})
    seen = dataclasses.replace(
        seen, statuses={**seen.statuses, old.name: EngineStatus("replica", halted=VERSION_HALT)}
    )
    status = build_status(NEW, seen, decide(NEW, seen), None, generation=2)
    assert schema_errors(crd_schema(memorycluster_crd())["properties"]["status"], status) == []
    healthy = next(c for c in status["conditions"] if c["type"] == "NodesHealthy")
    assert (healthy["status"], healthy["reason"]) == ("False", "NodeHalted")
    assert old.name in healthy["message"] and VERSION_HALT in healthy["message"]
    assert status["shards"][0]["halted"] == [old.name]
    settled = build_status(OLD, running(OLD), decide(OLD, running(OLD)), None, generation=2)
    assert next(c for c in settled["conditions"] if c["type"] == "NodesHealthy")["status"] == "True"


def test_a_config_only_change_rolls_replicas_first() -> None:
    seen = running(OLD)
    plan = decide(spec(shards=1, replicasPerShard=1, engine={"logLevel": "debug"}), seen)
    assert plan.rolling and plan.delete_pods == [seen.pods[1].name]
