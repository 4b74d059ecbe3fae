"""spec.restoreFrom on kind: a new MemoryCluster seeded from another's snapshots, and a failed restore.

The tests run in file order and share the source cluster. They run after test_memorycluster.py,
whose cluster is gone by then, so that two journals at most share the kind nodes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from k8s_api import Kubectl, eventually, eventually_equal, memorycluster

from conftest import ENGINE_IMAGE

SOURCE = "rsource"
COPY = "rcopy"
BAD = "rbad"
ACKED: dict[str, str] = {}




def status(kube: Kubectl, name: str) -> dict[str, Any]:
    return kube.get("memorycluster", name).get("status") or {}


def condition(kube: Kubectl, name: str, ctype: str) -> dict[str, Any]:
    return next((c for c in status(kube, name).get("conditions") or [] if c["type"] == ctype), {})


def endpoint(kube: Kubectl, name: str) -> str:
    return f"{name}.{kube.namespace}.svc.cluster.local"


def engine_pods(name: str) -> str:
    return f"engram.io/cluster={name},app.kubernetes.io/component=engine"


@pytest.fixture(scope="module", autouse=True)
def cleanup(kube: Kubectl) -> Iterator[None]:
    """The clusters of this file go when it ends, pass or fail: the next file gets the nodes back."""
    yield
    for name in (COPY, BAD, SOURCE):
        kube.run("delete", "memorycluster", name, "--ignore-not-found", "--wait=false", check=False)
    kube.run("delete", "pod", "rdb-writer", "--ignore-not-found", check=False)
    kube.run("delete", "pvc", "bad-rdb", "--ignore-not-found", "--wait=false", check=False)


def test_the_api_server_refuses_a_cluster_restored_from_itself(kube: Kubectl) -> None:
    selfish = memorycluster("selfish", 1, 0, restoreFrom={"cluster": {"name": "selfish"}})
    out = kube.run("apply", "-f", "-", stdin=json.dumps(selfish), check=False)
    assert not kube.exists("memorycluster", "selfish"), out


def test_the_source_serves_writes_and_takes_a_verified_snapshot_of_every_shard(
    kube: Kubectl, client_pod: str
) -> None:
    kube.apply(memorycluster(SOURCE, 2, 1))
    eventually_equal(
        kube, "source Ready", lambda: condition(kube, SOURCE, "Ready").get("status"), "True", timeout=600
    )
    acked = kube.exec(client_pod, "python", "/tmp/writer.py", endpoint(kube, SOURCE), "5", "restore")
    ACKED["keys"] = acked
    assert acked.count("\n") > 10
    request = "e2e-restore"
    kube.run(
        "patch",
        "memorycluster",
        SOURCE,
        "--type=merge",
        "-p",
        json.dumps({"spec": {"snapshots": {"request": request}}}),
    )
    results = eventually(
        kube,
        "the source's snapshot request answered by every shard",
        lambda: status(kube, SOURCE).get("snapshots") or {},
        lambda s: s.get("lastRequest") == request,
        timeout=600,
    )["results"]
    assert [r["succeeded"] for r in results] == [True, True], results
    eventually(
        kube,
        "status.snapshots.allShardsSince of the source",
        lambda: (status(kube, SOURCE).get("snapshots") or {}).get("allShardsSince"),
        bool,
        timeout=120,
    )


def test_a_new_cluster_restored_from_the_source_serves_every_acknowledged_write(
    kube: Kubectl, client_pod: str
) -> None:
    # Three shards from two: every key goes to the shard owning its slot.
    kube.apply(memorycluster(COPY, 3, 0, restoreFrom={"cluster": {"name": SOURCE}}))
    eventually_equal(
        kube,
        "restored cluster Ready",
        lambda: condition(kube, COPY, "Ready").get("status"),
        "True",
        timeout=600,
    )
    provisioned = condition(kube, COPY, "Provisioned")
    assert provisioned["reason"] == "Restored", provisioned
    restored = status(kube, COPY)["restoredFrom"]
    assert restored["cluster"]["name"] == SOURCE
    assert restored["cluster"]["clusterId"] == status(kube, SOURCE)["clusterId"]
    job = kube.get("job", f"{COPY}-provision")
    command = job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[command.index("--restore-from-cluster") + 1] == SOURCE
    result = kube.exec(client_pod, "python", "/tmp/verify.py", endpoint(kube, COPY), stdin=ACKED["keys"])
    assert result.startswith("checked") and " lost 0" in result, result


def test_restore_from_cannot_change_once_the_cluster_exists(kube: Kubectl) -> None:
    patch = {"spec": {"restoreFrom": {"cluster": {"name": "elsewhere"}}}}
    out = kube.run("patch", "memorycluster", COPY, "--type=merge", "-p", json.dumps(patch), check=False)
    assert kube.get("memorycluster", COPY)["spec"]["restoreFrom"] == {"cluster": {"name": SOURCE}}, out


def test_a_file_that_is_not_an_rdb_fails_the_restore_for_good_and_says_why(kube: Kubectl) -> None:
    kube.apply(
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "bad-rdb"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "64Mi"}}},
        }
    )
    kube.apply(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "rdb-writer"},
            "spec": {
                "restartPolicy": "Never",
                "containers": [
                    {
                        "name": "write",
                        "image": ENGINE_IMAGE,
                        "command": ["sh", "-c", "echo 'this is not an rdb file' > /data/dump.rdb"],
                        "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                    }
                ],
                "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "bad-rdb"}}],
            },
        }
    )
    eventually_equal(
        kube, "the file written", lambda: kube.get("pod", "rdb-writer")["status"].get("phase"), "Succeeded"
    )
    kube.run("delete", "pod", "rdb-writer", "--wait=true")
    kube.apply(memorycluster(BAD, 1, 0, restoreFrom={"rdb": {"claimName": "bad-rdb", "paths": ["dump.rdb"]}}))
    failed = eventually(
        kube,
        "Provisioned False with reason RestoreFailed",
        lambda: condition(kube, BAD, "Provisioned"),
        lambda c: c.get("reason") == "RestoreFailed",
        timeout=300,
    )
    assert failed["status"] == "False" and "kubectl delete job" in failed["message"], failed
    assert condition(kube, BAD, "Degraded")["reason"] == "RestoreFailed"
    job = kube.get("job", f"{BAD}-provision")
    uid = job["metadata"]["uid"]
    events = kube.run(
        "get", "events", f"--field-selector=involvedObject.name={BAD},reason=RestoreFailed", "-o", "name"
    )
    assert events.strip()
    # Not retried: the same failed Job stays, and no engine pod starts.
    time.sleep(20)  # four reconciles
    assert kube.get("job", f"{BAD}-provision")["metadata"]["uid"] == uid
    assert kube.count_pods_with_label(engine_pods(BAD)) == 0
