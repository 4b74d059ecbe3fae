"""A MultiRegionCluster on kind: two regions as two namespaces of one Kubernetes cluster, a key
written in one region read back in the other, and the status showing each region's lag.

The tests run in file order and share one multi-region cluster (docs/multi-region.md, "On Kubernetes").
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator

import k8s_api
import pytest
from k8s_api import Kubectl, eventually, eventually_equal

NAME = "mr"
SHARDS = 1
REGIONS = ("east", "west")
ENGINE_IMAGE = "ghcr.io/engram-db/engram:0.1.0"
# redis-py's cluster client, from the engine image: HOST COMMAND ARGS... prints the reply.
CLIENT = (
    "import sys, redis; c = redis.RedisCluster(host=sys.argv[1], port=6379, decode_responses=True); "
    "print(c.execute_command(*sys.argv[2:]) or '')"
)


@pytest.fixture(scope="module")
def region_namespaces(kube: Kubectl) -> Iterator[dict[str, str]]:
    """One namespace per region beside the file's own, deleted afterwards even when tests fail."""
    suffix = uuid.uuid4().hex[:6]
    namespaces = {r: f"e2e-mr-{r}-{suffix}" for r in REGIONS}
    for ns in namespaces.values():
        subprocess.run(["kubectl", "create", "namespace", ns], check=True, capture_output=True)
    try:
        yield namespaces
    finally:
        kube.run("delete", "multiregioncluster", NAME, "--ignore-not-found", "--wait=false", check=False)
        for ns in namespaces.values():
            subprocess.run(["kubectl", "delete", "namespace", ns, "--wait=false"], capture_output=True)


def _status(kube: Kubectl) -> dict:
    return kube.get("multiregioncluster", NAME).get("status") or {}


def _condition(kube: Kubectl, ctype: str) -> str:
    return next((c["status"] for c in _status(kube).get("conditions") or [] if c["type"] == ctype), "")


def test_two_regions_in_two_namespaces_become_ready_and_linked(
    kube: Kubectl, region_namespaces: dict[str, str]
) -> None:
    kube.run("create", "secret", "generic", "mr-link", "--from-literal=user=link",
             f"--from-literal=password={uuid.uuid4().hex}")
    kube.apply({
        "apiVersion": "engram.io/v1alpha1",
        "kind": "MultiRegionCluster",
        "metadata": {"name": NAME},
        "spec": {
            "regions": [{"name": r, "namespace": ns} for r, ns in region_namespaces.items()],
            "template": {"shards": SHARDS, "replicasPerShard": 1,
                         "journal": {"replicas": 3, "storage": {"size": "1Gi"}}},
            "link": {"secretName": "mr-link"},
        },
    })
    for region, ns in region_namespaces.items():
        k8s_api.wait_ready(Kubectl(ns), f"{NAME}-{region}", SHARDS * 2)
    eventually_equal(kube, "RegionsReady", lambda: _condition(kube, "RegionsReady"), "True", timeout=300)
    eventually_equal(kube, "Linked", lambda: _condition(kube, "Linked"), "True", timeout=300)


def test_a_key_written_in_east_is_read_in_west(
    kube: Kubectl, region_namespaces: dict[str, str]
) -> None:
    east, west = (Kubectl(region_namespaces[r]) for r in REGIONS)
    host = {r: f"{NAME}-{r}.{ns}.svc.cluster.local" for r, ns in region_namespaces.items()}
    kube.run("run", "mr-client", f"--image={ENGINE_IMAGE}", "--restart=Never", "--command", "--",
             "sleep", "3600")
    eventually(kube, "client running", lambda: kube.get("pod", "mr-client")["status"].get("phase"),
               lambda p: p == "Running", timeout=120)
    value = uuid.uuid4().hex
    kube.exec("mr-client", "python", "-c", CLIENT, host["east"], "SET", "mr:key", value)
    eventually_equal(
        kube, "the key in west",
        lambda: kube.exec("mr-client", "python", "-c", CLIENT, host["west"], "GET", "mr:key").strip(),
        value, timeout=120,
    )
    assert east.namespace != west.namespace


def test_status_shows_the_lag_of_every_region_pair_and_shard(kube: Kubectl) -> None:
    status = _status(kube)
    pairs = {(row["region"], row["from"], row["shard"]) for row in status["lag"]}
    assert pairs == {("east", "west", 0), ("west", "east", 0)}
    assert status["readyRegions"] == "2/2" and status["maxLag"] is not None
    assert "MAX LAG" in kube.run("get", "mrc", NAME)
