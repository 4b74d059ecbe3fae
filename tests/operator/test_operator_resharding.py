"""Online resharding (issue 16): a changed spec.shards runs a reshard Job, adds the new shards' pods,
removes drained shards' pods only once the engine says so, and shows progress in the status."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from cluster_state import CLUSTER_ID, NOW, nodes, provisioned, running, spec, statuses
from k8s_offline import crd_schema, memorycluster_crd, schema_errors, validate_manifest

from engram_operator import builders, constants, labels
from engram_operator.builders.provision import build_provision_job
from engram_operator.builders.reshard import ACTIVE_DEADLINE_SECONDS, BACKOFF_LIMIT, build_reshard_job
from engram_operator.decisions import decide
from engram_operator.decisions.resharding import eta_seconds, latest_progress, slot_map_shards
from engram_operator.observe import EngineStatus, JobInfo, Observed, job_from_api, parse_engine_status
from engram_operator.reshard_progress import ReshardProgress, parse_reshard
from engram_operator.status import build_status

ONE = spec(shards=1, replicasPerShard=1)
THREE = spec(shards=3, replicasPerShard=1)
TWO = spec(shards=2, replicasPerShard=1)
SECRET_TLS = {"secretName": "demo-certs"}


def reshard_job(target: int, from_shards: int, **state: Any) -> JobInfo:
    """A reshard Job of the demo cluster as observed; ``state`` sets succeeded, failed, error, ..."""
    return JobInfo(
        name=labels.reshard_job_name("demo", target),
        cluster_id=CLUSTER_ID,
        owner_uid="uid-1",
        shards=target,
        from_shards=from_shards,
        created=NOW - 600,
        **state,
    )


def report(phase: str, from_shards: int, to_shards: int, **fields: Any) -> ReshardProgress:
    values: dict[str, Any] = {"id": "plan-1", "started": NOW - 500, "updated": NOW - 5, **fields}
    return ReshardProgress(from_shards=from_shards, to_shards=to_shards, phase=phase, **values)


def reporting(
    seen: Observed, progress: ReshardProgress | None, slots: dict[str, str] | None = None
) -> Observed:
    """Every node reports ``progress``; ``slots`` gives some nodes' slot ranges, by pod name."""
    answers = {
        name: dataclasses.replace(s, reshard=progress, slots=(slots or {}).get(name, ""))
        for name, s in seen.statuses.items()
    }
    return dataclasses.replace(seen, statuses=answers)


def with_jobs(seen: Observed, *jobs: JobInfo, record: dict[str, Any] | None = None) -> Observed:
    return dataclasses.replace(seen, reshard_jobs=list(jobs), resharding_record=record or {})


def created_pods(plan: Any) -> list[dict[str, Any]]:
    return [o for o in plan.create if o["kind"] == "Pod"]


def created_jobs(plan: Any) -> list[dict[str, Any]]:
    return [o for o in plan.create if o["kind"] == "Job"]


def placed(pod: dict[str, Any]) -> tuple[str, str, bool]:
    """A pod's name, zone and whether the zone planner made it its shard's first primary."""
    config = json.loads(pod["metadata"]["annotations"][labels.NODE_CONFIG])
    return pod["metadata"]["name"], pod["metadata"]["labels"][labels.ZONE], config["preferred_primary"]


def condition(plan: Any) -> tuple[str, str]:
    return plan.resharding_condition.status, plan.resharding_condition.reason


# --- the reshard Job ----------------------------------------------------------------------------------


def test_the_reshard_job_runs_engram_reshard_to_spec_shards_against_every_journal_server() -> None:
    job = build_reshard_job(THREE, CLUSTER_ID, 1)
    validate_manifest(job)
    meta = job["metadata"]
    assert meta["name"] == "demo-reshard-3"
    assert meta["labels"][labels.COMPONENT] == labels.RESHARD and meta["labels"][labels.CLUSTER] == "demo"
    assert meta["annotations"] == {labels.CLUSTER_ID: CLUSTER_ID, labels.SHARDS: "3", labels.FROM_SHARDS: "1"}
    assert meta["ownerReferences"][0]["uid"] == "uid-1" and meta["ownerReferences"][0]["controller"]
    [container] = job["spec"]["template"]["spec"]["containers"]
    assert container["image"] == THREE.engine.resolved_image
    command = container["command"]
    assert command[:2] == ["engram", "reshard"]
    flags = dict(zip(command[2::2], command[3::2], strict=True))
    urls = ",".join(f"nats://demo-journal-{i}-0.demo-journal.db.svc.cluster.local:4222" for i in range(3))
    assert flags == {"--journal": urls, "--cluster": "demo", "--shards": "3"}


def test_the_reshard_job_has_hours_and_many_attempts_and_stops_at_once_on_bad_arguments() -> None:
    """Moving data takes as long as the data set is large, and a rerun continues the same plan."""
    job_spec = build_reshard_job(TWO, CLUSTER_ID, 3)["spec"]
    assert job_spec["activeDeadlineSeconds"] >= 6 * 3600 and ACTIVE_DEADLINE_SECONDS >= 6 * 3600
    assert job_spec["backoffLimit"] == BACKOFF_LIMIT >= 10
    [fail, evicted] = job_spec["podFailurePolicy"]["rules"]
    assert fail == {
        "action": "FailJob",
        "onExitCodes": {"containerName": "reshard", "operator": "In", "values": [2]},
    }
    assert evicted["action"] == "Ignore"
    pod = job_spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False and pod["securityContext"]["runAsNonRoot"] is True
    [container] = pod["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["resources"]["limits"]["memory"] and container["terminationMessagePolicy"]


def test_the_reshard_job_reaches_a_locked_journal_exactly_as_provisioning_does() -> None:
    cluster = spec(shards=2, tls=SECRET_TLS)
    reshard = build_reshard_job(cluster, CLUSTER_ID, 1)
    provision = build_provision_job(cluster, CLUSTER_ID)
    validate_manifest(reshard)

    def credentials(job: dict[str, Any]) -> dict[str, str]:
        command = job["spec"]["template"]["spec"]["containers"][0]["command"]
        flags = ("--journal-user", "--journal-password-file", "--journal-ca")
        return {f: command[command.index(f) + 1] for f in flags}

    def journal_volumes(job: dict[str, Any]) -> tuple[list[Any], list[Any]]:
        pod = job["spec"]["template"]["spec"]
        return (
            [v for v in pod["volumes"] if v["name"].startswith("journal")],
            [m for m in pod["containers"][0]["volumeMounts"] if m["name"].startswith("journal")],
        )

    assert credentials(reshard) == credentials(provision)
    # The password stays in its mounted file: the command names the file only.
    assert credentials(reshard)["--journal-password-file"].startswith(constants.JOURNAL_AUTH_DIR)
    volumes, mounts = journal_volumes(reshard)
    assert (volumes, mounts) == journal_volumes(provision) and len(volumes) == len(mounts) == 2


def test_the_reshard_job_of_a_tls_cluster_speaks_tls_to_the_nodes_with_the_clients_ca_only() -> None:
    job = build_reshard_job(spec(shards=2, tls=SECRET_TLS), CLUSTER_ID, 1)
    validate_manifest(job)
    pod = job["spec"]["template"]["spec"]
    [container] = pod["containers"]
    command = container["command"]
    ca = f"{constants.TLS_DIR}/{constants.TLS_CA}"
    assert command[command.index("--tls-ca") + 1] == ca
    [mount] = [m for m in container["volumeMounts"] if m["mountPath"] == constants.TLS_DIR]
    assert mount["readOnly"] is True
    [volume] = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    # The CA of the clients' certificate, without the Secret's private key.
    assert volume["secret"]["secretName"] == "demo-certs"
    assert volume["secret"]["items"] == [{"key": constants.TLS_CA, "path": constants.TLS_CA}]


def test_the_reshard_job_of_a_plain_cluster_mounts_no_certificate() -> None:
    job = build_reshard_job(THREE, CLUSTER_ID, 1)
    [container] = job["spec"]["template"]["spec"]["containers"]
    assert "--tls-ca" not in container["command"]
    assert [m["name"] for m in container["volumeMounts"]] == ["tmp"]


def test_the_provisioning_job_records_the_shard_count_it_provisions() -> None:
    job = build_provision_job(THREE, CLUSTER_ID)
    assert job["metadata"]["annotations"][labels.SHARDS] == "3"
    assert job_from_api(job).shards == 3
    # A Job made before the annotation existed: its command says.
    del job["metadata"]["annotations"][labels.SHARDS]
    assert job_from_api(job).shards == 3


def test_a_reshard_job_is_read_with_its_counts_and_only_exit_2_is_permanent() -> None:
    job = build_reshard_job(TWO, CLUSTER_ID, 3)
    job["metadata"]["uid"] = "job-uid"
    job["status"] = {
        "failed": 31,
        "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}],
    }
    pod = {
        "metadata": {"ownerReferences": [{"uid": "job-uid"}]},
        "status": {
            "containerStatuses": [{"state": {"terminated": {"exitCode": 3, "message": "journal away"}}}]
        },
    }
    info = job_from_api(job, [pod], permanent_codes=[2])
    assert (info.shards, info.from_shards, info.failed, info.permanent) == (2, 3, True, False)
    assert "BackoffLimitExceeded" in info.error and "journal away" in info.error


def test_changing_spec_shards_rolls_no_pod() -> None:
    """Nodes serve the slot map in the journal: restarting all of them for a reshard would only hurt."""
    assert builders.pod_spec_hash(THREE) == builders.pod_spec_hash(ONE)


# --- the engine's report --------------------------------------------------------------------------------


def test_the_engines_reshard_report_is_read_from_engram_status() -> None:
    text = json.dumps(
        {
            "id": "p7",
            "from_shards": 3,
            "to_shards": 5,
            "phase": "moving",
            "slots_total": 6553,
            "slots_moved": 1000,
            "keys_moved": 12345,
            "bytes_moved": 9_000_000_000,
            "started": 1_750_000_000.5,
            "updated": 1_750_000_100.0,
            "error": "",
        }
    )
    status = parse_engine_status([b"role", b"primary", b"slots", b"0-5460", b"reshard", text.encode()])
    assert status.slots == "0-5460"
    assert status.reshard == ReshardProgress(
        "p7", 3, 5, "moving", 6553, 1000, 12345, 9_000_000_000, 1_750_000_000.5, 1_750_000_100.0, ""
    )
    assert parse_engine_status([b"role", b"replica", b"reshard", b""]).reshard is None
    assert parse_engine_status([b"role", b"replica"]).reshard is None


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[1, 2]",
        '"moving"',
        '{"from_shards": 1, "to_shards": 2}',  # no phase
        '{"phase": "teleporting", "from_shards": 1, "to_shards": 2}',
        '{"phase": "moving", "from_shards": 1, "to_shards": 0}',
        '{"phase": "moving", "from_shards": "one", "to_shards": 2}',
        '{"phase": "moving", "from_shards": 1, "to_shards": 2, "slots_moved": [1]}',
        '{"phase": "moving", "from_shards": 1, "to_shards": 2, "started": true}',
        '{"phase": "moving", "from_shards": 1, "to_shards": 2, "keys_moved": Infinity}',
    ],
)
def test_a_malformed_reshard_report_is_ignored(text: str) -> None:
    assert parse_reshard(text) is None
    assert parse_engine_status([b"role", b"primary", b"reshard", text.encode()]).role == "primary"


def test_the_freshest_report_wins_over_a_lagging_nodes() -> None:
    seen = running(ONE)
    old = report("done", 2, 1, updated=NOW - 900, started=NOW - 1000)
    new = report("adding", 1, 3)
    first, second = seen.pods
    answers = {
        first.name: dataclasses.replace(seen.statuses[first.name], reshard=new),
        second.name: dataclasses.replace(seen.statuses[second.name], reshard=old),
    }
    assert latest_progress(dataclasses.replace(seen, statuses=answers)) == new


def test_eta_comes_from_the_rate_slots_moved_at_and_is_absent_when_unknown() -> None:
    assert (
        eta_seconds(report("moving", 1, 3, slots_total=1000, slots_moved=250, started=NOW - 100, updated=NOW))
        == 300
    )
    assert eta_seconds(report("moving", 1, 3, slots_total=1000, slots_moved=0)) is None
    assert eta_seconds(report("adding", 1, 3, slots_total=1000, slots_moved=0)) is None
    assert eta_seconds(report("moving", 1, 3, slots_total=0)) is None
    assert eta_seconds(None) is None


# --- growing ----------------------------------------------------------------------------------------------


def test_a_cluster_that_never_changed_spec_shards_runs_no_reshard_job() -> None:
    plan = decide(THREE, running(THREE))
    assert created_jobs(plan) == [] and not plan.resharding_active
    assert condition(plan) == ("False", "NotResharded")


def test_growing_creates_the_reshard_job_first_and_no_pod_yet() -> None:
    seen = running(ONE)
    plan = decide(THREE, seen)
    [job] = created_jobs(plan)
    assert job["metadata"]["name"] == "demo-reshard-3"
    assert job["metadata"]["annotations"][labels.FROM_SHARDS] == "1"
    assert created_pods(plan) == [] and plan.delete_pods == []
    assert plan.resharding_active and condition(plan) == ("True", "Pending")
    [event] = [e for e in plan.events if e.reason == "Resharding"]
    assert event.type == "Normal" and "from 1 to 3 shards" in event.message
    assert plan.resharding is not None and plan.resharding["phase"] == "pending"


def test_once_the_job_exists_the_new_shards_get_their_pods_placed_as_any_shards() -> None:
    seen = with_jobs(running(ONE), reshard_job(3, 1))
    plan = decide(THREE, seen)
    assert created_jobs(plan) == []
    pods = created_pods(plan)
    assert sorted(p["metadata"]["name"] for p in pods) == ["demo-1-0", "demo-1-1", "demo-2-0", "demo-2-1"]
    # The same placement a 3-shard cluster gets from scratch.
    fresh = {placed(p)[0]: placed(p) for p in created_pods(decide(THREE, provisioned(THREE)))}
    for pod in pods:
        assert placed(pod) == fresh[pod["metadata"]["name"]]
        assert json.loads(pod["metadata"]["annotations"][labels.NODE_CONFIG])["cluster_id"] == CLUSTER_ID
    assert plan.resharding_active


def test_progress_reaches_the_status_with_an_eta_and_a_moving_condition() -> None:
    seen = with_jobs(running(THREE), reshard_job(3, 1))
    moving = report(
        "moving",
        1,
        3,
        slots_total=10923,
        slots_moved=3641,
        keys_moved=500,
        bytes_moved=64000,
        started=NOW - 200,
        updated=NOW - 20,
    )
    seen = reporting(seen, moving)
    plan = decide(THREE, seen)
    assert plan.resharding == {
        "phase": "moving",
        "fromShards": 1,
        "toShards": 3,
        "slotsTotal": 10923,
        "slotsMoved": 3641,
        "keysMoved": 500,
        "bytesMoved": 64000,
        "startedAt": "2025-06-15T15:03:20Z",
        "eta": 360,
    }
    assert condition(plan) == ("True", "Moving") and "3641/10923 slots" in plan.resharding_condition.message
    status = build_status(THREE, seen, plan, None, generation=4)
    assert schema_errors(crd_schema(memorycluster_crd())["properties"]["status"], status) == []
    assert status["resharding"] == plan.resharding
    conds = {c["type"]: c for c in status["conditions"]}
    assert (conds["Resharding"]["status"], conds["Resharding"]["reason"]) == ("True", "Moving")
    assert (conds["Progressing"]["status"], conds["Progressing"]["reason"]) == ("True", "Resharding")


def test_the_jobs_success_ends_the_reshard_with_one_event() -> None:
    before = {
        "phase": "moving",
        "fromShards": 1,
        "toShards": 3,
        "slotsTotal": 10923,
        "slotsMoved": 9000,
        "keysMoved": 10,
        "bytesMoved": 10,
        "startedAt": "2025-06-15T15:00:00Z",
    }
    seen = with_jobs(running(THREE), reshard_job(3, 1, succeeded=True), record=before)
    seen = reporting(seen, report("done", 1, 3, slots_total=10923, slots_moved=10923, keys_moved=77))
    plan = decide(THREE, seen)
    assert not plan.resharding_active and created_jobs(plan) == [] and plan.delete_pods == []
    assert condition(plan) == ("False", "Done")
    assert plan.resharding is not None and plan.resharding["phase"] == "done" and "eta" not in plan.resharding
    [event] = [e for e in plan.events if e.reason == "Resharded"]
    assert event.type == "Normal" and "77 keys" in event.message
    # The next reconcile reads the record it wrote: no second event.
    again = decide(THREE, dataclasses.replace(seen, resharding_record=plan.resharding))
    assert [e for e in again.events if e.reason == "Resharded"] == []


def test_a_settled_cluster_after_a_reshard_whose_job_is_gone_needs_nothing() -> None:
    record = {"phase": "done", "fromShards": 1, "toShards": 3}
    seen = reporting(with_jobs(running(THREE), record=record), report("done", 1, 3))
    plan = decide(THREE, seen)
    assert not plan.changes and not plan.resharding_active and condition(plan) == ("False", "Done")


# --- shrinking --------------------------------------------------------------------------------------------


def shrinking(
    progress: ReshardProgress | None, slots: dict[str, str] | None = None, **job_state: Any
) -> Observed:
    """A 3-shard cluster asked for 2: its reshard Job exists, its nodes report ``progress`` (and
    ``slots``, by pod name)."""
    seen = with_jobs(running(THREE), reshard_job(2, 3, **job_state))
    return reporting(seen, progress, slots)


def test_shrinking_runs_the_job_first_and_keeps_every_pod() -> None:
    seen = reporting(running(THREE), report("done", 1, 3))
    plan = decide(TWO, seen)
    [job] = created_jobs(plan)
    assert job["metadata"]["name"] == "demo-reshard-2"
    assert job["metadata"]["annotations"][labels.FROM_SHARDS] == "3"
    # Shard 2's primary is neither handed over nor deleted: its slots have not moved yet.
    assert plan.delete_pods == [] and plan.switchovers == [] and created_pods(plan) == []
    [event] = [e for e in plan.events if e.reason == "Resharding"]
    assert "shards 2..2 keep their pods" in event.message


@pytest.mark.parametrize("phase", [None, "adding", "waiting", "moving", "failed"])
def test_while_slots_move_away_the_shrinking_shards_keep_their_pods(phase: str | None) -> None:
    seen = shrinking(report(phase, 3, 2) if phase else None)
    plan = decide(TWO, seen)
    assert plan.delete_pods == [] and plan.switchovers == [] and created_jobs(plan) == []
    assert plan.resharding_active
    status = build_status(TWO, seen, plan, None, generation=2)
    assert [s["id"] for s in status["shards"]] == [0, 1, 2]


def test_a_lost_pod_of_a_shrinking_shard_is_replaced_until_it_is_drained() -> None:
    seen = shrinking(report("moving", 3, 2))
    gone = [p for p in seen.pods if p.name != "demo-2-1"]
    plan = decide(TWO, dataclasses.replace(seen, pods=gone, statuses=statuses(gone)))
    assert [p["metadata"]["name"] for p in created_pods(plan)] == ["demo-2-1"]


@pytest.mark.parametrize("phase", ["drained", "removing", "done"])
def test_once_drained_the_pods_of_the_removed_shards_go_primary_and_all(phase: str) -> None:
    plan = decide(TWO, shrinking(report(phase, 3, 2)))
    assert sorted(plan.delete_pods) == ["demo-2-0", "demo-2-1"]
    assert plan.switchovers == [] and created_pods(plan) == []
    [event] = [e for e in plan.events if e.reason == "RemovingDrainedShards"]
    assert "demo-2-0" in event.message


def test_a_node_still_reporting_slots_keeps_its_shards_pods() -> None:
    seen = shrinking(report("drained", 3, 2), {"demo-2-0": "10923-16383"})
    plan = decide(TWO, seen)
    assert plan.delete_pods == []
    assert any("shard(s) 2 still report slots" in w for w in plan.waiting)


def test_the_jobs_success_removes_what_is_left_of_the_removed_shards() -> None:
    plan = decide(TWO, shrinking(None, succeeded=True))
    assert sorted(plan.delete_pods) == ["demo-2-0", "demo-2-1"] and condition(plan) == ("False", "Done")


def test_a_report_of_another_plan_never_drains_a_shard() -> None:
    """An older plan's report (to another count) says nothing about this one."""
    plan = decide(TWO, shrinking(report("done", 1, 3)))
    assert plan.delete_pods == [] and condition(plan) == ("True", "Pending")


# --- failures, one at a time, and what waits -------------------------------------------------------


def test_a_job_that_failed_is_reported_once_and_not_retried() -> None:
    seen = shrinking(
        report("failed", 3, 2, error="target shard 1 unreachable"),
        failed=True,
        permanent=True,
        error="PodFailurePolicy: exit 2",
    )
    plan = decide(TWO, seen)
    assert created_jobs(plan) == [] and plan.delete_jobs == [] and plan.delete_pods == []
    assert not plan.resharding_active
    status, reason = condition(plan)
    assert (status, reason) == ("False", "Failed")
    message = plan.resharding_condition.message
    assert "exit 2" in message and "kubectl delete job demo-reshard-2" in message
    [event] = [e for e in plan.events if e.reason == "ReshardingFailed"]
    assert event.type == "Warning"
    assert plan.resharding is not None and plan.resharding["phase"] == "failed"
    again = decide(TWO, dataclasses.replace(seen, resharding_record=plan.resharding))
    assert created_jobs(again) == [] and [e for e in again.events if e.reason == "ReshardingFailed"] == []


def test_a_new_spec_after_a_failure_replaces_the_failed_job() -> None:
    seen = shrinking(report("failed", 3, 2), failed=True, permanent=True)
    plan = decide(THREE, seen)
    [job] = created_jobs(plan)
    assert job["metadata"]["name"] == "demo-reshard-3" and plan.delete_jobs == ["demo-reshard-2"]
    assert plan.delete_pods == []


def test_an_attempt_that_failed_while_the_job_retries_is_shown_as_retrying() -> None:
    plan = decide(TWO, shrinking(report("failed", 3, 2, error="journal away"), error="exit 1"))
    assert condition(plan) == ("True", "Retrying") and "journal away" in plan.resharding_condition.message
    assert plan.resharding_active and created_jobs(plan) == []


def test_one_reshard_at_a_time_a_new_count_waits_for_the_running_job() -> None:
    seen = reporting(with_jobs(running(THREE), reshard_job(3, 1)), report("moving", 1, 3))
    plan = decide(TWO, seen)
    assert created_jobs(plan) == [] and plan.delete_pods == [] and plan.delete_jobs == []
    assert any("demo-reshard-3" in w and "spec.shards 2 follows" in w for w in plan.waiting)
    assert plan.resharding_active and plan.resharding is not None and plan.resharding["toShards"] == 3


def test_when_it_finishes_the_next_count_gets_its_job_and_the_old_one_goes() -> None:
    seen = reporting(with_jobs(running(THREE), reshard_job(3, 1, succeeded=True)), report("done", 1, 3))
    plan = decide(TWO, seen)
    [job] = created_jobs(plan)
    assert job["metadata"]["name"] == "demo-reshard-2" and plan.delete_jobs == ["demo-reshard-3"]


def test_a_job_of_another_cluster_id_is_deleted() -> None:
    stale = dataclasses.replace(reshard_job(2, 3), cluster_id="f" * 32)
    plan = decide(THREE, with_jobs(running(THREE), stale))
    assert plan.delete_jobs == ["demo-reshard-2"] and created_jobs(plan) == []
    assert [e.type for e in plan.events if e.reason == "StaleReshardJob"] == ["Warning"]


def test_an_old_success_for_this_count_is_not_taken_for_the_new_reshard() -> None:
    """3 -> 2 done long ago, its Job never deleted; since then the engine ran 2 -> 3; now 2 again."""
    old = dataclasses.replace(reshard_job(2, 3, succeeded=True), created=NOW - 9000)
    seen = reporting(with_jobs(running(THREE), old), report("done", 2, 3, started=NOW - 5000))
    plan = decide(TWO, seen)
    assert plan.delete_pods == []
    assert plan.delete_jobs == ["demo-reshard-2"] and [j["metadata"]["name"] for j in created_jobs(plan)] == [
        "demo-reshard-2"
    ]


def test_rolling_updates_rebalancing_and_cordon_hand_overs_wait_for_the_reshard() -> None:
    newer = spec(shards=2, replicasPerShard=1, engine={"version": "0.2.0"})
    seen = shrinking(report("moving", 3, 2))
    plan = decide(newer, seen)
    assert plan.delete_pods == [] and plan.switchovers == [] and not plan.rolling
    assert "rolling update: waits until resharding finishes" in plan.waiting
    # Primaries bunched in one zone: no rebalancing switchover either.
    bunched = {
        p.name: EngineStatus("primary" if p.zone == "zone-a" else "replica", reshard=report("moving", 3, 2))
        for p in seen.pods
    }
    labelled = [dataclasses.replace(p, role_label=bunched[p.name].role) for p in seen.pods]
    assert decide(TWO, dataclasses.replace(seen, pods=labelled, statuses=bunched)).switchovers == []
    # A cordoned node under a primary: it stays primary until the reshard ends.
    cordoned = dataclasses.replace(seen, nodes=nodes(cordoned=("zone-a",)))
    assert decide(TWO, cordoned).switchovers == []
    # Without the reshard, the same cordon hands over.
    idle = dataclasses.replace(running(TWO), nodes=nodes(cordoned=("zone-a",)))
    assert decide(TWO, idle).switchovers


def test_nothing_is_resharded_before_provisioning_or_while_the_spec_cannot_be_met() -> None:
    seen = running(ONE)
    unprovisioned = dataclasses.replace(seen, provisioning=None)
    assert [j["metadata"]["name"] for j in created_jobs(decide(THREE, unprovisioned))] == ["demo-provision"]
    impossible = spec(shards=3, replicasPerShard=3, placement={"spreading": "Required"})
    plan = decide(impossible, seen)
    assert created_jobs(plan) == [] and condition(plan) == ("False", "Blocked")


def test_the_slot_maps_count_comes_from_the_engine_then_jobs_then_status_then_provisioning() -> None:
    seen = running(ONE)
    assert slot_map_shards(ONE, seen, []) == 1
    assert slot_map_shards(ONE, with_jobs(seen, record={"phase": "done", "toShards": 4}), []) == 4
    assert slot_map_shards(ONE, seen, [reshard_job(5, 4, succeeded=True)]) == 5
    assert slot_map_shards(ONE, seen, [reshard_job(5, 4)]) is None
    assert (
        slot_map_shards(ONE, reporting(seen, report("done", 5, 6)), [reshard_job(5, 4, succeeded=True)]) == 6
    )
    assert slot_map_shards(ONE, reporting(seen, report("moving", 5, 6)), []) is None


def test_an_unfinished_plan_whose_job_was_deleted_is_finished_before_a_new_count() -> None:
    """`engram reshard` refuses another count while a plan is unfinished: the operator resumes it."""
    seen = reporting(running(THREE), report("moving", 3, 2))
    plan = decide(THREE, seen)
    [job] = created_jobs(plan)
    assert job["metadata"]["name"] == "demo-reshard-2"
    command = job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[command.index("--shards") + 1] == "2"
    assert plan.delete_pods == [] and plan.resharding_active
    assert any("spec.shards 3 follows" in w for w in plan.waiting)
    # A finished Job of that name is deleted first, so that the new one can take the name.
    stale = dataclasses.replace(reshard_job(2, 3, failed=True), created=NOW - 9000)
    plan = decide(THREE, with_jobs(seen, stale))
    assert plan.delete_jobs == ["demo-reshard-2"] and created_jobs(plan) == []


def test_a_running_job_for_another_count_still_gets_its_drained_shards_removed() -> None:
    """It waits for their nodes to be gone; the new count's own Job comes after it."""
    seen = reporting(with_jobs(running(THREE), reshard_job(2, 3)), report("drained", 3, 2))
    plan = decide(spec(shards=4, replicasPerShard=1), seen)
    assert sorted(plan.delete_pods) == ["demo-2-0", "demo-2-1"]
    assert created_jobs(plan) == [] and created_pods(plan) == []


def test_a_job_being_deleted_keeps_every_pod_and_holds_everything_else_back() -> None:
    seen = shrinking(report("drained", 3, 2), deleting=True)
    plan = decide(TWO, seen)
    assert plan.delete_pods == [] and created_jobs(plan) == [] and plan.resharding_active
    assert any("demo-reshard-2 is being deleted" in w for w in plan.waiting)


def test_a_finished_plan_whose_job_is_gone_is_recorded_done_once() -> None:
    record = {"phase": "moving", "fromShards": 1, "toShards": 3, "slotsTotal": 9, "slotsMoved": 3}
    seen = reporting(
        with_jobs(running(THREE), record=record), report("done", 1, 3, slots_total=9, slots_moved=9)
    )
    plan = decide(THREE, seen)
    assert created_jobs(plan) == [] and condition(plan) == ("False", "Done")
    assert plan.resharding is not None and (plan.resharding["phase"], plan.resharding["slotsMoved"]) == (
        "done",
        9,
    )
    assert [e.reason for e in plan.events if e.reason == "Resharded"] == ["Resharded"]


def test_a_plan_that_failed_part_way_is_settled_by_a_job_for_spec_shards() -> None:
    """1 -> 3 failed after the new shards' pods started; spec.shards back to 1: a Job settles it, and
    the extra pods stay until it has."""
    seen = reporting(running(THREE), report("failed", 1, 3, error="no primary"))
    plan = decide(ONE, seen)
    [job] = created_jobs(plan)
    assert job["metadata"]["name"] == "demo-reshard-1" and plan.delete_pods == []
    [event] = [e for e in plan.events if e.reason == "Resharding"]
    assert "from 3 to 1 shards" in event.message


def test_waiting_for_provisioning_is_said_once_a_cluster_has_resharded() -> None:
    seen = dataclasses.replace(
        running(THREE), provisioning=None, resharding_record={"phase": "done", "toShards": 3}
    )
    assert condition(decide(THREE, seen)) == ("Unknown", "WaitingForProvisioning")


def test_a_tls_cluster_is_resharded_by_a_job_like_any_other() -> None:
    one, three = spec(shards=1, tls=SECRET_TLS), spec(shards=3, tls=SECRET_TLS)
    plan = decide(three, running(one))
    [job] = created_jobs(plan)
    validate_manifest(job)
    assert job["metadata"]["name"] == "demo-reshard-3"
    assert plan.resharding_active and condition(plan) == ("True", "Pending")
