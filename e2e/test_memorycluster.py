"""A MemoryCluster on kind: provisioning, placement per zone, a stock client, primary loss, clean deletion.

The tests run in file order and share one cluster (creating it is the expensive part).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from k8s_api import Kubectl, eventually, eventually_equal, is_ready

NAME = "e2e"
SHARDS = 2
REPLICAS = 2
ENGINE = f"engram.io/cluster={NAME},app.kubernetes.io/component=engine"


def memorycluster() -> dict:
    return {
        "apiVersion": "engram.io/v1alpha1",
        "kind": "MemoryCluster",
        "metadata": {"name": NAME},
        "spec": {
            "shards": SHARDS,
            "replicasPerShard": REPLICAS,
            "placement": {"spreading": "Required"},
            "journal": {"replicas": 3, "storage": {"size": "1Gi"}},
        },
    }


def ready_condition(kube: Kubectl) -> str:
    conditions = kube.get("memorycluster", NAME).get("status", {}).get("conditions", [])
    return next((c["status"] for c in conditions if c["type"] == "Ready"), "missing")


def endpoint(kube: Kubectl) -> str:
    return f"{NAME}.{kube.namespace}.svc.cluster.local"


def test_memorycluster_becomes_ready(kube: Kubectl) -> None:
    kube.apply(memorycluster())
    eventually_equal(
        kube,
        "journal servers ready",
        lambda: kube.count_pods_with_label(
            f"engram.io/cluster={NAME},app.kubernetes.io/component=journal", ready_only=True
        ),
        3,
        timeout=300,
    )
    eventually_equal(
        kube,
        "engine pods ready",
        lambda: kube.count_pods_with_label(ENGINE, ready_only=True),
        SHARDS * (REPLICAS + 1),
        timeout=600,
    )
    eventually_equal(kube, "Ready condition", lambda: ready_condition(kube), "True", timeout=120)


def test_pods_land_one_per_zone_per_shard(kube: Kubectl) -> None:
    nodes = {
        n["metadata"]["name"]: n["metadata"]["labels"].get("topology.kubernetes.io/zone")
        for n in kube.get("nodes")["items"]
    }
    for shard in range(SHARDS):
        pods = kube.pods(f"{ENGINE},engram.io/shard={shard}")
        zones = [nodes[p["spec"]["nodeName"]] for p in pods]
        assert sorted(zones) == ["zone-a", "zone-b", "zone-c"], (shard, zones)
        # The label the operator set matches where the scheduler really put the pod.
        assert all(p["metadata"]["labels"]["engram.io/zone"] == nodes[p["spec"]["nodeName"]] for p in pods)
    status = kube.get("memorycluster", NAME)["status"]
    assert all(s["primary"] for s in status["shards"])


def test_provisioning_job_succeeded_and_every_shard_owns_slots(kube: Kubectl, client_pod: str) -> None:
    status = kube.get("memorycluster", NAME)["status"]
    provisioned = next(c for c in status["conditions"] if c["type"] == "Provisioned")
    assert provisioned["status"] == "True" and status["clusterId"], provisioned
    assert kube.get("job", f"{NAME}-provision")["status"].get("succeeded") == 1
    shards = json.loads(kube.exec(client_pod, "python", "/tmp/shards.py", endpoint(kube)))
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


def test_cluster_client_writes_and_reads_through_the_configuration_endpoint(
    kube: Kubectl, client_pod: str
) -> None:
    acked = kube.exec(client_pod, "python", "/tmp/writer.py", endpoint(kube), "5", "smoke")
    assert acked.count("\n") > 10
    result = kube.exec(client_pod, "python", "/tmp/verify.py", endpoint(kube), stdin=acked)
    assert result.startswith("checked") and " lost 0" in result, result


def _kubectl_engram(kube: Kubectl, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """The plugin as a user runs it: kubectl finds kubectl-engram on PATH (the venv's bin)."""
    env = {**os.environ, "PATH": f"{Path(sys.prefix) / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(["kubectl", "engram", *args, NAME, "-n", kube.namespace], env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def test_kubectl_engram_shows_the_cluster_switches_over_and_snapshots(kube: Kubectl) -> None:
    shown = _kubectl_engram(kube, "status", "--json")
    assert shown.returncode == 0, shown.stderr
    doc = json.loads(shown.stdout)
    assert len(doc["nodes"]) == SHARDS * (REPLICAS + 1) and len(doc["journal"]) == 3
    primaries = {n["shard"]: n["id"] for n in doc["nodes"] if n["role"] == "primary"}
    assert [s["primary"] for s in doc["shard_status"]] == [primaries[s] for s in range(SHARDS)]
    target = next(n["id"] for n in doc["nodes"] if n["shard"] == 1 and n["role"] == "replica")
    switched = _kubectl_engram(kube, "switchover", "--to", target)
    assert switched.returncode == 0, switched.stderr
    def primary_of_shard_1() -> str:
        return kube.get("memorycluster", NAME)["status"]["shards"][1]["primary"]

    eventually_equal(kube, f"{target} primary of shard 1", primary_of_shard_1, target, timeout=60)
    refused = _kubectl_engram(kube, "switchover", "--to", "nosuch")
    assert refused.returncode == 1 and "nosuch is not a node" in refused.stderr
    snapped = _kubectl_engram(kube, "snapshot", "--wait", "--timeout", "600", timeout=660)
    assert snapped.returncode == 0, snapped.stderr
    assert snapped.stderr.count(": ok") == SHARDS, snapped.stderr
    events = _kubectl_engram(kube, "events")
    assert events.returncode == 0 and "MemoryCluster/" + NAME in events.stdout, events.stderr


def test_deleting_a_primary_loses_no_acknowledged_write_and_the_pod_comes_back(
    kube: Kubectl, client_pod: str
) -> None:
    status = kube.get("memorycluster", NAME)["status"]
    victim = status["shards"][0]["primary"]
    kube.exec(
        client_pod,
        "sh",
        "-c",
        f"nohup python /tmp/writer.py {endpoint(kube)} 40 failover > /tmp/acked 2> /tmp/writer.err &",
    )
    time.sleep(10)
    kube.run("delete", "pod", victim, "--wait=false")
    eventually(
        kube,
        f"a new primary for shard 0 other than {victim}",
        lambda: kube.get("memorycluster", NAME)["status"]["shards"][0]["primary"],
        lambda p: bool(p) and p != victim,
        timeout=120,
    )
    eventually_equal(
        kube,
        "engine pods ready again",
        lambda: kube.count_pods_with_label(ENGINE, ready_only=True),
        SHARDS * (REPLICAS + 1),
        timeout=300,
    )
    time.sleep(35)  # let the writer finish its 40 seconds
    acked = kube.exec(client_pod, "cat", "/tmp/acked")
    assert acked.count("\n") > 50, kube.exec(client_pod, "tail", "-20", "/tmp/writer.err")
    result = kube.exec(client_pod, "python", "/tmp/verify.py", endpoint(kube), stdin=acked)
    assert " lost 0" in result, result
    restored = [p for p in kube.pods(f"{ENGINE},engram.io/shard=0") if is_ready(p)]
    assert Counter(p["metadata"]["labels"]["engram.io/zone"] for p in restored) == {
        "zone-a": 1,
        "zone-b": 1,
        "zone-c": 1,
    }


def test_impossible_spec_is_degraded_and_changes_nothing(kube: Kubectl) -> None:
    before = sorted(p["metadata"]["uid"] for p in kube.pods(ENGINE))
    kube.run("patch", "memorycluster", NAME, "--type=merge", "-p", '{"spec":{"replicasPerShard":3}}')
    eventually(
        kube,
        "Degraded condition",
        lambda: kube.get("memorycluster", NAME)["status"]["conditions"],
        lambda cs: any(c["type"] == "Degraded" and c["status"] == "True" for c in cs),
        timeout=60,
    )
    events = kube.run("get", "events", f"--field-selector=involvedObject.name={NAME}", "-o", "name")
    assert events.strip()
    assert sorted(p["metadata"]["uid"] for p in kube.pods(ENGINE)) == before
    kube.run(
        "patch", "memorycluster", NAME, "--type=merge", "-p", f'{{"spec":{{"replicasPerShard":{REPLICAS}}}}}'
    )


def test_bad_spec_is_refused_by_the_api_server_naming_the_field(kube: Kubectl) -> None:
    bad = memorycluster()
    bad["metadata"]["name"] = "bad"
    bad["spec"]["shards"] = 0
    out = kube.run("apply", "-f", "-", stdin=__import__("json").dumps(bad), check=False)
    assert not kube.exists("memorycluster", "bad"), out


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
