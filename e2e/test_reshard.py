"""Online resharding on kind: spec.shards 1 -> 3 -> 2 under a writer, and no acknowledged write lost.

The tests run in file order and share one cluster and one writer, which overwrites a set of keys
through the configuration endpoint the whole time and logs every acknowledged write; the last test
reads every key back through the cluster client.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from k8s_api import Kubectl, eventually, eventually_equal, memorycluster

NAME = "reshard"
ENGINE = f"engram.io/cluster={NAME},app.kubernetes.io/component=engine"
STOP = "/tmp/reshard.stop"
ACKED = "/tmp/reshard.acked"
# Bounds the writer should the test die before it stops it.
WRITER_SECONDS = 3600


def status(kube: Kubectl) -> dict[str, Any]:
    return kube.get("memorycluster", NAME).get("status") or {}


def condition(kube: Kubectl, ctype: str) -> dict[str, Any]:
    return next((c for c in status(kube).get("conditions") or [] if c["type"] == ctype), {})


def endpoint(kube: Kubectl) -> str:
    return f"{NAME}.{kube.namespace}.svc.cluster.local"


def acknowledged(kube: Kubectl, client_pod: str) -> int:
    """Writes the writer has logged as acknowledged so far."""
    return int(kube.exec(client_pod, "sh", "-c", f"grep -vc '^?' {ACKED} || true").strip() or 0)


def job_complete(kube: Kubectl, name: str) -> bool:
    conditions = (kube.get("job", name).get("status") or {}).get("conditions") or []
    return any(c["type"] == "Complete" and c["status"] == "True" for c in conditions)


def reshard_to(kube: Kubectl, client_pod: str, shards: int) -> None:
    """Patch spec.shards, then wait for the reshard to finish with its Job complete, while the
    writer's acknowledged writes keep growing."""
    before = acknowledged(kube, client_pod)
    kube.run("patch", "memorycluster", NAME, "--type=merge", "-p", json.dumps({"spec": {"shards": shards}}))
    eventually(
        kube,
        f"a reshard to {shards} shards reported in status.resharding",
        lambda: status(kube).get("resharding") or {},
        lambda r: r.get("toShards") == shards,
        timeout=120,
    )
    done = eventually(
        kube,
        f"status.resharding phase done for {shards} shards",
        lambda: status(kube).get("resharding") or {},
        lambda r: r.get("toShards") == shards and r.get("phase") in ("done", "failed"),
        timeout=780,
        interval=5,
    )
    assert done["phase"] == "done", (done, condition(kube, "Resharding"))
    assert done["slotsMoved"] > 0, done
    eventually(
        kube,
        f"job {NAME}-reshard-{shards} complete",
        lambda: job_complete(kube, f"{NAME}-reshard-{shards}"),
        bool,
        timeout=60,
    )
    resharding = condition(kube, "Resharding")
    assert (resharding["status"], resharding["reason"]) == ("False", "Done"), resharding
    assert acknowledged(kube, client_pod) > before, "the writer made no progress during the reshard"


@pytest.fixture(scope="module", autouse=True)
def cleanup(kube: Kubectl) -> Iterator[None]:
    """The cluster goes when the file ends, pass or fail: the next file gets the nodes back."""
    yield
    kube.run("delete", "memorycluster", NAME, "--ignore-not-found", "--wait=false", check=False)


def test_a_one_shard_cluster_serves_a_writer_that_logs_every_acknowledged_write(
    kube: Kubectl, client_pod: str
) -> None:
    kube.apply(memorycluster(NAME, 1, 1))
    eventually_equal(
        kube, "cluster Ready", lambda: condition(kube, "Ready").get("status"), "True", timeout=600
    )
    assert condition(kube, "Resharding")["reason"] == "NotResharded"
    kube.exec(client_pod, "rm", "-f", STOP, f"{STOP}.done", ACKED)
    kube.exec(
        client_pod,
        "sh",
        "-c",
        f"nohup python /tmp/rewriter.py {endpoint(kube)} {WRITER_SECONDS} rs {STOP} "
        f"> {ACKED} 2> /tmp/reshard.err &",
    )
    eventually(
        kube,
        "the writer's first hundred acknowledged writes",
        lambda: acknowledged(kube, client_pod),
        lambda n: n >= 100,
        timeout=120,
    )


def test_growing_to_three_shards_starts_their_pods_and_moves_slots_online(
    kube: Kubectl, client_pod: str
) -> None:
    reshard_to(kube, client_pod, 3)
    eventually_equal(
        kube,
        "six engine pods ready",
        lambda: kube.count_pods_with_label(ENGINE, ready_only=True),
        6,
        timeout=300,
    )
    shards = status(kube)["shards"]
    assert [s["id"] for s in shards] == [0, 1, 2] and all(s["primary"] for s in shards), shards


def test_shrinking_to_two_shards_moves_shard_twos_slots_away_then_removes_its_pods(
    kube: Kubectl, client_pod: str
) -> None:
    reshard_to(kube, client_pod, 2)
    eventually_equal(
        kube,
        "no engine pod of shard 2",
        lambda: kube.count_pods_with_label(f"{ENGINE},engram.io/shard=2"),
        0,
        timeout=120,
    )
    eventually_equal(
        kube,
        "four engine pods ready",
        lambda: kube.count_pods_with_label(ENGINE, ready_only=True),
        4,
        timeout=300,
    )
    events = kube.run("get", "events", f"--field-selector=involvedObject.name={NAME}", "-o", "json")
    reasons = {e["reason"] for e in json.loads(events)["items"]}
    assert {"Resharding", "Resharded", "RemovingDrainedShards"} <= reasons, reasons


def test_every_acknowledged_write_reads_back_with_its_last_value(kube: Kubectl, client_pod: str) -> None:
    kube.exec(client_pod, "touch", STOP)
    eventually(
        kube,
        "the writer stopped",
        lambda: kube.exec(client_pod, "sh", "-c", f"test -e {STOP}.done && echo yes || echo no").strip(),
        lambda said: said == "yes",
        timeout=60,
    )
    acked = kube.exec(client_pod, "cat", ACKED)
    assert acked.count("\n") > 500, kube.exec(client_pod, "tail", "-20", "/tmp/reshard.err")
    result = kube.exec(client_pod, "python", "/tmp/verify_last.py", endpoint(kube), stdin=acked)
    assert result.startswith("checked") and " lost 0" in result, result
