"""Slot ownership on kind: a three-shard cluster's slots are split evenly, each shard's primary is the
one the operator reports, and a stock cluster client (redis-py RedisCluster) writes into every slot
and each key is served by its owner and redirected (MOVED) by every other primary.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import k8s_api
import pytest
from k8s_api import Kubectl, endpoint, wait_ready

NAME = "slots"
SHARDS = 3
REPLICAS = 1
SLOTS = 16384


@pytest.fixture(scope="module", autouse=True)
def cleanup(kube: Kubectl) -> Iterator[None]:
    yield
    k8s_api.delete_memorycluster(kube, NAME)


def test_the_cluster_becomes_ready(kube: Kubectl) -> None:
    kube.apply(k8s_api.memorycluster(NAME, SHARDS, REPLICAS))
    wait_ready(kube, NAME, SHARDS * (REPLICAS + 1))


@pytest.fixture(scope="module")
def ownership(kube: Kubectl, client_pod: str) -> dict[str, Any]:
    """What clients/ownership.py found: one key written into each slot, then asked of every primary."""
    return json.loads(kube.exec(client_pod, "python", "/tmp/ownership.py", endpoint(kube, NAME)))


def test_the_slots_are_split_evenly_over_the_shards(kube: Kubectl, client_pod: str) -> None:
    shards = json.loads(kube.exec(client_pod, "python", "/tmp/shards.py", endpoint(kube, NAME)))
    counts = [sum(last - first + 1 for first, last in ranges) for ranges in shards]
    assert len(counts) == SHARDS and sum(counts) == SLOTS, counts
    assert max(counts) - min(counts) <= 1, counts


def test_cluster_shards_names_the_primaries_the_operator_reports(
    kube: Kubectl, ownership: dict[str, Any]
) -> None:
    reported = sorted(s["primary"] for s in k8s_api.status(kube, NAME)["shards"])
    assert sorted(s["primary"] for s in ownership["shards"]) == reported, (ownership, reported)


def test_a_cluster_client_writes_into_every_slot(ownership: dict[str, Any]) -> None:
    assert ownership["written"] == SLOTS, ownership


def test_each_primary_serves_the_keys_of_its_slots_and_redirects_the_rest_to_their_owner(
    ownership: dict[str, Any]
) -> None:
    assert ownership["problems"] == [], ownership["problems"]
    assert [s["served"] for s in ownership["shards"]] == [s["slots"] for s in ownership["shards"]], ownership
    assert sum(s["served"] for s in ownership["shards"]) == SLOTS
