"""The reconcile glue and kopf wiring, with the Kubernetes API and the engine nodes faked."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf
import pytest
from cluster_state import ZONES

from engram_operator import GROUP, PLURAL, VERSION, kube, labels, probe, reconcile
from engram_operator.decisions import Event


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

    async def list_nodes(self) -> list[dict[str, Any]]:
        return [node(f"n-{z}", z) for z in ZONES]

    async def list_engine_pods(self, namespace: str, cluster: str) -> list[dict[str, Any]]:
        return []

    async def list_children(self, namespace: str, cluster: str) -> tuple[frozenset, int]:
        return frozenset(), 0

    async def create(self, obj: dict[str, Any]) -> bool:
        self.created.append(obj)
        return True

    async def delete_pod(self, namespace: str, name: str) -> None:
        self.deleted.append(name)


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> FakeApi:
    fake = FakeApi()
    for name in ("list_nodes", "list_engine_pods", "list_children", "create", "delete_pod"):
        monkeypatch.setattr(kube, name, getattr(fake, name))

    async def no_statuses(pods: list) -> dict:
        return {}

    monkeypatch.setattr(probe, "all_statuses", no_statuses)
    return fake


def body(spec: dict[str, Any], **meta: Any) -> dict[str, Any]:
    return {
        "apiVersion": "engram.io/v1alpha1",
        "kind": "MemoryCluster",
        "metadata": {"name": "demo", "namespace": "db", "uid": "u1", "generation": 3, **meta},
        "spec": spec,
    }


def run(obj: dict[str, Any]) -> tuple[Any, dict[str, Any], list[Event]]:
    status: dict[str, Any] = {}
    events: list[Event] = []
    plan = asyncio.run(reconcile.reconcile(obj, status, events.append, logging.getLogger("test")))
    return plan, status, events


def test_reconcile_creates_services_and_journal_before_pods_and_writes_status(api: FakeApi) -> None:
    _, status, events = run(body({"shards": 1, "replicasPerShard": 2}))
    kinds = [o["kind"] for o in api.created]
    first_pod = kinds.index("Pod")
    assert "StatefulSet" in kinds[:first_pod] and kinds[first_pod:] == ["Pod", "Pod", "Pod"]
    assert status["observedGeneration"] == 3 and status["phase"] == "Reconciling"
    assert {c["type"] for c in status["conditions"]} >= {"Ready", "Progressing", "Degraded", "JournalReady"}
    assert [e.reason for e in events].count("CreatingPod") == 3


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
