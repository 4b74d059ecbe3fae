"""Scaling replicas on kind under a writer: spec.replicasPerShard 1 -> 2 -> 1 with spreading Required.
New replicas land in zones their shard does not use yet and nothing else is touched; scaling down
removes replicas the shared decision picks (never a primary, so a shard's pod indices may have gaps:
pods are counted per shard, not by name); no acknowledged write is lost.
The tests run in file order and share one cluster and one writer.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import k8s_api
import pytest
from k8s_api import Kubectl, eventually, eventually_equal, node_zones, wait_ready
from workload import BackgroundWriter

NAME = "replicas"
SHARDS = 2
ENGINE = k8s_api.engine_selector(NAME)
SPREAD = {"spreading": "Required"}
BEFORE: dict[str, set[str]] = {}


def live_pods(kube: Kubectl) -> list[dict[str, Any]]:
    return [p for p in kube.pods(ENGINE) if not p["metadata"].get("deletionTimestamp")]


def scale_to(kube: Kubectl, writer: BackgroundWriter, replicas: int) -> list[dict[str, Any]]:
    """Patch replicasPerShard, wait for the pods and Ready, and check writes went on meanwhile."""
    before = writer.acknowledged()
    patch = {"spec": {"replicasPerShard": replicas}}
    kube.run("patch", "memorycluster", NAME, "--type=merge", "-p", json.dumps(patch))
    want = SHARDS * (replicas + 1)
    eventually_equal(kube, f"{want} engine pods", lambda: len(live_pods(kube)), want, timeout=300)
    wait_ready(kube, NAME, want, timeout=300)
    eventually(
        kube,
        f"every shard reported with {replicas + 1} ready nodes",
        lambda: k8s_api.status(kube, NAME)["shards"],
        lambda shards: len(shards) == SHARDS
        and all(s["readyNodes"] == s["nodes"] == replicas + 1 and s["primary"] for s in shards),
        timeout=120,
    )
    writer.wait_for_more(before, 100, f"writes acknowledged across the scale to {replicas} replicas")
    return live_pods(kube)


def assert_each_shard_in_distinct_zones(kube: Kubectl, pods: list[dict[str, Any]], replicas: int) -> None:
    """Each shard's pods are in as many zones as it has pods, where the scheduler really put them."""
    nodes = node_zones(kube)
    for shard in range(SHARDS):
        mine = [p for p in pods if p["metadata"]["labels"]["engram.io/shard"] == str(shard)]
        zones = [nodes[p["spec"]["nodeName"]] for p in mine]
        assert len(mine) == replicas + 1 and len(set(zones)) == replicas + 1, (shard, zones)
        assert [p["metadata"]["labels"]["engram.io/zone"] for p in mine] == zones, (shard, zones)


@pytest.fixture(scope="module", autouse=True)
def cleanup(kube: Kubectl) -> Iterator[None]:
    yield
    k8s_api.delete_memorycluster(kube, NAME)


@pytest.fixture(scope="module")
def writer(kube: Kubectl, client_pod: str) -> BackgroundWriter:
    return BackgroundWriter(kube, client_pod, NAME, "replicas")


def test_a_cluster_with_one_replica_per_shard_serves_a_writer(
    kube: Kubectl, writer: BackgroundWriter
) -> None:
    kube.apply(k8s_api.memorycluster(NAME, SHARDS, 1, placement=SPREAD))
    wait_ready(kube, NAME, SHARDS * 2)
    writer.start()


def test_two_replicas_per_shard_add_a_pod_per_shard_in_the_zone_it_lacked(
    kube: Kubectl, writer: BackgroundWriter
) -> None:
    BEFORE["uids"] = {p["metadata"]["uid"] for p in live_pods(kube)}
    pods = scale_to(kube, writer, 2)
    assert_each_shard_in_distinct_zones(kube, pods, 2)
    # Scaling up creates pods and deletes none.
    assert BEFORE["uids"] <= {p["metadata"]["uid"] for p in pods}, "a pod was replaced by a scale-up"


def test_one_replica_per_shard_again_removes_a_pod_per_shard(kube: Kubectl, writer: BackgroundWriter) -> None:
    primaries = {s["primary"] for s in k8s_api.status(kube, NAME)["shards"]}
    pods = scale_to(kube, writer, 1)
    assert_each_shard_in_distinct_zones(kube, pods, 1)
    # Scaling down removes replicas only: every primary from before is still there.
    assert primaries <= {p["metadata"]["name"] for p in pods}, primaries
    removed = [e for e in k8s_api.cluster_events(kube, NAME) if e["reason"] == "ScalingDown"]
    assert len(removed) >= SHARDS, removed


def test_every_acknowledged_write_reads_back_with_its_last_value(writer: BackgroundWriter) -> None:
    writer.stop_and_verify()
