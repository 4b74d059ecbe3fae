"""Deleting a primary's pod on kind, under a writer: the shard moves to its replica (the node hands
over on SIGTERM), the operator replaces the pod in a zone of its own, and every acknowledged write
reads back. The tests run in file order and share one cluster and one writer.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import k8s_api
import pytest
from k8s_api import Kubectl, eventually, eventually_equal, wait_ready
from workload import BackgroundWriter

NAME = "pdel"
SHARDS = 2
REPLICAS = 1
ENGINE = k8s_api.engine_selector(NAME)
VICTIM: dict[str, Any] = {}


@pytest.fixture(scope="module", autouse=True)
def cleanup(kube: Kubectl) -> Iterator[None]:
    yield
    k8s_api.delete_memorycluster(kube, NAME)


@pytest.fixture(scope="module")
def writer(kube: Kubectl, client_pod: str) -> BackgroundWriter:
    return BackgroundWriter(kube, client_pod, NAME, "pdel")


def test_the_cluster_becomes_ready_and_serves_a_writer(kube: Kubectl, writer: BackgroundWriter) -> None:
    kube.apply(k8s_api.memorycluster(NAME, SHARDS, REPLICAS))
    wait_ready(kube, NAME, SHARDS * (REPLICAS + 1))
    writer.start()


def test_deleting_a_primary_pod_hands_its_shard_to_another_node(
    kube: Kubectl, writer: BackgroundWriter
) -> None:
    victim = k8s_api.status(kube, NAME)["shards"][0]["primary"]
    VICTIM.update(name=victim, uid=kube.get("pod", victim)["metadata"]["uid"])
    before = writer.acknowledged()
    kube.run("delete", "pod", victim, "--wait=false")
    eventually(
        kube,
        f"a new primary for shard 0 other than {victim}",
        lambda: k8s_api.status(kube, NAME)["shards"][0]["primary"],
        lambda primary: bool(primary) and primary != victim,
        timeout=120,
    )
    writer.wait_for_more(before, 100, "writes acknowledged again after the primary's deletion")


def test_the_deleted_pod_is_replaced_in_a_zone_of_its_own(kube: Kubectl) -> None:
    eventually_equal(
        kube,
        "engine pods ready again",
        lambda: kube.count_pods_with_label(ENGINE, ready_only=True),
        SHARDS * (REPLICAS + 1),
        timeout=300,
    )
    pods = kube.pods(f"{ENGINE},engram.io/shard=0")
    shard0 = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    assert VICTIM["uid"] not in {p["metadata"]["uid"] for p in shard0}, VICTIM
    zones = [p["metadata"]["labels"]["engram.io/zone"] for p in shard0]
    assert len(set(zones)) == REPLICAS + 1, zones
    eventually_equal(
        kube, "Ready", lambda: k8s_api.condition(kube, NAME, "Ready").get("status"), "True", timeout=120
    )


def test_every_acknowledged_write_reads_back_with_its_last_value(writer: BackgroundWriter) -> None:
    writer.stop_and_verify()
