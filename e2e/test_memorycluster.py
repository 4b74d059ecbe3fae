"""The lifecycle of a MemoryCluster on kind: provisioned and Ready, one pod per zone per shard, nodes
that answer on both ports, and a deletion that leaves nothing behind.

The other behaviours have their own files (docs/operator.md, End-to-end tests). The tests run in
file order and share one cluster.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator

import k8s_api
import pytest
from k8s_api import Kubectl, condition, eventually_equal, node_zones, wait_ready

NAME = "lifecycle"
SHARDS = 2
REPLICAS = 2
ENGINE = k8s_api.engine_selector(NAME)


@pytest.fixture(scope="module", autouse=True)
def cleanup(kube: Kubectl) -> Iterator[None]:
    yield
    k8s_api.delete_memorycluster(kube, NAME)


def test_memorycluster_becomes_ready(kube: Kubectl) -> None:
    kube.apply(k8s_api.memorycluster(NAME, SHARDS, REPLICAS, placement={"spreading": "Required"}))
    eventually_equal(
        kube,
        "journal servers ready",
        lambda: kube.count_pods_with_label(
            f"engram.io/cluster={NAME},app.kubernetes.io/component=journal", ready_only=True
        ),
        3,
        timeout=300,
    )
    wait_ready(kube, NAME, SHARDS * (REPLICAS + 1))


def test_pods_land_one_per_zone_per_shard(kube: Kubectl) -> None:
    nodes = node_zones(kube)
    for shard in range(SHARDS):
        pods = kube.pods(f"{ENGINE},engram.io/shard={shard}")
        zones = [nodes[p["spec"]["nodeName"]] for p in pods]
        assert sorted(zones) == ["zone-a", "zone-b", "zone-c"], (shard, zones)
        # The label the operator set matches where the scheduler really put the pod.
        assert all(p["metadata"]["labels"]["engram.io/zone"] == nodes[p["spec"]["nodeName"]] for p in pods)
    assert all(s["primary"] for s in k8s_api.status(kube, NAME)["shards"])


def test_the_provisioning_job_succeeded_and_every_shard_owns_slots(kube: Kubectl, client_pod: str) -> None:
    status = k8s_api.status(kube, NAME)
    provisioned = condition(kube, NAME, "Provisioned")
    assert provisioned["status"] == "True" and status["clusterId"], provisioned
    assert kube.get("job", f"{NAME}-provision")["status"].get("succeeded") == 1
    shards = json.loads(kube.exec(client_pod, "python", "/tmp/shards.py", k8s_api.endpoint(kube, NAME)))
    assert len(shards) == SHARDS and all(shards), shards
    assert sum(end - start + 1 for ranges in shards for start, end in ranges) == 16384


def test_nodes_answer_on_their_control_port_and_valkey_serves_clients_with_the_module(
    kube: Kubectl, client_pod: str
) -> None:
    """The operator's way in (ENGRAM.STATUS on 16379) and the clients' (Valkey on 6379) both work."""
    pods = {p["status"]["podIP"]: p for p in kube.pods(ENGINE)}
    seen = json.loads(kube.exec(client_pod, "python", "/tmp/control.py", *pods))
    for ip, answer in seen.items():
        assert answer["status"]["node_id"] == pods[ip]["metadata"]["name"], answer
        assert answer["status"]["admin"].endswith(":16379"), answer
        assert "engram" in answer["modules"], answer
    roles = Counter(answer["status"]["role"] for answer in seen.values())
    assert roles == {"primary": SHARDS, "replica": SHARDS * REPLICAS}, roles


def test_deleting_the_memorycluster_cleans_up_everything(kube: Kubectl) -> None:
    kube.run("delete", "memorycluster", NAME, "--wait=true", timeout=300)
    selector = f"engram.io/cluster={NAME}"
    for kind in (
        "pods", "jobs", "statefulsets", "services", "configmaps", "secrets", "poddisruptionbudgets", "pvc"
    ):
        eventually_equal(
            kube,
            f"{kind} of the cluster gone",
            lambda kind=kind: len(kube.get(kind, selector=selector)["items"]),
            0,
            timeout=180,
        )
