"""Cluster identity and the provisioning Job as the operator observes them (pure parsing, no API)."""

from __future__ import annotations

import uuid

from cluster_state import spec

from engram_operator import builders, identity
from engram_operator.observe import PodInfo, job_from_api, pod_from_api

UID = "0b6a3f9e-1d2c-4e5f-8a7b-9c0d1e2f3a4b"


def pod(name: str, cluster_id: str) -> PodInfo:
    return PodInfo(name=name, shard=0, index=0, zone="zone-a", cluster_id=cluster_id)


def test_a_new_cluster_gets_its_uid_as_its_id_so_every_reconcile_decides_the_same() -> None:
    assert identity.cluster_id(None, [], UID) == uuid.UUID(UID).hex
    assert identity.cluster_id({}, [], UID) == identity.cluster_id({"phase": "Reconciling"}, [], UID)


def test_a_recorded_id_is_never_replaced() -> None:
    recorded = {"clusterId": "a" * 32}
    assert identity.cluster_id(recorded, [pod("demo-0-0", "b" * 32)], UID) == "a" * 32


def test_the_id_is_taken_from_existing_engine_pods_when_status_has_none() -> None:
    pods = [pod("demo-0-0", "b" * 32), pod("demo-0-1", "b" * 32), pod("demo-0-2", "")]
    assert identity.cluster_id({}, pods, UID) == "b" * 32


def test_pods_made_before_clusters_had_an_id_do_not_count() -> None:
    assert identity.recorded_cluster_id({}, [pod("demo-0-0", "")]) == ""
    assert identity.cluster_id({}, [pod("demo-0-0", "")], UID) == uuid.UUID(UID).hex


def test_without_a_uid_a_random_id_is_made() -> None:
    made = identity.new_cluster_id("")
    assert len(made) == 32 and made != identity.new_cluster_id("")


def test_engine_pod_cluster_id_is_read_from_its_node_config_annotation() -> None:
    obj = builders.build_engine_pod(spec(), name="demo-0-0", shard=0, index=0, zone="zone-a", cluster_id="c1")
    info = pod_from_api(obj)
    assert info is not None and info.cluster_id == "c1"
    obj["metadata"]["annotations"]["engram.io/node-config"] = "not json"
    info = pod_from_api(obj)
    assert info is not None and info.cluster_id == ""


def api_job(status: dict) -> dict:
    job = builders.build_provision_job(spec(), "c1")
    job["metadata"]["uid"] = "job-1"
    job["status"] = status
    return job


def test_job_success_and_identity_are_read_from_the_job() -> None:
    info = job_from_api(api_job({"succeeded": 1}))
    assert info.succeeded and not info.failed
    assert (info.name, info.cluster_id, info.owner_uid) == ("demo-provision", "c1", "uid-1")


def test_a_job_that_gave_up_says_why() -> None:
    failed = {"type": "Failed", "status": "True", "reason": "DeadlineExceeded", "message": "too long"}
    info = job_from_api(api_job({"conditions": [failed]}))
    assert info.failed and not info.succeeded and info.error == "DeadlineExceeded: too long"


def test_a_running_job_shows_its_last_failed_attempt_from_its_pod() -> None:
    attempt = {
        "metadata": {"ownerReferences": [{"uid": "job-1"}]},
        "status": {
            "containerStatuses": [
                {
                    "state": {"running": {}},
                    "lastState": {
                        "terminated": {
                            "exitCode": 1,
                            "finishedAt": "2026-01-01T00:00:00Z",
                            "message": "engram provision: error: demo is held by cluster id ffff\n",
                        }
                    },
                }
            ]
        },
    }
    other_job = {"metadata": {"ownerReferences": [{"uid": "job-0"}]}, "status": attempt["status"]}
    info = job_from_api(api_job({"active": 1}), [attempt])
    assert not info.failed and info.error == "engram provision: error: demo is held by cluster id ffff"
    assert job_from_api(api_job({"active": 1}), [other_job]).error == ""
