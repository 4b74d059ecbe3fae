"""`kubectl engram` on kind: status, a switchover, an on-demand snapshot and the events, as a user runs
them (kubectl finds kubectl-engram on PATH). The tests share one cluster."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import k8s_api
import pytest
from k8s_api import Kubectl, eventually_equal, wait_ready

NAME = "plugin"
SHARDS = 2
REPLICAS = 1


def kubectl_engram(kube: Kubectl, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The plugin as a user runs it: kubectl finds kubectl-engram on PATH (the venv's bin)."""
    env = {**os.environ, "PATH": f"{Path(sys.prefix) / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(["kubectl", "engram", *args, NAME, "-n", kube.namespace], env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module", autouse=True)
def cleanup(kube: Kubectl) -> Iterator[None]:
    yield
    k8s_api.delete_memorycluster(kube, NAME)


def test_the_cluster_becomes_ready(kube: Kubectl) -> None:
    kube.apply(k8s_api.memorycluster(NAME, SHARDS, REPLICAS))
    wait_ready(kube, NAME, SHARDS * (REPLICAS + 1))


def test_status_shows_every_node_and_each_shards_primary(kube: Kubectl) -> None:
    shown = kubectl_engram(kube, "status", "--json")
    assert shown.returncode == 0, shown.stderr
    doc = json.loads(shown.stdout)
    assert len(doc["nodes"]) == SHARDS * (REPLICAS + 1) and len(doc["journal"]) == 3
    primaries = {n["shard"]: n["id"] for n in doc["nodes"] if n["role"] == "primary"}
    assert [s["primary"] for s in doc["shard_status"]] == [primaries[s] for s in range(SHARDS)]


def test_switchover_hands_a_shard_to_the_replica_named_and_refuses_an_unknown_one(kube: Kubectl) -> None:
    doc = json.loads(kubectl_engram(kube, "status", "--json").stdout)
    target = next(n["id"] for n in doc["nodes"] if n["shard"] == 1 and n["role"] == "replica")
    switched = kubectl_engram(kube, "switchover", "--to", target)
    assert switched.returncode == 0, switched.stderr
    eventually_equal(
        kube,
        f"{target} primary of shard 1",
        lambda: k8s_api.status(kube, NAME)["shards"][1]["primary"],
        target,
        timeout=60,
    )
    refused = kubectl_engram(kube, "switchover", "--to", "nosuch")
    assert refused.returncode == 1 and "nosuch is not a node" in refused.stderr


def test_snapshot_waits_for_a_verified_snapshot_of_every_shard(kube: Kubectl) -> None:
    snapped = kubectl_engram(kube, "snapshot", "--wait", "--timeout", "600", timeout=660)
    assert snapped.returncode == 0, snapped.stderr
    assert snapped.stderr.count(": ok") == SHARDS, snapped.stderr


def test_events_lists_what_the_operator_posted(kube: Kubectl) -> None:
    events = kubectl_engram(kube, "events")
    assert events.returncode == 0 and "MemoryCluster/" + NAME in events.stdout, events.stderr
