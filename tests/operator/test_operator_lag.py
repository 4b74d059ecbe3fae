"""Lagging replicas surface in the status, a condition and one event; stuck ones are replaced (issue 13:
"halted or lagging nodes surface as conditions and events and are replaced").

Each reconcile here goes through the status, as the operator's do: the progress marks the last
status remembers are read back into the next observation, so the clock survives operator restarts.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from cluster_state import NOW, running, spec
from k8s_offline import crd_schema, memorycluster_crd, schema_errors

from engram_operator.decisions import (
    HALTED_RETRY_AFTER,
    LAG_WARN_ENTRIES,
    STUCK_AFTER,
    Plan,
    decide,
)
from engram_operator.observe import EngineStatus, Observed, pod_from_api
from engram_operator.replica_progress import remembered_marks
from engram_operator.status import build_status

CLUSTER = spec(shards=1, replicasPerShard=2)


def observed(applied: dict[int, int], committed: int, at: float, status: dict[str, Any] | None) -> Observed:
    """The one-shard cluster at ``at``: node 0 leads at ``committed``, node I has applied
    ``applied[I]`` (caught up when not given); the marks are the ones ``status`` remembers."""
    seen = running(CLUSTER)
    pods = [dataclasses.replace(p, uid=f"uid-{p.name}") for p in seen.pods]
    statuses = {
        p.name: EngineStatus("primary", applied_seq=committed, committed_seq=committed)
        if p.index == 0
        else EngineStatus("replica", applied_seq=applied.get(p.index, committed),
                          committed_seq=applied.get(p.index, committed))
        for p in pods
    }
    return dataclasses.replace(
        seen, pods=pods, statuses=statuses, now=at, progress_marks=remembered_marks(status)
    )


def reconcile(seen: Observed, status: dict[str, Any] | None) -> tuple[Plan, dict[str, Any]]:
    """decide, then the status it writes (checked against the CRD), as one reconcile does."""
    plan = decide(CLUSTER, seen)
    written = build_status(CLUSTER, seen, plan, status, generation=1)
    assert schema_errors(crd_schema(memorycluster_crd())["properties"]["status"], written) == []
    return plan, written


def nodes_healthy(status: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == "NodesHealthy")


def stuck_for(seconds: float, applied: int = 500, committed: int = 900) -> tuple[Plan, dict[str, Any]]:
    """Replica 1 at ``applied`` from NOW on, reconciled every 5 s for ``seconds`` while the shard
    committed ``committed``; the last reconcile's plan and status."""
    status: dict[str, Any] | None = None
    at = NOW
    while True:
        plan, status = reconcile(observed({1: applied}, committed, at, status), status)
        if at >= NOW + seconds:
            return plan, status
        at = min(at + 5, NOW + seconds)


def test_a_replica_that_keeps_applying_is_never_replaced_however_far_behind() -> None:
    status: dict[str, Any] | None = None
    for step in range(100):  # 500 s of a replica 20000 behind that applies 100 entries a tick
        committed = 100_000 + 200 * step
        plan, status = reconcile(observed({1: committed - 20_000}, committed, NOW + 5 * step, status), status)
        assert plan.delete_pods == []
    assert [(x.pod, x.stuck) for x in plan.lagging] == [("demo-0-1", False)]
    assert status["shards"][0]["lagging"] == ["demo-0-1"]
    condition = nodes_healthy(status)
    assert (condition["status"], condition["reason"]) == ("False", "ReplicaLagging")
    assert "demo-0-1 (shard 0): 20000 entries behind" in condition["message"]
    [event] = [e for e in plan.events if e.reason == "ReplicaLagging"]
    # A lasting state: the same event every tick, so announce.py posts it once.
    assert event.type == "Warning" and event.standing and str(LAG_WARN_ENTRIES) in event.message


def test_a_lagging_replica_leaves_the_cluster_ready() -> None:
    _, status = reconcile(observed({1: 100}, 100 + LAG_WARN_ENTRIES + 1, NOW, None), None)
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True" and nodes_healthy(status)["reason"] == "ReplicaLagging"


def test_a_replica_a_little_behind_is_neither_lagging_nor_unhealthy() -> None:
    plan, status = reconcile(observed({1: 100}, 100 + LAG_WARN_ENTRIES, NOW, None), None)
    assert plan.lagging == [] and status["shards"][0]["lagging"] == []
    assert nodes_healthy(status)["status"] == "True"


def test_a_replica_stuck_for_less_than_the_time_is_not_replaced() -> None:
    plan, status = stuck_for(STUCK_AFTER - 5)
    assert plan.delete_pods == [] and plan.lagging == []
    # Remembered in the status, for the next reconcile: where it stood, and since when.
    [mark] = status["shards"][0]["replicaProgress"]
    assert mark == {
        "pod": "demo-0-1", "uid": "uid-demo-0-1", "appliedSeq": 500, "since": "2025-06-15T15:06:40Z"
    }


def test_a_replica_stuck_longer_is_replaced_and_said_so() -> None:
    plan, status = stuck_for(STUCK_AFTER)
    assert plan.delete_pods == ["demo-0-1"] and plan.replacements == {"demo-0-1": "stuck"}
    [event] = [e for e in plan.events if e.reason == "ReplicaStuck"]
    assert event.type == "Warning" and not event.standing
    assert "applied nothing past entry 500" in event.message and "replacing it" in event.message
    # Its replacement is created in the same reconcile, under the name it frees.
    assert [o["metadata"]["name"] for o in plan.create if o["kind"] == "Pod"] == ["demo-0-1-r1"]
    condition = nodes_healthy(status)
    assert (condition["status"], condition["reason"]) == ("False", "ReplicaStuck")
    assert status["shards"][0]["lagging"] == ["demo-0-1"]


def test_a_stuck_replica_only_a_few_entries_behind_is_still_stuck() -> None:
    plan, _ = stuck_for(STUCK_AFTER + 60, applied=899, committed=900)
    assert plan.delete_pods == ["demo-0-1"]


def test_an_idle_shard_is_never_stuck_and_its_first_write_starts_no_old_clock() -> None:
    # Ten minutes without a write: every replica at the commit, nothing to apply, no mark.
    status: dict[str, Any] | None = None
    for step in range(120):
        plan, status = reconcile(observed({}, 900, NOW + 5 * step, status), status)
        assert plan.delete_pods == [] and plan.lagging == []
    assert "replicaProgress" not in status["shards"][0]
    # A write arrives and the next probe sees the replica one entry short: its clock starts now.
    plan, status = reconcile(observed({1: 900}, 901, NOW + 600, status), status)
    assert plan.delete_pods == [] and plan.lagging == []
    assert [m["since"] for m in status["shards"][0]["replicaProgress"]] == ["2025-06-15T15:16:40Z"]


def test_the_primary_is_never_marked_nor_replaced() -> None:
    status: dict[str, Any] | None = None
    for step in range(60):
        # Both replicas report more than the primary (a stale primary's answer): only it trails.
        seen = observed({1: 950, 2: 950}, 900, NOW + 5 * step, status)
        plan, status = reconcile(seen, status)
        assert "demo-0-0" not in plan.progress and "demo-0-0" not in plan.delete_pods
    assert plan.lagging == []


def test_a_new_pod_under_the_same_name_starts_the_clock_again() -> None:
    _, status = stuck_for(STUCK_AFTER - 5)
    seen = observed({1: 500}, 900, NOW + STUCK_AFTER + 30, status)
    renewed = [dataclasses.replace(p, uid="uid-new") if p.name == "demo-0-1" else p for p in seen.pods]
    plan, status = reconcile(dataclasses.replace(seen, pods=renewed), status)
    assert plan.delete_pods == [] and plan.lagging == []
    assert status["shards"][0]["replicaProgress"][0]["uid"] == "uid-new"


def test_a_replica_whose_applied_sequence_went_backwards_starts_the_clock_again() -> None:
    # Its container restarted and replays from the snapshot at entry 300.
    _, status = stuck_for(STUCK_AFTER - 5)
    plan, status = reconcile(observed({1: 300}, 900, NOW + STUCK_AFTER + 30, status), status)
    assert plan.delete_pods == [] and plan.lagging == []
    [mark] = status["shards"][0]["replicaProgress"]
    assert mark["appliedSeq"] == 300


def test_a_restarted_operator_neither_restarts_nor_shortens_the_clock() -> None:
    _, status = stuck_for(STUCK_AFTER - 60)
    # A new operator process knows only what the status says: the clock goes on from it.
    plan, _ = reconcile(observed({1: 500}, 900, NOW + STUCK_AFTER, status), status)
    assert plan.delete_pods == ["demo-0-1"]
    # A status without marks (lost, or written by an older operator) starts the clock: no early replacement.
    plan, status = reconcile(observed({1: 500}, 900, NOW + STUCK_AFTER, None), None)
    assert plan.delete_pods == []
    plan, _ = reconcile(observed({1: 500}, 900, NOW + 2 * STUCK_AFTER - 5, status), status)
    assert plan.delete_pods == []
    plan, _ = reconcile(observed({1: 500}, 900, NOW + 2 * STUCK_AFTER, status), status)
    assert plan.delete_pods == ["demo-0-1"]


def test_a_probe_that_goes_unanswered_keeps_the_mark_as_it_was() -> None:
    _, status = stuck_for(STUCK_AFTER - 60)
    seen = observed({1: 500}, 900, NOW + STUCK_AFTER - 30, status)
    silent = {k: v for k, v in seen.statuses.items() if k != "demo-0-1"}
    plan, status = reconcile(dataclasses.replace(seen, statuses=silent), status)
    assert plan.delete_pods == [] and status["shards"][0]["replicaProgress"][0]["appliedSeq"] == 500
    plan, _ = reconcile(observed({1: 500}, 900, NOW + STUCK_AFTER, status), status)
    assert plan.delete_pods == ["demo-0-1"]


def test_two_stuck_replicas_of_a_shard_are_replaced_one_at_a_time() -> None:
    status: dict[str, Any] | None = None
    for at in (NOW, NOW + STUCK_AFTER):
        plan, status = reconcile(observed({1: 500, 2: 500}, 900, at, status), status)
    assert plan.delete_pods == ["demo-0-1"]
    [waiting] = [e for e in plan.events if e.reason == "ReplicaStuck" and e.standing]
    assert "demo-0-2" in waiting.message and "once every other node of the shard is Ready" in waiting.message


def test_a_stuck_replica_waits_while_another_node_of_its_shard_is_not_ready() -> None:
    status: dict[str, Any] | None = None
    for at in (NOW, NOW + STUCK_AFTER):
        seen = observed({1: 500}, 900, at, status)
        pods = [
            dataclasses.replace(p, ready=False, not_ready_since=NOW) if p.index == 2 else p for p in seen.pods
        ]
        plan, status = reconcile(dataclasses.replace(seen, pods=pods), status)
    assert "demo-0-1" not in plan.delete_pods
    assert [x.pod for x in plan.lagging if x.stuck] == ["demo-0-1"]


def test_a_young_stuck_pod_on_the_current_spec_waits_as_a_halted_one_does() -> None:
    status: dict[str, Any] | None = None
    for at in (NOW, NOW + STUCK_AFTER):
        seen = observed({1: 500}, 900, at, status)
        pods = [dataclasses.replace(p, created=NOW - 10) if p.index == 1 else p for p in seen.pods]
        plan, status = reconcile(dataclasses.replace(seen, pods=pods), status)
    assert plan.delete_pods == []
    [event] = [e for e in plan.events if e.reason == "ReplicaStuck"]
    assert event.standing and f"{HALTED_RETRY_AFTER:g}s old" in event.message


def test_a_pod_reads_its_uid() -> None:
    slot = {"engram.io/shard": "0", "engram.io/node-index": "1"}
    pod = {"metadata": {"name": "demo-0-1", "uid": "u-1", "labels": slot}}
    info = pod_from_api(pod)
    assert info is not None and info.uid == "u-1"


def test_unreadable_marks_are_dropped_not_raised() -> None:
    bad = [{"pod": "demo-0-1", "since": "yesterday", "appliedSeq": 1}, {"pod": "demo-0-2"}, "junk"]
    status = {"shards": [{"replicaProgress": bad}, "junk"]}
    assert remembered_marks(status) == {}
