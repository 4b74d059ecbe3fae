"""A zone cordoned versus a zone lost, on kind, under a writer (docs/operator.md, Lost, cordoned,
blinking).

Cordoned (Ready but unschedulable, how a drain starts): nothing is deleted, the primary there hands
its shard to a replica elsewhere, the cluster stays Ready. Lost (every node of the zone NotReady for
the operator's 60 s grace, on top of the node controller's ~40 s): the zone's kind worker container
is killed, as an outage would (no SIGTERM to anyone, so no planned hand-over); the shards it led
fail over, its pods are replaced in the other zones, writes go on and none is lost. The worker is
started again at the end, even when a test fails, so the next file gets all three zones back.
The tests run in file order and share one cluster and one writer.
"""

from __future__ import annotations

import subprocess
from collections import Counter
from collections.abc import Iterator
from typing import Any

import k8s_api
import pytest
from k8s_api import OPERATOR_NAMESPACE, OPERATOR_SELECTOR, Kubectl, eventually, node_zones, wait_ready
from workload import BackgroundWriter

NAME = "zones"
SHARDS = 3
REPLICAS = 1
PODS = SHARDS * (REPLICAS + 1)
ENGINE = k8s_api.engine_selector(NAME)
JOURNAL = f"engram.io/cluster={NAME},app.kubernetes.io/component=journal"
# kind names each node's Docker container after the node. Both lists are undone at teardown.
CORDONED: list[str] = []
KILLED: list[str] = []
LOST: dict[str, Any] = {}


def live(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


def uids(kube: Kubectl) -> set[str]:
    return {p["metadata"]["uid"] for p in kube.pods(f"engram.io/cluster={NAME}")}


def nodes_ready(kube: Kubectl, names: list[str]) -> dict[str, bool]:
    ready = {}
    for node in kube.get("nodes")["items"]:
        if node["metadata"]["name"] in names:
            ready[node["metadata"]["name"]] = k8s_api.is_ready(node)
    return ready


def zone_of_pod(kube: Kubectl, pod: dict[str, Any]) -> str:
    return node_zones(kube).get(pod["spec"].get("nodeName", ""), "")


def restore(kube: Kubectl) -> None:
    """Start the killed workers, uncordon, and wait until every node is Ready again."""
    for container in KILLED:
        subprocess.run(["docker", "start", container], check=False, capture_output=True, timeout=120)
    for node in CORDONED:
        kube.run("uncordon", node, check=False)
    if KILLED:
        eventually(
            kube,
            f"nodes {KILLED} Ready again",
            lambda: nodes_ready(kube, KILLED),
            lambda ready: len(ready) == len(KILLED) and all(ready.values()),
            timeout=300,
            interval=5,
        )
    KILLED.clear()
    CORDONED.clear()


@pytest.fixture(scope="module", autouse=True)
def cleanup(kube: Kubectl) -> Iterator[None]:
    """The zone comes back and the cluster goes when the file ends, pass or fail."""
    yield
    try:
        restore(kube)
    finally:
        k8s_api.delete_memorycluster(kube, NAME)


@pytest.fixture(scope="module")
def writer(kube: Kubectl, client_pod: str) -> BackgroundWriter:
    return BackgroundWriter(kube, client_pod, NAME, "zones")


def test_a_cluster_over_three_zones_serves_a_writer(kube: Kubectl, writer: BackgroundWriter) -> None:
    kube.apply(k8s_api.memorycluster(NAME, SHARDS, REPLICAS, placement={"spreading": "Required"}))
    wait_ready(kube, NAME, PODS)
    writer.start()


def test_a_cordoned_zone_hands_its_primary_over_and_nothing_is_deleted(
    kube: Kubectl, writer: BackgroundWriter
) -> None:
    zone = k8s_api.status(kube, NAME)["shards"][0]["primaryZone"]
    nodes = [name for name, z in node_zones(kube).items() if z == zone]
    assert zone and nodes, (zone, nodes)
    before, acked = uids(kube), writer.acknowledged()
    try:
        for node in nodes:
            CORDONED.append(node)
            kube.run("cordon", node)
        eventually(
            kube,
            f"no primary left in cordoned zone {zone}",
            lambda: [s["primaryZone"] for s in k8s_api.status(kube, NAME)["shards"]],
            lambda zones: all(zones) and zone not in zones,
            timeout=120,
        )
        cordoned = [e for e in k8s_api.cluster_events(kube, NAME) if e["reason"] == "NodeCordoned"]
        assert cordoned, "no NodeCordoned event"
        writer.wait_for_more(acked, 100, "writes acknowledged with a zone cordoned")
        # A cordon deletes nothing: the same engine and journal pods, none terminating.
        assert uids(kube) == before
        assert len(live(kube.pods(f"engram.io/cluster={NAME}"))) == len(before)
        assert k8s_api.condition(kube, NAME, "Ready")["status"] == "True"
    finally:
        restore(kube)


# The node controller's ~40 s, the operator's 60 s grace, then new pods replay the journal.
@pytest.mark.timeout(1200)
def test_a_lost_zone_fails_its_shards_over_and_its_pods_are_replaced_in_the_other_zones(
    kube: Kubectl, client_pod: str, writer: BackgroundWriter
) -> None:
    zones = node_zones(kube)
    operator = Kubectl(OPERATOR_NAMESPACE).pods(OPERATOR_SELECTOR)
    # Neither the operator nor the writer may be in the zone lost: the test watches them work on.
    spared = {zones.get(p["spec"].get("nodeName", ""), "") for p in operator}
    spared.add(zone_of_pod(kube, kube.get("pod", client_pod)))
    engine = live(kube.pods(ENGINE))
    primaries = {s["primary"] for s in k8s_api.status(kube, NAME)["shards"]}
    led = Counter(zone_of_pod(kube, p) for p in engine if p["metadata"]["name"] in primaries)
    candidates = sorted({z for z in zones.values() if z} - spared, key=lambda z: -led[z])
    assert candidates, f"every zone holds the operator or the client pod: {spared}"
    zone = candidates[0]
    victims = [p["metadata"]["name"] for p in engine if zone_of_pod(kube, p) == zone]
    LOST.update(zone=zone, victims=victims)
    acked = writer.acknowledged()

    for node in sorted(n for n, z in zones.items() if z == zone):
        KILLED.append(node)
        subprocess.run(["docker", "kill", node], check=True, capture_output=True, timeout=60)
    eventually(
        kube,
        f"the nodes of zone {zone} NotReady",
        lambda: nodes_ready(kube, KILLED),
        lambda ready: len(ready) == len(KILLED) and not any(ready.values()),
        timeout=180,
        interval=5,
    )

    def replaced(pods: list[dict[str, Any]]) -> bool:
        serving = live(pods)
        return (
            len(serving) == PODS
            and all(k8s_api.is_ready(p) for p in serving)
            and not any(p["metadata"]["name"] in victims for p in serving)
            and all(p["metadata"]["labels"]["engram.io/zone"] != zone for p in serving)
        )

    eventually(kube, f"the pods of zone {zone} replaced in the other zones", lambda: kube.pods(ENGINE),
               replaced, timeout=600, interval=5)
    shards = eventually(
        kube,
        f"every shard led from outside zone {zone}",
        lambda: k8s_api.status(kube, NAME)["shards"],
        lambda shards: len(shards) == SHARDS
        and all(s["primary"] and s["primaryZone"] != zone for s in shards),
        timeout=120,
    )
    for shard in shards:
        assert len(set(shard["zones"])) == len(shard["zones"]), shard
    lost = [e for e in k8s_api.cluster_events(kube, NAME) if e["reason"] == "ZoneLost"]
    assert lost and zone in lost[0]["message"], lost
    writer.wait_for_more(acked, 200, f"writes acknowledged after zone {zone} was lost")


@pytest.mark.timeout(1200)
def test_the_zone_comes_back_and_the_cluster_is_whole_again(kube: Kubectl) -> None:
    restore(kube)
    # The kubelet is back: the lost pods it never confirmed deleted are finally gone.
    eventually(
        kube,
        "the lost zone's old pods gone",
        lambda: {p["metadata"]["name"] for p in kube.pods(ENGINE)},
        lambda names: not names & set(LOST["victims"]),
        timeout=300,
        interval=5,
    )
    eventually(
        kube,
        "three journal servers ready",
        lambda: kube.count_pods_with_label(JOURNAL, ready_only=True),
        lambda n: n == 3,
        timeout=300,
    )
    wait_ready(kube, NAME, PODS, timeout=300)


def test_every_acknowledged_write_reads_back_with_its_last_value(writer: BackgroundWriter) -> None:
    writer.stop_and_verify()
