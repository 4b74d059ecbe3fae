"""The reconcile glue and kopf wiring, with the Kubernetes API and the engine nodes faked."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import Any

import kopf
import pytest
from cluster_state import ZONES

from engram_operator import GROUP, PLURAL, VERSION, builders, kube, labels, probe, reconcile
from engram_operator.decisions import Event
from engram_operator.spec import ClusterSpec

UID = "0b6a3f9e-1d2c-4e5f-8a7b-9c0d1e2f3a4b"


def node(name: str, zone: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"topology.kubernetes.io/zone": zone}},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    }


class FakeApi:
    """Records what the reconcile asks of the API server."""

    def __init__(self) -> None:
        self.created: list[dict[str, Any]] = []
        self.deleted: list[str] = []
        self.journal_ready = 0
        self.engine_pods: list[dict[str, Any]] = []
        self.jobs: list[dict[str, Any]] = []

    async def list_nodes(self) -> list[dict[str, Any]]:
        return [node(f"n-{z}", z) for z in ZONES]

    async def list_engine_pods(self, namespace: str, cluster: str) -> list[dict[str, Any]]:
        return self.engine_pods

    async def list_pods(self, namespace: str, cluster: str, component: str) -> list[dict[str, Any]]:
        return []

    async def list_jobs(self, namespace: str, cluster: str) -> list[dict[str, Any]]:
        return self.jobs

    async def list_children(self, namespace: str, cluster: str) -> tuple[frozenset, int]:
        return frozenset(), self.journal_ready

    async def create(self, obj: dict[str, Any]) -> bool:
        self.created.append(obj)
        return True

    async def delete_pod(self, namespace: str, name: str) -> None:
        self.deleted.append(name)

    async def delete_job(self, namespace: str, name: str) -> None:
        self.deleted.append(name)


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> FakeApi:
    fake = FakeApi()
    names = ("list_nodes", "list_engine_pods", "list_pods", "list_jobs", "list_children", "create")
    for name in (*names, "delete_pod", "delete_job"):
        monkeypatch.setattr(kube, name, getattr(fake, name))

    async def no_statuses(pods: list) -> dict:
        return {}

    monkeypatch.setattr(probe, "all_statuses", no_statuses)
    return fake


def body(spec: dict[str, Any], status: dict[str, Any] | None = None, **meta: Any) -> dict[str, Any]:
    obj = {
        "apiVersion": "engram.io/v1alpha1",
        "kind": "MemoryCluster",
        "metadata": {"name": "demo", "namespace": "db", "uid": UID, "generation": 3, **meta},
        "spec": spec,
    }
    if status is not None:
        obj["status"] = status
    return obj


def run(obj: dict[str, Any]) -> tuple[Any, dict[str, Any], list[Event]]:
    status: dict[str, Any] = {}
    events: list[Event] = []
    plan = asyncio.run(reconcile.reconcile(obj, status, events.append, logging.getLogger("test")))
    return plan, status, events


def succeeded(job: dict[str, Any]) -> dict[str, Any]:
    """A Job as the API returns it once its pod exited 0."""
    done = json.loads(json.dumps(job))
    done["metadata"]["uid"] = "job-uid"
    done["status"] = {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}
    return done


def jobs_and_pods(api: FakeApi) -> list[dict[str, Any]]:
    """What a reconcile created besides the children the fake API never reports as existing."""
    return [o for o in api.created if o["kind"] in ("Job", "Pod")]


def conditions(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status["conditions"]}


def test_reconcile_creates_journal_then_the_provisioning_job_then_pods(api: FakeApi) -> None:
    spec = {"shards": 1, "replicasPerShard": 2}
    _, status, events = run(body(spec))
    kinds = {o["kind"] for o in api.created}
    assert "StatefulSet" in kinds and not kinds & {"Job", "Pod"}
    assert status["observedGeneration"] == 3 and status["phase"] == "Reconciling"
    assert set(conditions(status)) >= {"Ready", "Progressing", "Degraded", "JournalReady", "Provisioned"}
    assert conditions(status)["Provisioned"]["reason"] == "WaitingForJournal"

    api.created.clear()
    api.journal_ready = 3
    _, status, events = run(body(spec, status=status))
    [job] = jobs_and_pods(api)
    assert job["kind"] == "Job" and job["metadata"]["annotations"][labels.CLUSTER_ID] == status["clusterId"]
    assert [e.reason for e in events] == ["Provisioning"]

    api.created.clear()
    api.jobs = [succeeded(job)]
    _, status, events = run(body(spec, status=status))
    assert [o["kind"] for o in jobs_and_pods(api)] == ["Pod", "Pod", "Pod"]
    assert [e.reason for e in events].count("CreatingPod") == 3
    assert conditions(status)["Provisioned"]["status"] == "True"
    for pod in jobs_and_pods(api):
        config = json.loads(pod["metadata"]["annotations"][labels.NODE_CONFIG])
        assert config["cluster_id"] == status["clusterId"]


def test_cluster_id_is_decided_once_from_the_uid_and_then_kept_from_status(api: FakeApi) -> None:
    _, first, _ = run(body({}))
    assert first["clusterId"] == uuid.UUID(UID).hex
    # A reconcile from a stale body (status not yet seen) decides the very same id.
    _, stale, _ = run(body({}))
    assert stale["clusterId"] == first["clusterId"]
    # Once recorded, the status wins over everything, even a different uid.
    _, later, _ = run(body({}, uid=str(uuid.uuid4()), status={"clusterId": "c" * 32}))
    assert later["clusterId"] == "c" * 32


def test_cluster_id_is_recovered_from_engine_pods_when_status_has_none(api: FakeApi) -> None:
    cluster = ClusterSpec.from_body(body({}))
    old_id = "e" * 32
    pod = builders.build_engine_pod(
        cluster, name="demo-0-0", shard=0, index=0, zone="zone-a", cluster_id=old_id
    )
    pod["status"] = {"phase": "Running"}
    api.engine_pods = [pod]
    api.journal_ready = 3
    _, status, _ = run(body({}))
    assert status["clusterId"] == old_id
    [job] = [o for o in api.created if o["kind"] == "Job"]
    assert job["metadata"]["annotations"][labels.CLUSTER_ID] == old_id


def test_failed_provisioning_job_is_deleted_for_a_retry(api: FakeApi) -> None:
    cluster = ClusterSpec.from_body(body({}))
    job = builders.build_provision_job(cluster, uuid.UUID(UID).hex)
    job["status"] = {
        "failed": 1,
        "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}],
    }
    api.jobs = [job]
    api.journal_ready = 3
    _, status, events = run(body({}))
    assert api.deleted == ["demo-provision"] and jobs_and_pods(api) == []
    assert conditions(status)["Provisioned"]["reason"] == "ProvisioningFailed"
    assert "BackoffLimitExceeded" in conditions(status)["Provisioned"]["message"]
    assert [e.type for e in events if e.reason == "ProvisioningFailed"] == ["Warning"]


def test_unsatisfiable_spec_is_announced_once(api: FakeApi) -> None:
    spec = {"shards": 1, "replicasPerShard": 3, "placement": {"spreading": "Required"}}
    _, status, events = run(body(spec))
    assert [e.reason for e in events] == ["UnsatisfiableSpread"] and api.created == []
    again = body(spec)
    again["status"] = status
    _, _, events = run(again)
    assert events == []


def test_reconciliation_disabled_annotation_is_an_escape_hatch(api: FakeApi) -> None:
    plan, status, _ = run(body({}, annotations={labels.RECONCILIATION: "disabled"}))
    assert plan is None and status == {} and api.created == []


def test_handlers_are_registered_for_every_lifecycle_step() -> None:
    import engram_operator.main  # noqa: F401  (registers the handlers)

    registry = kopf.get_default_registry()
    resource = kopf.Resource(GROUP, VERSION, PLURAL)
    names = {h.id for h in registry._changing.get_all_handlers()}
    assert {"converge", "delete_cluster"} <= {n.split("/")[0] for n in names}
    assert any(h.id == "resync" for h in registry._spawning.get_all_handlers())
    assert resource.plural == "memoryclusters"
