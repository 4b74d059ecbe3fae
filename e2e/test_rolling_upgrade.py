"""A rolling update on kind under a writer: replicas first, then a switchover, then the old primary;
no acknowledged write lost, and the longest pause a client saw reported.

spec.engine.logLevel is in the node configuration every pod shares, so changing it changes the
pods' engram.io/pod-spec-hash and rolls the cluster exactly as a new engine version does
(docs/operator.md, Rolling updates), without needing a second engine image on the kind nodes. The
tests run in file order and share one cluster and one writer.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import k8s_api
import pytest
from k8s_api import Kubectl, condition, eventually, eventually_equal, wait_ready
from workload import BackgroundWriter

NAME = "roll"
SHARDS = 2
REPLICAS = 1
PODS = SHARDS * (REPLICAS + 1)
ENGINE = k8s_api.engine_selector(NAME)
SPEC_HASH = "engram.io/pod-spec-hash"
NODE_CONFIG = "engram.io/node-config"
# (shard, node index) -> the pod in that slot before the roll: its uid, and whether it was primary.
BEFORE: dict[tuple[int, int], dict[str, Any]] = {}


def slot(pod: dict[str, Any]) -> tuple[int, int]:
    labels = pod["metadata"]["labels"]
    return int(labels["engram.io/shard"]), int(labels["engram.io/node-index"])


def live_pods(kube: Kubectl) -> list[dict[str, Any]]:
    return [p for p in kube.pods(ENGINE) if not p["metadata"].get("deletionTimestamp")]


def created(pod: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(pod["metadata"]["creationTimestamp"].replace("Z", "+00:00"))


@pytest.fixture(scope="module", autouse=True)
def cleanup(kube: Kubectl) -> Iterator[None]:
    yield
    k8s_api.delete_memorycluster(kube, NAME)


@pytest.fixture(scope="module")
def writer(kube: Kubectl, client_pod: str) -> BackgroundWriter:
    return BackgroundWriter(kube, client_pod, NAME, "roll")


def test_the_cluster_becomes_ready_and_serves_a_writer(kube: Kubectl, writer: BackgroundWriter) -> None:
    kube.apply(k8s_api.memorycluster(NAME, SHARDS, REPLICAS))
    wait_ready(kube, NAME, PODS)
    writer.start()


# One pod at a time, each replaying the journal before the next goes.
@pytest.mark.timeout(1000)
def test_changing_the_log_level_replaces_every_pod_while_writes_go_on(
    kube: Kubectl, writer: BackgroundWriter
) -> None:
    primaries = {s["primary"] for s in k8s_api.status(kube, NAME)["shards"]}
    pods = live_pods(kube)
    assert len(pods) == PODS and len(primaries) == SHARDS, (pods, primaries)
    old_hash = {p["metadata"]["annotations"][SPEC_HASH] for p in pods}
    assert len(old_hash) == 1, old_hash
    for pod in pods:
        BEFORE[slot(pod)] = {"uid": pod["metadata"]["uid"], "primary": pod["metadata"]["name"] in primaries}
    before = writer.acknowledged()

    patch = {"spec": {"engine": {"logLevel": "debug"}}}
    kube.run("patch", "memorycluster", NAME, "--type=merge", "-p", json.dumps(patch))

    def rolled(pods: list[dict[str, Any]]) -> bool:
        hashes = {p["metadata"]["annotations"][SPEC_HASH] for p in pods}
        uids = {p["metadata"]["uid"] for p in pods}
        return (
            len(pods) == PODS
            and all(k8s_api.is_ready(p) for p in pods)
            and len(hashes) == 1
            and not hashes & old_hash
            and not uids & {b["uid"] for b in BEFORE.values()}
        )

    pods = eventually(kube, "every engine pod replaced on the new spec and ready", lambda: live_pods(kube),
                      rolled, timeout=840, interval=5)
    assert all(json.loads(p["metadata"]["annotations"][NODE_CONFIG])["log_level"] == "debug" for p in pods)
    assert writer.acknowledged() > before + 100, "the writer made no progress during the roll"


def test_the_roll_is_over_and_the_cluster_ready(kube: Kubectl) -> None:
    eventually_equal(kube, "Ready", lambda: condition(kube, NAME, "Ready").get("status"), "True", timeout=120)
    eventually(
        kube,
        "Progressing no longer RollingUpdate",
        lambda: condition(kube, NAME, "Progressing"),
        lambda c: c.get("reason") != "RollingUpdate",
        timeout=60,
    )


def test_replicas_were_replaced_before_any_primary(kube: Kubectl) -> None:
    """Each slot's new pod was created after its old one went: every former replica's slot got its
    new pod before any former primary's slot did, and each shard was switched over on the way."""
    new = {slot(p): created(p) for p in live_pods(kube)}
    replicas = {s: new[s] for s, b in BEFORE.items() if not b["primary"]}
    primaries = {s: new[s] for s, b in BEFORE.items() if b["primary"]}
    assert len(replicas) == SHARDS * REPLICAS and len(primaries) == SHARDS, BEFORE
    order = sorted(new, key=new.__getitem__)
    print("pods replaced in this order (shard, index):", order, "former primaries:", sorted(primaries))
    assert max(replicas.values()) < min(primaries.values()), order
    events = k8s_api.cluster_events(kube, NAME)
    print("\n".join(f"{e['reason']}: {e['message']}" for e in events if e["reason"] in
                    ("RollingUpdate", "Switchover")))
    switched = [e for e in events if e["reason"] == "Switchover"]
    assert {f"shard {s}" for s, _ in primaries} <= {" ".join(e["message"].split()[1:3]) for e in switched}, (
        switched
    )


def test_every_acknowledged_write_reads_back_with_its_last_value(writer: BackgroundWriter) -> None:
    writer.stop_and_verify()
