"""Snapshots on Kubernetes: spec.snapshots, the node config it reaches, on-demand requests, status."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from cluster_state import CLUSTER_ID, NOW, running, spec
from k8s_offline import admit, crd_schema, memorycluster_crd, schema_errors

from engram.node.config import NodeConfig
from engram.node.peer import PeerRefused, PeerUnreachable
from engram_operator import builders, constants, labels, probe
from engram_operator.builders.engine import build_node_config, shared_node_config
from engram_operator.decisions import (
    SnapshotResult,
    SnapshotTarget,
    decide,
    pending_snapshot_request,
    remembered_snapshot_failures,
    snapshot_failure_counts,
    snapshot_failure_events,
    snapshot_outcome_event,
    snapshot_replica,
    snapshot_request_event,
    snapshot_targets,
)
from engram_operator.observe import EngineStatus, parse_engine_status
from engram_operator.spec import ClusterSpec, SnapshotSpec
from engram_operator.status import build_status, snapshot_request_done, snapshots_status


def body(**snapshots: Any) -> dict[str, Any]:
    return {
        "apiVersion": "engram.io/v1alpha1",
        "kind": "MemoryCluster",
        "metadata": {"name": "demo", "namespace": "db"},
        "spec": {"snapshots": snapshots} if snapshots else {},
    }


def status_schema() -> dict[str, Any]:
    return crd_schema(memorycluster_crd())["properties"]["status"]


# --- spec and CRD ---------------------------------------------------------------------------------


def test_defaults_are_the_crds_and_the_engines() -> None:
    stored, errors = admit(body())
    assert errors == []
    assert stored["spec"]["snapshots"] == {"intervalSeconds": 3600, "tailEntries": 100000, "keep": 2}
    parsed = ClusterSpec.from_body(stored).snapshots
    assert parsed == ClusterSpec.from_body(body()).snapshots == SnapshotSpec(3600.0, 100_000, 2, "")
    # The same cluster as a node configured without the operator saying anything.
    engine = NodeConfig(cluster="c", node_id="n", shard=0, zone="", port=6379, journal_urls=[], data_dir="/d")
    assert (parsed.interval_seconds, parsed.tail_entries, parsed.keep) == (
        engine.snapshot_interval,
        engine.snapshot_tail_entries,
        engine.snapshot_keep,
    )


def test_every_field_is_parsed() -> None:
    stored, errors = admit(body(intervalSeconds=90.5, tailEntries=0, keep=5, request="2025-06-01T12:00:00Z"))
    assert errors == []
    assert ClusterSpec.from_body(stored).snapshots == SnapshotSpec(90.5, 0, 5, "2025-06-01T12:00:00Z")


def test_zero_turns_schedule_and_threshold_off_and_one_snapshot_may_be_kept() -> None:
    stored, errors = admit(body(intervalSeconds=0, tailEntries=0, keep=1))
    assert errors == []
    assert ClusterSpec.from_body(stored).snapshots == SnapshotSpec(0.0, 0, 1, "")


@pytest.mark.parametrize(
    ("snapshots", "field", "words"),
    [
        ({"intervalSeconds": -1}, "spec.snapshots.intervalSeconds", "less than the minimum of 0"),
        ({"intervalSeconds": -0.5}, "spec.snapshots.intervalSeconds", "less than the minimum of 0"),
        ({"intervalSeconds": "1h"}, "spec.snapshots.intervalSeconds", "is not of type 'number'"),
        ({"tailEntries": -5}, "spec.snapshots.tailEntries", "less than the minimum of 0"),
        ({"tailEntries": 1.5}, "spec.snapshots.tailEntries", "is not of type 'integer'"),
        ({"keep": 0}, "spec.snapshots.keep", "less than the minimum of 1"),
        ({"keep": -2}, "spec.snapshots.keep", "less than the minimum of 1"),
        ({"request": 5}, "spec.snapshots.request", "is not of type 'string'"),
        ({"request": "x" * 257}, "spec.snapshots.request", "is too long"),
        ({"every": 60}, "spec.snapshots", "'every' was unexpected"),
    ],
)
def test_bad_snapshot_settings_are_refused_naming_the_field(
    snapshots: dict[str, Any], field: str, words: str
) -> None:
    _, errors = admit(body(**snapshots))
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"{field}: ") and words in errors[0]


def test_snapshot_settings_and_requests_may_change_on_a_running_cluster() -> None:
    old, _ = admit(body())
    new = copy.deepcopy(old)
    new["spec"]["snapshots"] = {"intervalSeconds": 600, "tailEntries": 0, "keep": 3, "request": "now"}
    _, errors = admit(new, old=old)
    assert errors == []


def test_the_crd_says_what_each_field_does() -> None:
    schema = crd_schema(memorycluster_crd())["properties"]["spec"]["properties"]["snapshots"]
    fields = schema["properties"]
    assert "truncated behind the oldest" in fields["keep"]["description"]
    for name in ("intervalSeconds", "tailEntries", "keep"):
        assert "rolls the pods" in fields[name]["description"], name
    assert "Never rolls the pods" in fields["request"]["description"]
    assert "resources.node" in schema["description"]


# --- node config and rolling ------------------------------------------------------------------------


def test_node_config_carries_the_snapshot_settings_to_every_pod() -> None:
    cluster = spec(snapshots={"intervalSeconds": 900, "tailEntries": 5000, "keep": 3})
    config = build_node_config(cluster, "demo-0-1", 0, "zone-a", cluster_id=CLUSTER_ID)
    assert (config.snapshot_interval, config.snapshot_tail_entries, config.snapshot_keep) == (900.0, 5000, 3)
    pod = builders.build_engine_pod(
        cluster, name="demo-0-1", shard=0, index=1, zone="zone-a", cluster_id=CLUSTER_ID
    )
    annotation = json.loads(pod["metadata"]["annotations"][labels.NODE_CONFIG])
    # What the node loads at start (its own checks included) is what the spec said.
    loaded = NodeConfig(**annotation)
    assert (loaded.snapshot_interval, loaded.snapshot_tail_entries, loaded.snapshot_keep) == (900.0, 5000, 3)


@pytest.mark.parametrize(
    "change", [{"intervalSeconds": 60}, {"intervalSeconds": 0}, {"tailEntries": 7}, {"keep": 4}]
)
def test_a_snapshot_setting_change_rolls_the_pods(change: dict[str, Any]) -> None:
    base = builders.pod_spec_hash(spec())
    changed = spec(snapshots=change)
    assert builders.pod_spec_hash(changed) != base
    seen = running(spec(shards=1, replicasPerShard=1))
    plan = decide(spec(shards=1, replicasPerShard=1, snapshots=change), seen)
    assert plan.rolling and plan.delete_pods == ["demo-0-1"]


def test_a_request_never_reaches_the_nodes_nor_rolls_the_pods() -> None:
    plain, requested = spec(), spec(snapshots={"request": "2025-06-01T12:00:00Z"})
    assert builders.pod_spec_hash(requested) == builders.pod_spec_hash(plain)
    assert shared_node_config(requested) == shared_node_config(plain)
    args = {"name": "demo-0-1", "shard": 0, "index": 1, "zone": "zone-a", "cluster_id": CLUSTER_ID}
    assert builders.build_engine_pod(requested, **args) == builders.build_engine_pod(plain, **args)
    assert "2025-06-01T12:00:00Z" not in json.dumps(builders.build_engine_pod(requested, **args))
    cluster = spec(shards=1, replicasPerShard=1)
    plan = decide(spec(shards=1, replicasPerShard=1, snapshots={"request": "r1"}), running(cluster))
    assert not plan.rolling and not plan.changes


# --- which request, which replica ---------------------------------------------------------------------


def test_a_request_is_pending_until_it_has_been_answered() -> None:
    assert pending_snapshot_request(spec(), ["", ""]) == ""
    requested = spec(snapshots={"request": "r2"})
    assert pending_snapshot_request(requested, ["", ""]) == "r2"
    assert pending_snapshot_request(requested, ["r1", ""]) == "r2"
    assert pending_snapshot_request(requested, ["r2", ""]) == ""
    # Recorded by this operator, not yet in the body it reads: not carried out twice.
    assert pending_snapshot_request(requested, ["r1", "r2"]) == ""


def three_replicas() -> tuple[ClusterSpec, Any]:
    cluster = spec(shards=2, replicasPerShard=3)
    return cluster, running(cluster)


def test_the_replica_with_the_lowest_pod_name_that_is_ready_takes_the_snapshot() -> None:
    cluster, seen = three_replicas()
    assert snapshot_replica(seen, 0).name == "demo-0-1"
    assert snapshot_replica(seen, 1).name == "demo-1-1"
    assert snapshot_targets(cluster, seen) == [SnapshotTarget(0, "demo-0-1"), SnapshotTarget(1, "demo-1-1")]


def replace_pod(seen: Any, name: str, **changes: Any) -> Any:
    return dataclasses.replace(
        seen, pods=[dataclasses.replace(p, **changes) if p.name == name else p for p in seen.pods]
    )


def replace_status(seen: Any, name: str, status: EngineStatus | None) -> Any:
    statuses = {k: v for k, v in seen.statuses.items() if k != name}
    if status is not None:
        statuses[name] = status
    return dataclasses.replace(seen, statuses=statuses)


@pytest.mark.parametrize(
    "unfit",
    [
        lambda seen: replace_pod(seen, "demo-0-1", ready=False),
        lambda seen: replace_pod(seen, "demo-0-1", deleting=True),
        lambda seen: replace_pod(seen, "demo-0-1", ip=""),
        lambda seen: replace_status(seen, "demo-0-1", None),
        lambda seen: replace_status(seen, "demo-0-1", EngineStatus("replica", halted="checksum mismatch")),
        lambda seen: replace_status(seen, "demo-0-1", EngineStatus("primary")),
        lambda seen: replace_status(seen, "demo-0-1", EngineStatus("starting")),
        # Its Kubernetes node has been NotReady for ten minutes: lost.
        lambda seen: dataclasses.replace(
            seen,
            nodes=[
                dataclasses.replace(n, ready=False, not_ready_since=NOW - 600)
                if n.name == next(p.node for p in seen.pods if p.name == "demo-0-1")
                else n
                for n in seen.nodes
            ],
        ),
    ],
    ids=["not-ready", "deleting", "no-ip", "silent", "halted", "primary", "starting", "node-lost"],
)
def test_a_replica_that_cannot_take_it_is_passed_over(unfit: Any) -> None:
    _, seen = three_replicas()
    assert snapshot_replica(unfit(seen), 0).name == "demo-0-2"


def test_never_the_primary_even_when_its_name_is_lowest() -> None:
    _, seen = three_replicas()
    assert seen.statuses["demo-0-0"].role == "primary"
    assert snapshot_replica(seen, 0).name != "demo-0-0"


def test_a_shard_without_a_replica_gets_a_clear_failure() -> None:
    single = spec(shards=2, replicasPerShard=0)
    targets = snapshot_targets(single, running(single))
    assert [t.pod for t in targets] == ["", ""]
    assert "replicasPerShard is 0" in targets[0].problem and "never by the primary" in targets[0].problem

    cluster, seen = three_replicas()
    for name in ("demo-1-1", "demo-1-2", "demo-1-3"):
        seen = replace_status(seen, name, EngineStatus("replica", halted="journal gap"))
    [ok, none] = snapshot_targets(cluster, seen)
    assert ok == SnapshotTarget(0, "demo-0-1")
    assert none.pod == "" and "shard 1 has no ready replica" in none.problem


def test_events_say_where_each_snapshot_is_taken_and_how_it_went() -> None:
    started = snapshot_request_event(
        "r1", [SnapshotTarget(0, "demo-0-1"), SnapshotTarget(1, problem="no replica")]
    )
    assert (started.type, started.reason) == ("Normal", "SnapshotRequested")
    assert "shard 0 on demo-0-1" in started.message and "no replica" in started.message
    good = [SnapshotResult(0, "demo-0-1", True, "shard 0: snapshot at entry 9 verified")]
    taken = snapshot_outcome_event("r1", good)
    assert (taken.type, taken.reason) == ("Normal", "SnapshotTaken") and "entry 9 verified" in taken.message
    bad = [*good, SnapshotResult(1, "demo-1-1", False, "shard 1 on demo-1-1: refused: ERR no store")]
    failed = snapshot_outcome_event("r1", bad)
    assert (failed.type, failed.reason) == ("Warning", "SnapshotFailed")
    assert "1 of 2 shard(s) failed" in failed.message and "ERR no store" in failed.message
    assert "Not retried" in failed.message


# --- asking the nodes ---------------------------------------------------------------------------------


def test_the_snapshot_is_asked_on_the_control_port_with_a_long_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sent: list[tuple[str, int, tuple[str, ...], float]] = []

    async def call(host: str, port: int, *args: str, timeout: float) -> Any:
        sent.append((host, port, args, timeout))
        return b"shard 0: snapshot at entry 12 verified"

    monkeypatch.setattr(probe, "call", call)
    assert asyncio.run(probe.snapshot("10.0.0.2")) == "shard 0: snapshot at entry 12 verified"
    assert sent == [("10.0.0.2", constants.ADMIN_PORT, ("ENGRAM.SNAPSHOT",), probe.SNAPSHOT_TIMEOUT)]
    assert probe.SNAPSHOT_TIMEOUT >= 300


def test_every_shard_answers_success_or_failure_and_nothing_escapes(monkeypatch: pytest.MonkeyPatch) -> None:
    async def snapshot(host: str) -> str:
        if host == "10.0.0.1":
            return "shard 0: snapshot at entry 5 verified"
        if host == "10.0.0.2":
            raise PeerRefused(
                "ERR demo-1-1 is primary: snapshots are taken by replicas, never by the primary"
            )
        if host == "10.0.0.3":
            raise PeerUnreachable("10.0.0.3:16379 does not answer: TimeoutError")
        raise RuntimeError("boom")

    monkeypatch.setattr(probe, "snapshot", snapshot)
    targets = [
        SnapshotTarget(0, "demo-0-1"),
        SnapshotTarget(1, "demo-1-1"),
        SnapshotTarget(2, "demo-2-1"),
        SnapshotTarget(3, "demo-3-1"),
        SnapshotTarget(4, problem="shard 4 has no replica"),
    ]
    ips = {"demo-0-1": "10.0.0.1", "demo-1-1": "10.0.0.2", "demo-2-1": "10.0.0.3", "demo-3-1": "10.0.0.4"}
    results = asyncio.run(probe.take_snapshots(targets, ips))
    assert [(r.shard, r.pod, r.succeeded) for r in results] == [
        (0, "demo-0-1", True),
        (1, "demo-1-1", False),
        (2, "demo-2-1", False),
        (3, "demo-3-1", False),
        (4, "", False),
    ]
    assert results[0].message == "shard 0: snapshot at entry 5 verified"
    assert "never by the primary" in results[1].message and "demo-1-1" in results[1].message
    assert "no answer within" in results[2].message and "may still finish" in results[2].message
    assert "boom" in results[3].message
    assert results[4].message == "shard 4 has no replica"


# --- status -------------------------------------------------------------------------------------------


def test_engram_status_carries_the_newest_snapshot_or_says_there_is_none() -> None:
    base = [b"role", b"replica", b"applied_seq", b"41"]
    with_one = parse_engine_status([*base, b"snapshot_seq", b"30", b"snapshot_age", b"75"])
    assert (with_one.snapshot_seq, with_one.snapshot_age) == (30, 75)
    none_yet = parse_engine_status([*base, b"snapshot_seq", b"", b"snapshot_age", b""])
    assert (none_yet.snapshot_seq, none_yet.snapshot_age) == (0, None)
    older_node = parse_engine_status(base)
    assert (older_node.snapshot_seq, older_node.snapshot_age) == (0, None)


def with_snapshots(seen: Any, by_pod: dict[str, tuple[int, int | None]]) -> Any:
    statuses = dict(seen.statuses)
    for name, (seq, age) in by_pod.items():
        statuses[name] = dataclasses.replace(statuses[name], snapshot_seq=seq, snapshot_age=age)
    return dataclasses.replace(seen, statuses=statuses)


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_each_shard_shows_its_newest_snapshot_and_the_cluster_since_when_all_have_one() -> None:
    cluster = spec(shards=2, replicasPerShard=1)
    seen = with_snapshots(
        running(cluster),
        # Shard 0's replica read a newer snapshot than its primary did; shard 1's is older.
        {"demo-0-0": (40, 900), "demo-0-1": (70, 30), "demo-1-0": (55, 600), "demo-1-1": (55, 600)},
    )
    status = build_status(cluster, seen, decide(cluster, seen), None, generation=1)
    assert schema_errors(status_schema(), status) == []
    shards = status["shards"]
    assert [(s["snapshotSeq"], s["snapshotAgeSeconds"]) for s in shards] == [(70, 30), (55, 600)]
    # The stalest shard's newest snapshot: 600 s before the observation.
    assert status["snapshots"]["allShardsSince"] == iso(NOW - 600)
    assert status["snapshots"]["lastRequest"] == "" and status["snapshots"]["results"] == []


def test_a_shard_without_a_snapshot_shows_entry_zero_and_no_age() -> None:
    cluster = spec(shards=2, replicasPerShard=1)
    seen = with_snapshots(running(cluster), {"demo-0-1": (70, 30)})
    status = build_status(cluster, seen, decide(cluster, seen), None, generation=1)
    assert schema_errors(status_schema(), status) == []
    assert status["shards"][1]["snapshotSeq"] == 0 and "snapshotAgeSeconds" not in status["shards"][1]
    assert "allShardsSince" not in status["snapshots"]


def test_since_when_every_shard_has_one_is_kept_while_a_shard_cannot_say() -> None:
    cluster = spec(shards=1, replicasPerShard=1)
    previous = {"snapshots": {"allShardsSince": "2025-06-01T12:00:00Z", "lastRequest": "r1"}}
    silent = dataclasses.replace(running(cluster), statuses={})
    status = build_status(cluster, silent, decide(cluster, silent), previous, generation=1)
    assert status["snapshots"]["allShardsSince"] == "2025-06-01T12:00:00Z"
    assert status["snapshots"]["lastRequest"] == "r1"
    assert status["shards"][0]["snapshotSeq"] == 0
    assert snapshots_status([{"snapshotSeq": 0}], {"lastRequest": ""}, None, NOW) == {"lastRequest": ""}


def test_a_finished_request_is_recorded_with_every_shards_answer() -> None:
    results = [
        SnapshotResult(1, "demo-1-1", False, "shard 1 on demo-1-1: refused: ERR no store"),
        SnapshotResult(0, "demo-0-1", True, "shard 0: snapshot at entry 9 verified"),
    ]
    record = snapshot_request_done("r1", results, NOW)
    assert record == {
        "lastRequest": "r1",
        "inProgress": "",
        "completedAt": iso(NOW),
        "results": [
            {
                "shard": 0,
                "pod": "demo-0-1",
                "succeeded": True,
                "message": "shard 0: snapshot at entry 9 verified",
            },
            {
                "shard": 1,
                "pod": "demo-1-1",
                "succeeded": False,
                "message": "shard 1 on demo-1-1: refused: ERR no store",
            },
        ],
    }
    cluster = spec(shards=2, replicasPerShard=1)
    seen = running(cluster)
    status = build_status(cluster, seen, decide(cluster, seen), None, 1, snapshot_requests=record)
    assert schema_errors(status_schema(), status) == []
    assert status["snapshots"]["results"] == record["results"]


# --- failed scheduled snapshots (ENGRAM.STATUS snapshot_failures, snapshot_error) ----------------------


def failing(seen: Any, by_pod: dict[str, tuple[int, str]]) -> Any:
    statuses = dict(seen.statuses)
    for name, (count, error) in by_pod.items():
        statuses[name] = dataclasses.replace(statuses[name], snapshot_failures=count, snapshot_error=error)
    return dataclasses.replace(seen, statuses=statuses)


def test_engram_status_carries_failed_attempts_in_a_row_and_the_last_reason() -> None:
    base = [b"role", b"replica"]
    said = parse_engine_status([*base, b"snapshot_failures", b"3", b"snapshot_error", b"digest differs"])
    assert (said.snapshot_failures, said.snapshot_error) == (3, "digest differs")
    # A node older than these fields reports nothing failing.
    older = parse_engine_status(base)
    assert (older.snapshot_failures, older.snapshot_error) == (0, "")


def test_a_shard_shows_the_failures_of_the_node_reporting_the_most_and_fits_the_crd() -> None:
    cluster, seen = three_replicas()
    seen = failing(seen, {"demo-0-1": (1, "first"), "demo-0-2": (4, "rehearsal digest differs")})
    plan = decide(cluster, seen)
    status = build_status(cluster, seen, plan, None, generation=1)
    zero, one = status["shards"]
    assert (zero["snapshotFailures"], zero["snapshotErrorPod"], zero["snapshotError"]) == (
        4,
        "demo-0-2",
        "rehearsal digest differs",
    )
    assert one["snapshotFailures"] == 0 and "snapshotError" not in one and "snapshotErrorPod" not in one
    assert schema_errors(status_schema(), status) == []
    healthy = next(c for c in status["conditions"] if c["type"] == "SnapshotsHealthy")
    assert (healthy["status"], healthy["reason"]) == ("False", "SnapshotFailing")
    assert healthy["message"].startswith(
        "shard 0: 4 failed attempt(s) in a row on demo-0-2: rehearsal digest differs."
    )


def test_snapshots_are_healthy_while_no_node_reports_a_failure() -> None:
    cluster, seen = three_replicas()
    status = build_status(cluster, seen, decide(cluster, seen), None, generation=1)
    healthy = next(c for c in status["conditions"] if c["type"] == "SnapshotsHealthy")
    assert (healthy["status"], healthy["reason"]) == ("True", "NoFailures")
    assert [s["snapshotFailures"] for s in status["shards"]] == [0, 0]


def test_a_warning_names_shard_node_and_reason_each_time_a_nodes_count_rises() -> None:
    _, seen = three_replicas()
    now = failing(seen, {"demo-1-1": (2, "snapshot of shard 1 failed: digest differs")})
    [event] = snapshot_failure_events(now, {"demo-1-1": 1})
    assert (event.type, event.reason, event.standing) == ("Warning", "SnapshotFailed", False)
    assert event.message.startswith(
        "shard 1: snapshot on demo-1-1 failed (2 attempts in a row): snapshot of shard 1 failed: "
        "digest differs"
    )
    # Same count as before: nothing new. Lower but not 0 (a success, then a new failure): news.
    assert snapshot_failure_events(now, {"demo-1-1": 2}) == []
    assert len(snapshot_failure_events(failing(seen, {"demo-1-1": (1, "x")}), {"demo-1-1": 5})) == 1
    assert len(snapshot_failure_events(failing(seen, {"demo-1-1": (1, "x")}), {})) == 1
    assert snapshot_failure_events(seen, {"demo-1-1": 5}) == []


def test_counts_are_remembered_across_a_node_that_did_not_answer_and_forgotten_for_gone_pods() -> None:
    _, seen = three_replicas()
    now = failing(seen, {"demo-0-1": (2, "x")})
    assert snapshot_failure_counts(now, {}) == {"demo-0-1": 2}
    silent = replace_status(now, "demo-0-1", None)
    assert snapshot_failure_counts(silent, {"demo-0-1": 2, "demo-9-9": 7}) == {"demo-0-1": 2}
    # Answering 0 (a success) forgets it, so the next failure is announced.
    assert snapshot_failure_counts(seen, {"demo-0-1": 2}) == {}


def test_an_operator_restart_remembers_the_counts_its_status_shows() -> None:
    status = {
        "shards": [
            {"id": 0, "snapshotFailures": 3, "snapshotErrorPod": "demo-0-1", "snapshotError": "x"},
            {"id": 1, "snapshotFailures": 0},
        ]
    }
    assert remembered_snapshot_failures(status) == {"demo-0-1": 3}
    assert remembered_snapshot_failures(None) == {}
