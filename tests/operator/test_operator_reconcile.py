"""The reconcile glue and kopf wiring, with the Kubernetes API and the engine nodes faked."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import types
import uuid
from typing import Any

import kopf
import pytest
from cluster_state import ZONES
from kubernetes.client.exceptions import ApiException
from prometheus_client import REGISTRY

from engram.node.peer import PeerRefused, PeerUnreachable
from engram_operator import GROUP, PLURAL, VERSION, builders, kube, labels, node_cache, probe, reconcile
from engram_operator.decisions import Event
from engram_operator.observe import EngineStatus, parse_engine_status
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
        self.labelled: list[tuple[str, str]] = []
        self.journal_ready = 0
        self.engine_pods: list[dict[str, Any]] = []
        self.jobs: list[dict[str, Any]] = []
        self.node_lists = 0
        self.children: set[tuple[str, str]] = set()
        self.job_pods: list[dict[str, Any]] = []
        self.memoryclusters: dict[str, dict[str, Any]] = {}
        self.memorycluster_reads: list[str] = []
        # Secrets by name, as the API returns them (data base64); replaced ones are also listed.
        self.secrets: dict[str, dict[str, Any]] = {}
        self.replaced: list[dict[str, Any]] = []
        # Secrets the operator's role may not read.
        self.forbidden: set[str] = set()
        # NetworkPolicies by name, as the API returns them; None: listing them is forbidden.
        self.policies: dict[str, dict[str, Any]] | None = {}
        self.policy_changes: list[tuple[str, str]] = []

    async def list_nodes(self) -> list[dict[str, Any]]:
        self.node_lists += 1
        return [node(f"n-{z}", z) for z in ZONES]

    async def list_engine_pods(self, namespace: str, cluster: str) -> list[dict[str, Any]]:
        return self.engine_pods

    async def list_pods(self, namespace: str, cluster: str, component: str) -> list[dict[str, Any]]:
        return self.job_pods if component == labels.PROVISION else []

    async def get_memorycluster(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.memorycluster_reads.append(name)
        return self.memoryclusters.get(name)

    async def list_jobs(self, namespace: str, cluster: str) -> list[dict[str, Any]]:
        return self.jobs

    async def list_children(self, namespace: str, cluster: str) -> tuple[frozenset, int]:
        return frozenset(self.children), self.journal_ready

    async def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        if name in self.forbidden:
            raise ApiException(status=403, reason="Forbidden")
        return self.secrets.get(name)

    async def replace_secret(self, obj: dict[str, Any]) -> None:
        self.replaced.append(obj)
        self.secrets[obj["metadata"]["name"]] = obj

    async def list_network_policies(self, namespace: str, cluster: str) -> list[dict[str, Any]]:
        if self.policies is None:
            raise ApiException(status=403, reason="Forbidden")
        return list(self.policies.values())

    async def replace_network_policy(self, obj: dict[str, Any]) -> None:
        assert self.policies is not None
        self.policy_changes.append(("update", obj["metadata"]["name"]))
        self.policies[obj["metadata"]["name"]] = obj

    async def delete_network_policy(self, namespace: str, name: str) -> None:
        assert self.policies is not None
        self.policy_changes.append(("delete", name))
        self.policies.pop(name, None)

    async def create(self, obj: dict[str, Any]) -> bool:
        self.created.append(obj)
        if obj["kind"] == "NetworkPolicy":
            assert self.policies is not None
            self.policy_changes.append(("create", obj["metadata"]["name"]))
            self.policies[obj["metadata"]["name"]] = obj
        elif obj["kind"] == "Secret":
            self.secrets[obj["metadata"]["name"]] = obj
        elif obj["kind"] not in ("Pod", "Job"):
            self.children.add((obj["kind"], obj["metadata"]["name"]))
        return True

    async def delete_pod(self, namespace: str, name: str) -> None:
        self.deleted.append(name)

    async def delete_job(self, namespace: str, name: str) -> None:
        self.deleted.append(name)

    async def set_pod_label(self, namespace: str, name: str, key: str, value: str) -> None:
        self.labelled.append((name, value))


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> FakeApi:
    fake = FakeApi()
    names = (
        "list_nodes",
        "list_engine_pods",
        "list_pods",
        "list_jobs",
        "list_children",
        "create",
        "get_memorycluster",
        "get_secret",
        "replace_secret",
        "list_network_policies",
        "replace_network_policy",
        "delete_network_policy",
    )
    for name in (*names, "delete_pod", "delete_job", "set_pod_label"):
        monkeypatch.setattr(kube, name, getattr(fake, name))
    # A cache of its own per test: the shared one would hand one test's nodes to the next.
    monkeypatch.setattr(reconcile, "NODES", node_cache.NodeCache(fake.list_nodes))

    async def no_statuses(pods: list, tls: object = None) -> dict:
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


def run(obj: dict[str, Any], memo: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any], list[Event]]:
    status: dict[str, Any] = {}
    events: list[Event] = []
    plan = asyncio.run(reconcile.reconcile(obj, status, events.append, logging.getLogger("test"), memo))
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
    assert [e.reason for e in events] == ["Provisioning", "Waiting"]

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
    # Nothing is built but the users file, which touches no pod and keeps passwords current.
    assert [e.reason for e in events] == ["UnsatisfiableSpread"]
    assert [o["kind"] for o in api.created] == ["Secret"]
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


def running_cluster(api: FakeApi, spec: dict[str, Any]) -> dict[str, Any]:
    """Drive reconciles until the cluster's pods exist, then show them running and Ready; the
    status the last reconcile wrote is returned for the next body."""
    api.journal_ready = 3
    _, status, _ = run(body(spec))
    _, status, _ = run(body(spec, status=status))
    api.jobs = [succeeded(next(o for o in api.created if o["kind"] == "Job"))]
    _, status, _ = run(body(spec, status=status))
    pods = [json.loads(json.dumps(o)) for o in api.created if o["kind"] == "Pod"]
    for i, pod in enumerate(pods):
        pod["spec"]["nodeName"] = f"n-{pod['metadata']['labels'][labels.ZONE]}"
        pod["status"] = {
            "phase": "Running",
            "podIP": f"10.0.0.{i + 1}",
            "conditions": [{"type": "Ready", "status": "True"}],
        }
    api.engine_pods = pods
    api.created.clear()
    return status


def answer_as(monkeypatch: pytest.MonkeyPatch, roles: dict[str, str]) -> None:
    """Engine nodes answer ENGRAM.STATUS with these roles (pod name -> role)."""

    async def statuses(pods: list, tls: object = None) -> dict:
        return {p.name: EngineStatus(role=roles[p.name], applied_seq=10) for p in pods if p.name in roles}

    monkeypatch.setattr(probe, "all_statuses", statuses)


def test_a_stuck_replica_is_timed_through_the_status_the_body_carries_and_replaced_once(
    api: FakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = {"shards": 1, "replicasPerShard": 1}
    status = running_cluster(api, spec)

    async def statuses(pods: list, tls: object = None) -> dict:
        # The primary commits on; the replica stays at entry 500.
        return {
            "demo-0-0": EngineStatus("primary", applied_seq=900, committed_seq=900),
            "demo-0-1": EngineStatus("replica", applied_seq=500, committed_seq=500),
        }

    monkeypatch.setattr(probe, "all_statuses", statuses)
    clock = {"now": 1_750_000_000.0}
    monkeypatch.setattr(reconcile, "time", types.SimpleNamespace(time=lambda: clock["now"]))
    replaced = {"namespace": "db", "cluster": "demo", "reason": "stuck"}
    before = REGISTRY.get_sample_value("engram_operator_pod_replacements_total", replaced) or 0.0
    memo: dict[str, Any] = {}
    for seconds in (0, 60, 115):
        clock["now"] = 1_750_000_000.0 + seconds
        _, status, events = run(body(spec, status=status), memo)
        assert api.deleted == [] and not [e for e in events if e.reason == "ReplicaStuck"]
    assert status["shards"][0]["replicaProgress"][0]["appliedSeq"] == 500
    # A restarted operator (empty memo) reads the clock from the status: two minutes are up.
    clock["now"] = 1_750_000_000.0 + 120
    _, status, events = run(body(spec, status=status), {})
    assert api.deleted == ["demo-0-1"]
    assert [e.type for e in events if e.reason == "ReplicaStuck"] == ["Warning"]
    assert conditions(status)["NodesHealthy"]["reason"] == "ReplicaStuck"
    assert REGISTRY.get_sample_value("engram_operator_pod_replacements_total", replaced) == before + 1


def test_a_refused_switchover_is_shown_in_status_and_an_event_and_retried_next_time(
    api: FakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = {"shards": 1, "replicasPerShard": 1}
    status = running_cluster(api, spec)
    answer_as(monkeypatch, {"demo-0-0": "primary", "demo-0-1": "replica"})
    asked: list[tuple[str, str]] = []

    async def refuse(host: object, target: str) -> None:
        asked.append((host, target))
        raise PeerRefused("ERR switchover to demo-0-1 aborted: the replication tap did not catch up")

    monkeypatch.setattr(probe, "switchover", refuse)
    # A version change whose replica is already replaced: the primary must hand over next.
    new = {**spec, "engine": {"version": "0.2.0"}}
    api.engine_pods[1]["metadata"]["annotations"][labels.POD_SPEC_HASH] = builders.pod_spec_hash(
        ClusterSpec.from_body(body(new))
    )
    memo: dict[str, Any] = {}
    plan, status, events = run(body(new, status=status), memo)
    assert [s.target for s in plan.switchovers] == ["demo-0-1"] and len(asked) == 1
    progressing = conditions(status)["Progressing"]
    assert (progressing["status"], progressing["reason"]) == ("True", "SwitchoverFailed")
    assert "the replication tap did not catch up" in progressing["message"]
    assert [e.type for e in events if e.reason == "SwitchoverFailed"] == ["Warning"]
    # Retried on the next reconcile, without a second event for the same failure.
    _, status, events = run(body(new, status=status), memo)
    assert len(asked) == 2 and not [e for e in events if e.reason == "SwitchoverFailed"]
    assert conditions(status)["Progressing"]["reason"] == "SwitchoverFailed"


def test_an_unreachable_primary_does_not_escape_the_reconcile(
    api: FakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = {"shards": 1, "replicasPerShard": 1}
    status = running_cluster(api, spec)
    answer_as(monkeypatch, {"demo-0-0": "primary", "demo-0-1": "replica"})

    async def unreachable(host: object, target: str) -> None:
        raise PeerUnreachable(f"{host}:16379 does not answer: timed out")

    monkeypatch.setattr(probe, "switchover", unreachable)
    new = {**spec, "engine": {"version": "0.2.0"}}
    api.engine_pods[1]["metadata"]["annotations"][labels.POD_SPEC_HASH] = builders.pod_spec_hash(
        ClusterSpec.from_body(body(new))
    )
    plan, status, _ = run(body(new, status=status))
    assert plan.switchovers and conditions(status)["Progressing"]["reason"] == "SwitchoverFailed"
    assert status["readyNodes"] == "2/2"


def test_waits_are_normal_events_posted_when_they_change_not_on_every_reconcile(api: FakeApi) -> None:
    memo: dict[str, Any] = {}
    _, status, events = run(body({}), memo)
    waits = [e for e in events if e.reason == "Waiting"]
    assert [e.type for e in waits] == ["Normal"] and "journal servers ready: 0/3" in waits[0].message
    assert not any(e.type in ("Warning", "Error") for e in events)
    # Nothing changed: the same wait is not posted again.
    _, status, events = run(body({}, status=status), memo)
    assert [e for e in events if e.reason == "Waiting"] == []
    # The journal came up: what the cluster waits for changed, and says so once.
    api.journal_ready = 3
    _, _, events = run(body({}, status=status), memo)
    [wait] = [e for e in events if e.reason == "Waiting"]
    assert "journal servers" not in wait.message and "provisioning" in wait.message


def test_waiting_is_not_an_error_for_kopf(api: FakeApi, monkeypatch: pytest.MonkeyPatch) -> None:
    """The create handler returns while the cluster still waits (a kopf.TemporaryError was logged,
    and posted, as an Error every few seconds); the timer carries on from there."""
    from engram_operator.handlers import handle_cluster

    posted: list[tuple[str, str]] = []
    monkeypatch.setattr(kopf, "event", lambda obj, *, type, reason, message: posted.append((type, reason)))
    patch = kopf.Patch()
    asyncio.run(
        handle_cluster.converge(
            body=body({}), patch=patch, memo=kopf.Memo(), logger=logging.getLogger("test")
        )
    )
    assert ("Normal", "Waiting") in posted
    assert patch["status"]["phase"] == "Reconciling"


def test_clusters_reconciling_in_one_tick_share_one_node_list(api: FakeApi) -> None:
    async def tick() -> None:
        for name in ("alpha", "beta", "gamma"):
            await reconcile.reconcile(body({}, name=name), {}, lambda e: None, logging.getLogger("test"), {})

    asyncio.run(tick())
    assert api.node_lists == 1


def test_the_node_list_is_taken_again_once_it_is_older_than_its_ttl() -> None:
    clock = [100.0]
    lists = []

    async def fetch() -> list[dict[str, Any]]:
        lists.append(clock[0])
        return [node("n-a", "zone-a")]

    cache = node_cache.NodeCache(fetch, ttl=5.0, clock=lambda: clock[0])

    async def at(t: float) -> None:
        clock[0] = t
        await cache.get()

    async def timeline() -> None:
        for t in (100.0, 101.0, 104.9, 105.0, 107.0, 110.5):
            await at(t)

    asyncio.run(timeline())
    assert lists == [100.0, 105.0, 110.5]
    assert node_cache.stale(None, 0.0) and not node_cache.stale(100.0, 104.0, 5.0)
    # A clock that went backwards (a restored snapshot, a test) never keeps a list forever.
    assert node_cache.stale(100.0, 50.0, 5.0)


def test_a_snapshot_request_is_carried_out_once_without_holding_the_reconcile_up(
    api: FakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One replica per shard is asked at once; the reconcile returns while the snapshots run, a later
    one records every shard's answer (a failure too), and the same value is never asked again."""
    spec = {"shards": 2, "replicasPerShard": 1}
    status = running_cluster(api, spec)
    answer_as(
        monkeypatch,
        {"demo-0-0": "primary", "demo-0-1": "replica", "demo-1-0": "primary", "demo-1-1": "replica"},
    )
    ips = {p["metadata"]["name"]: p["status"]["podIP"] for p in api.engine_pods}
    asked: list[str] = []

    async def scenario() -> None:
        gate = asyncio.Event()

        async def snapshot(where: probe.Target) -> str:
            asked.append(where.ip)
            await gate.wait()
            if where.ip == ips["demo-1-1"]:
                raise PeerRefused("ERR cluster demo has no snapshot store (provisioned before snapshots)")
            return "shard 0: snapshot at entry 42 verified"

        monkeypatch.setattr(probe, "snapshot", snapshot)
        memo: dict[str, Any] = {}
        requested = {**spec, "snapshots": {"request": "2025-06-01T12:00:00Z"}}

        async def tick(current: dict[str, Any]) -> tuple[dict[str, Any], list[Event]]:
            out: dict[str, Any] = {}
            events: list[Event] = []
            await reconcile.reconcile(
                body(requested, status=current), out, events.append, logging.getLogger("t"), memo
            )
            for _ in range(10):  # let a started request reach its nodes
                await asyncio.sleep(0)
            return out, events

        # Bounded: a reconcile that waited for the snapshots would never get past the gate.
        started, events = await asyncio.wait_for(tick(status), 5)
        assert sorted(asked) == sorted([ips["demo-0-1"], ips["demo-1-1"]])
        assert started["snapshots"]["inProgress"] == "2025-06-01T12:00:00Z"
        assert started["snapshots"]["lastRequest"] == ""
        [request_event] = [e for e in events if e.reason == "SnapshotRequested"]
        assert (
            "shard 0 on demo-0-1" in request_event.message and "shard 1 on demo-1-1" in request_event.message
        )

        # Still running: later reconciles neither wait for it nor ask again.
        running_status, events = await tick(started)
        assert len(asked) == 2 and running_status["snapshots"]["inProgress"] == "2025-06-01T12:00:00Z"
        assert not [e for e in events if e.reason.startswith("Snapshot")]

        gate.set()
        await memo[reconcile.SNAPSHOT_RUN].task
        done, events = await tick(running_status)
        snapshots = done["snapshots"]
        assert snapshots["lastRequest"] == "2025-06-01T12:00:00Z" and snapshots["inProgress"] == ""
        assert [(r["shard"], r["pod"], r["succeeded"]) for r in snapshots["results"]] == [
            (0, "demo-0-1", True),
            (1, "demo-1-1", False),
        ]
        assert "no snapshot store" in snapshots["results"][1]["message"]
        [outcome] = [e for e in events if e.reason.startswith("Snapshot")]
        assert (outcome.type, outcome.reason) == ("Warning", "SnapshotFailed")

        # Answered: not asked again, neither from a body that still shows the status before it
        # nor from one that shows it; a new value is.
        await tick(running_status)
        again, _ = await tick(done)
        assert len(asked) == 2 and again["snapshots"]["lastRequest"] == "2025-06-01T12:00:00Z"
        requested["snapshots"]["request"] = "2025-06-01T13:00:00Z"
        await tick(again)
        assert len(asked) == 4
        memo[reconcile.SNAPSHOT_RUN].task.cancel()

    asyncio.run(scenario())
    # Taking snapshots replaced no pod.
    assert api.deleted == [] and api.created == []


def test_a_request_for_a_cluster_without_replicas_fails_at_once_with_the_reason(
    api: FakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = {"shards": 1, "replicasPerShard": 0}
    status = running_cluster(api, spec)
    answer_as(monkeypatch, {"demo-0-0": "primary"})

    async def snapshot(host: object) -> str:
        raise AssertionError("no node may be asked")

    monkeypatch.setattr(probe, "snapshot", snapshot)
    memo: dict[str, Any] = {}
    _, done, events = run(body({**spec, "snapshots": {"request": "r1"}}, status=status), memo)
    assert done["snapshots"]["lastRequest"] == "r1" and reconcile.SNAPSHOT_RUN not in memo
    [result] = done["snapshots"]["results"]
    assert result["pod"] == "" and not result["succeeded"] and "replicasPerShard is 0" in result["message"]
    assert [(e.type, e.reason) for e in events if e.reason.startswith("Snapshot")] == [
        ("Normal", "SnapshotRequested"),
        ("Warning", "SnapshotFailed"),
    ]


# --- spec.restoreFrom ------------------------------------------------------------------------------------


def test_a_restore_from_another_cluster_waits_for_it_then_reads_it_only_to_build_the_job(
    api: FakeApi,
) -> None:
    spec = {"restoreFrom": {"cluster": {"name": "source"}}}
    api.journal_ready = 3
    _, status, _ = run(body(spec))
    assert jobs_and_pods(api) == [] and api.memorycluster_reads == ["source"]
    assert conditions(status)["Provisioned"]["reason"] == "WaitingForRestoreSource"
    assert "does not exist in namespace db" in conditions(status)["Provisioned"]["message"]
    api.memoryclusters["source"] = {
        "metadata": {"name": "source", "namespace": "db"},
        "spec": {"journal": {"replicas": 5}},
        "status": {"clusterId": "5" * 32, "snapshots": {"allShardsSince": "2026-01-01T00:00:00Z"}},
    }
    _, status, events = run(body(spec, status=status))
    assert "seeding it from the snapshots of MemoryCluster source" in events[0].message
    [job] = jobs_and_pods(api)
    command = job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[command.index("--restore-from-cluster") + 1] == "source"
    assert len(command[command.index("--restore-journal") + 1].split(",")) == 5
    # Once the Job exists the source is not read again (nor after it succeeded).
    api.jobs = [succeeded(job)]
    reads = len(api.memorycluster_reads)
    _, status, _ = run(body(spec, status=status))
    assert len(api.memorycluster_reads) == reads
    assert status["restoredFrom"] == {"cluster": {"name": "source", "clusterId": "5" * 32}}
    assert conditions(status)["Provisioned"]["reason"] == "Restored"


def test_a_locked_source_lends_the_job_its_secrets_by_reference_once_they_exist(api: FakeApi) -> None:
    """The operator reads only which keys the source's Secrets hold; the password reaches no object."""
    spec = {"restoreFrom": {"cluster": {"name": "source"}}}
    password = "source-password-never-copied"
    api.journal_ready = 3
    api.memoryclusters["source"] = {
        "metadata": {"name": "source", "namespace": "db"},
        "spec": {"tls": {"secretName": "source-certs"}},
        "status": {"clusterId": "5" * 32, "snapshots": {"allShardsSince": "2026-01-01T00:00:00Z"}},
    }
    _, status, events = run(body(spec))
    assert jobs_and_pods(api) == []
    provisioned = conditions(status)["Provisioned"]
    assert provisioned["reason"] == "RestoreSourceSecretMissing"
    missing = "Secret source-certs does not exist; Secret source-journal-auth does not exist"
    assert missing in provisioned["message"]
    assert [e.reason for e in events if e.type == "Warning"] == ["RestoreSourceSecretMissing"]

    def secret(name: str, data: dict[str, str]) -> dict[str, Any]:
        encoded = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
        return {"metadata": {"name": name, "namespace": "db"}, "data": encoded}

    api.secrets["source-certs"] = secret("source-certs", {"tls.crt": "c", "tls.key": "k", "ca.crt": "ca"})
    api.secrets["source-journal-auth"] = secret("source-journal-auth", {"password": password})
    _, status, _ = run(body(spec, status=status))
    [job] = jobs_and_pods(api)
    pod = job["spec"]["template"]["spec"]
    volumes = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    assert volumes == {"source-journal-ca": "source-certs", "source-journal-auth": "source-journal-auth"}
    written = json.dumps([api.created, status])
    assert password not in written and base64.b64encode(password.encode()).decode() not in written


def test_a_failed_restore_keeps_its_job_reads_its_pod_and_warns_once(api: FakeApi) -> None:
    spec = {"restoreFrom": {"rdb": {"claimName": "backups", "paths": ["a.rdb"]}}}
    job = builders.build_provision_job(ClusterSpec.from_body(body(spec)), uuid.UUID(UID).hex)
    job["metadata"]["uid"] = "job-uid"
    job["status"] = {
        "failed": 1,
        "conditions": [
            {"type": "Failed", "status": "True", "reason": "PodFailurePolicy", "message": "exit 3"}
        ],
    }
    ended = {"exitCode": 3, "finishedAt": "2026-01-01T00:00:00Z", "message": "restore failed: bad RDB"}
    api.job_pods = [
        {
            "metadata": {"ownerReferences": [{"uid": "job-uid"}]},
            "status": {"containerStatuses": [{"state": {"terminated": ended}}]},
        }
    ]
    api.jobs = [job]
    api.journal_ready = 3
    memo: dict[str, Any] = {}
    _, status, events = run(body(spec), memo)
    assert api.deleted == [] and jobs_and_pods(api) == []
    provisioned = conditions(status)["Provisioned"]
    assert provisioned["reason"] == "RestoreFailed" and "restore failed: bad RDB" in provisioned["message"]
    assert conditions(status)["Degraded"]["reason"] == "RestoreFailed" and status["phase"] == "Degraded"
    assert [e.type for e in events if e.reason == "RestoreFailed"] == ["Warning"]
    _, status, events = run(body(spec, status=status), memo)
    assert [e for e in events if e.reason == "RestoreFailed"] == [] and api.deleted == []


# --- failed scheduled snapshots --------------------------------------------------------------------------


def test_a_failing_snapshot_posts_a_warning_per_failed_attempt_and_survives_an_operator_restart(
    api: FakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = ClusterSpec.from_body(body({}))
    pod = builders.build_engine_pod(cluster, name="demo-0-1", shard=0, index=1, zone="zone-b", cluster_id="c")
    pod["status"] = {"phase": "Running", "podIP": "10.0.0.2"}
    api.engine_pods = [pod]
    answers = {"failures": 1}

    async def statuses(pods: list, tls: object = None) -> dict:
        n = answers["failures"]
        return {"demo-0-1": EngineStatus("replica", snapshot_failures=n, snapshot_error="digest differs")}

    monkeypatch.setattr(probe, "all_statuses", statuses)
    memo: dict[str, Any] = {}
    _, status, events = run(body({}), memo)
    [warning] = [e for e in events if e.reason == "SnapshotFailed"]
    assert warning.type == "Warning"
    assert warning.message.startswith(
        "shard 0: snapshot on demo-0-1 failed (1 attempt in a row): digest differs"
    )
    assert status["shards"][0]["snapshotFailures"] == 1
    assert conditions(status)["SnapshotsHealthy"]["status"] == "False"
    _, status, events = run(body({}, status=status), memo)
    assert [e for e in events if e.reason == "SnapshotFailed"] == []
    answers["failures"] = 2
    _, status, events = run(body({}, status=status), memo)
    assert ["2 attempts in a row" in e.message for e in events if e.reason == "SnapshotFailed"] == [True]
    # A restarted operator (empty memo) learns the count from the status: no second announcement.
    _, status, events = run(body({}, status=status), {})
    assert [e for e in events if e.reason == "SnapshotFailed"] == []
    answers["failures"] = 0
    _, status, _ = run(body({}, status=status), memo)
    assert conditions(status)["SnapshotsHealthy"]["status"] == "True"
    assert status["shards"][0]["snapshotFailures"] == 0 and "snapshotError" not in status["shards"][0]


# --- spec.users: passwords read from their Secrets on every reconcile --------------------------------------

APP_USER = {"name": "app", "rules": "~* +@all", "passwordSecret": {"name": "app-pw", "key": "password"}}


def password_secret(value: bytes) -> dict[str, Any]:
    """The Secret app-pw as the API returns it."""
    return {"metadata": {"name": "app-pw"}, "data": {"password": base64.b64encode(value).decode()}}


def users_file(api: FakeApi) -> str:
    return base64.b64decode(api.secrets["demo-users"]["data"]["users.acl"]).decode()


def test_a_password_changed_in_its_secret_reaches_the_users_file_at_the_next_reconcile(api: FakeApi) -> None:
    """The timer's reconcile reads the Secret again: no spec change is needed."""
    spec = {"users": [APP_USER]}
    api.secrets["app-pw"] = password_secret(b"first")
    _, status, _ = run(body(spec))
    [written] = [o for o in api.created if o["kind"] == "Secret"]
    assert written["metadata"]["name"] == "demo-users"
    assert f"user app on #{hashlib.sha256(b'first').hexdigest()} ~* +@all" in users_file(api)
    assert "first" not in users_file(api)
    assert conditions(status)["UsersReady"]["status"] == "True"

    api.secrets["app-pw"] = password_secret(b"second")
    _, status, events = run(body(spec, status=status))
    [replaced] = api.replaced
    assert replaced["metadata"]["name"] == "demo-users"
    assert hashlib.sha256(b"second").hexdigest() in users_file(api)
    assert [e.reason for e in events if e.reason == "UsersUpdated"] == ["UsersUpdated"]

    # Nothing changed since: the Secret is not written again.
    run(body(spec, status=status))
    assert len(api.replaced) == 1


def test_a_deleted_password_secret_keeps_the_users_file_and_is_warned_about_once(api: FakeApi) -> None:
    spec = {"users": [APP_USER]}
    api.secrets["app-pw"] = password_secret(b"first")
    memo: dict[str, Any] = {}
    _, status, _ = run(body(spec), memo)
    before = users_file(api)

    del api.secrets["app-pw"]
    _, status, events = run(body(spec, status=status), memo)
    assert api.replaced == [] and users_file(api) == before
    ready = conditions(status)["UsersReady"]
    assert (ready["status"], ready["reason"]) == ("False", "PasswordSecretMissing")
    assert "Secret app-pw not found in namespace db" in ready["message"]
    assert [e.type for e in events if e.reason == "PasswordSecretMissing"] == ["Warning"]
    _, status, events = run(body(spec, status=status), memo)
    assert [e for e in events if e.reason == "PasswordSecretMissing"] == []

    # Back again: the same password renders the same file, which is not written again.
    api.secrets["app-pw"] = password_secret(b"first")
    _, status, _ = run(body(spec, status=status), memo)
    assert conditions(status)["UsersReady"]["status"] == "True" and api.replaced == []


def test_a_password_secret_the_operator_may_not_read_is_reported_not_raised(api: FakeApi) -> None:
    api.forbidden.add("app-pw")
    _, status, _ = run(body({"users": [APP_USER]}))
    ready = conditions(status)["UsersReady"]
    assert ready["status"] == "False" and "Secret app-pw cannot be read (403 Forbidden)" in ready["message"]
    # A new cluster: no users file was ever written, so none is written now.
    assert "demo-users" not in api.secrets


def test_growing_spec_shards_runs_the_reshard_job_then_the_new_shards_pods_and_reports_progress(
    api: FakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    status = running_cluster(api, {"shards": 1, "replicasPerShard": 0})
    grown = {"shards": 2, "replicasPerShard": 0}
    _, status, events = run(body(grown, status=status))
    [job] = jobs_and_pods(api)
    assert (job["kind"], job["metadata"]["name"]) == ("Job", "demo-reshard-2")
    assert [e.type for e in events if e.reason == "Resharding"] == ["Normal"]
    assert (conditions(status)["Resharding"]["status"], conditions(status)["Resharding"]["reason"]) == (
        "True",
        "Pending",
    )
    assert status["resharding"]["phase"] == "pending" and status["resharding"]["toShards"] == 2

    api.created.clear()
    started = json.loads(json.dumps(job))
    started["metadata"]["uid"] = "reshard-uid"
    started["status"] = {"active": 1}
    api.jobs.append(started)
    moving = {"id": "p1", "from_shards": 1, "to_shards": 2, "phase": "moving", "slots_total": 8192,
              "slots_moved": 4096, "started": 1.0, "updated": 101.0}

    async def reporting(pods: list, tls: object = None) -> dict:
        return {p.name: parse_engine_status(["role", "primary", "reshard", json.dumps(moving)]) for p in pods}

    monkeypatch.setattr(probe, "all_statuses", reporting)
    _, status, events = run(body(grown, status=status))
    assert [o["metadata"]["name"] for o in jobs_and_pods(api)] == ["demo-1-0"]
    assert conditions(status)["Resharding"]["reason"] == "Moving"
    assert status["resharding"]["slotsMoved"] == 4096 and status["resharding"]["eta"] == 100

    api.created.clear()
    api.jobs[-1] = succeeded(job)
    moving["phase"] = "done"
    _, status, events = run(body(grown, status=status))
    assert [o for o in api.created if o["kind"] == "Job"] == [] and status["resharding"]["phase"] == "done"
    assert [e.reason for e in events if e.reason.startswith("Reshard")] == ["Resharded"]
