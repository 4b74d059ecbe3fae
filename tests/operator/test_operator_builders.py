"""Manifest builders: valid Kubernetes objects, adopted, labelled, pinned and locked down."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from cluster_state import CLUSTER_ID, ZONES, journal_up, just_applied, provisioned, spec
from k8s_offline import validate_manifest

from engram.leadership.on_stop import STOP_HANDOVER_TIMEOUT
from engram.node.config import NodeConfig
from engram_operator import builders, constants, labels
from engram_operator.builders import engine as engine_builder
from engram_operator.builders.engine import (
    POD_IDENTITY_FIELDS,
    PRE_STOP_WAIT_SECONDS,
    shared_node_config,
    valkey_args,
)
from engram_operator.builders.journal import JournalSpreadError, plan_journal
from engram_operator.decisions import decide

SPECS = {
    "minimal": spec(),
    "three-zones": spec(
        shards=3,
        replicasPerShard=2,
        resources={"valkey": {"requests": {"memory": "2Gi"}, "limits": {"memory": "2Gi"}}},
        placement={"spreading": "Required"},
        journal={"storage": {"size": "20Gi", "storageClassName": "fast"}},
    ),
    # Snapshots on request only, with a node container sized for a snapshot's second copy.
    "snapshots": spec(
        shards=2,
        replicasPerShard=1,
        resources={
            "valkey": {"limits": {"memory": "1Gi"}},
            "node": {"requests": {"memory": "1280Mi"}, "limits": {"memory": "1280Mi"}},
        },
        snapshots={"intervalSeconds": 0, "tailEntries": 0, "keep": 1, "request": "2025-06-01T12:00:00Z"},
    ),
    # Declared users whose passwords need no Secret (a cache open to one user, the default user off).
    "users": spec(
        users=[{"name": "default", "rules": "off"}, {"name": "cache", "rules": "on nopass ~cache:* +@all"}],
    ),
    # Nodes set aside for databases: a label to select, a taint to tolerate, rules of the user's own.
    "dedicated-nodes": spec(
        shards=2,
        replicasPerShard=1,
        placement={
            "nodeSelector": {"pool": "databases"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "db", "effect": "NoSchedule"}],
            "affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]},
                            {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["nvme"]}]},
                        ]
                    }
                },
                "podAntiAffinity": {
                    "preferredDuringSchedulingIgnoredDuringExecution": [
                        {
                            "weight": 50,
                            "podAffinityTerm": {
                                "topologyKey": "kubernetes.io/hostname",
                                "labelSelector": {"matchLabels": {"app": "noisy"}},
                            },
                        }
                    ]
                },
            },
        },
    ),
}


def all_manifests(name: str) -> list[dict[str, Any]]:
    """Everything the operator creates for a new cluster, stage by stage: children, the users
    file's Secret, Job, pods."""
    cluster = SPECS[name]
    stages = (just_applied(cluster), journal_up(cluster), provisioned(cluster))
    plans = [decide(cluster, seen) for seen in stages]
    return [obj for plan in plans for obj in (*plan.create, *filter(None, [plan.users_secret]))]


@pytest.mark.parametrize("name", SPECS)
def test_a_new_cluster_creates_every_kind_of_child(name: str) -> None:
    kinds = {o["kind"] for o in all_manifests(name)}
    assert kinds == {
        "Service", "ConfigMap", "StatefulSet", "PodDisruptionBudget", "NetworkPolicy", "Secret", "Job", "Pod"
    }


@pytest.mark.parametrize("name", SPECS)
def test_every_generated_manifest_is_valid_for_kubernetes(name: str) -> None:
    for obj in all_manifests(name):
        validate_manifest(obj)


@pytest.mark.parametrize("name", SPECS)
def test_every_child_is_adopted_and_labelled(name: str) -> None:
    for obj in all_manifests(name):
        meta = obj["metadata"]
        assert meta["namespace"] == "db"
        [owner] = meta["ownerReferences"]
        assert owner == {
            "apiVersion": "engram.io/v1alpha1",
            "kind": "MemoryCluster",
            "name": "demo",
            "uid": "uid-1",
            "controller": True,
            "blockOwnerDeletion": True,
        }
        for key in (labels.NAME, labels.INSTANCE, labels.COMPONENT, labels.MANAGED_BY, labels.PART_OF):
            assert key in meta["labels"], (obj["kind"], meta["name"], key)
        assert meta["labels"][labels.CLUSTER] == "demo"


def _pod_specs(obj: dict[str, Any]) -> list[dict[str, Any]]:
    if obj["kind"] == "Pod":
        return [obj["spec"]]
    if obj["kind"] in ("StatefulSet", "Job"):
        return [obj["spec"]["template"]["spec"]]
    return []


@pytest.mark.parametrize("name", SPECS)
def test_pods_meet_the_restricted_pod_security_standard(name: str) -> None:
    for obj in all_manifests(name):
        for pod in _pod_specs(obj):
            assert pod["securityContext"]["runAsNonRoot"] is True
            assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
            for c in [*pod.get("initContainers", []), *pod["containers"]]:
                ctx = c["securityContext"]
                assert ctx["allowPrivilegeEscalation"] is False
                assert ctx["capabilities"] == {"drop": ["ALL"]}
                assert ctx["readOnlyRootFilesystem"] is True


@pytest.mark.parametrize("name", SPECS)
def test_no_pod_gets_service_environment_links(name: str) -> None:
    """A MemoryCluster named redis makes a Service redis; with links on, every pod of the namespace
    would get REDIS_PORT=tcp://..., which Valkey-era tools read as their own port setting."""
    pods = [pod for obj in all_manifests(name) for pod in _pod_specs(obj)]
    assert pods and all(pod["enableServiceLinks"] is False for pod in pods)


def test_engine_pod_is_pinned_to_its_zone_and_carries_its_node_config() -> None:
    cluster = SPECS["three-zones"]
    pod = builders.build_engine_pod(
        cluster, name="demo-1-2", shard=1, index=2, zone="zone-b", cluster_id=CLUSTER_ID
    )
    term = pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["nodeSelectorTerms"] == [
        {"matchExpressions": [{"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["zone-b"]}]}
    ]
    config = NodeConfig(**json.loads(pod["metadata"]["annotations"][labels.NODE_CONFIG]))
    assert (config.node_id, config.shard, config.zone) == ("demo-1-2", 1, "zone-b")
    assert (config.cluster_id, config.shards, config.preferred_primary) == (CLUSTER_ID, 3, False)
    assert config.spawn_valkey is False and config.host == "0.0.0.0"
    assert config.valkey_socket == "/run/engram/valkey.sock"
    assert config.announce == "demo-1-2.demo-nodes.db.svc.cluster.local:6379"
    assert config.journal_urls == [
        f"nats://demo-journal-{i}-0.demo-journal.db.svc.cluster.local:4222" for i in range(3)
    ]
    assert pod["spec"]["hostname"] == "demo-1-2" and pod["spec"]["subdomain"] == "demo-nodes"
    [config_volume] = [v for v in pod["spec"]["volumes"] if v["name"] == "config"]
    assert config_volume["downwardAPI"]["items"][0]["fieldRef"]["fieldPath"] == (
        "metadata.annotations['engram.io/node-config']"
    )


def test_valkey_serves_clients_with_the_module_and_the_node_on_its_socket_without_persistence() -> None:
    args = valkey_args(SPECS["three-zones"])
    flags = dict(zip(args[1::2], args[2::2], strict=False))
    assert args[0] == "valkey-server"
    # Clients connect to Valkey itself; the module holds write replies until the journal commits.
    assert flags["--port"] == "6379" and flags["--bind"] == "0.0.0.0"
    assert flags["--loadmodule"] == "/opt/engram/lib/engram.so"
    assert flags["--unixsocket"] == "/run/engram/valkey.sock" and flags["--unixsocketperm"] == "700"
    assert flags["--save"] == "" and flags["--appendonly"] == "no"
    # The node's replication tap needs diskless full syncs and a generous replica timeout.
    assert flags["--repl-diskless-sync"] == "yes" and flags["--repl-timeout"] == "3600"
    assert args[-2:] == ["--maxmemory", str(int(2 * 1024**3 * 0.75))]


def _engine_pod() -> dict[str, Any]:
    return builders.build_engine_pod(
        SPECS["three-zones"], name="demo-1-2", shard=1, index=2, zone="zone-b", cluster_id=CLUSTER_ID
    )


def _containers(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    spec_ = pod["spec"]
    return {c["name"]: c for c in [*spec_.get("initContainers", []), *spec_["containers"]]}


def test_the_valkey_container_loads_the_module_the_init_container_copies_from_the_engine_image() -> None:
    pod = _engine_pod()
    containers = _containers(pod)
    [init] = pod["spec"]["initContainers"]
    valkey = containers["valkey"]
    assert init["image"] == containers["node"]["image"] == SPECS["three-zones"].engine.resolved_image
    # glibc: the module is built on Debian in the engine image; musl (alpine) cannot load it.
    assert "alpine" not in valkey["image"]
    source, target = init["command"][-2:]
    assert init["command"][0] == "cp" and source == "/opt/engram/lib/engram.so"
    [staging] = init["volumeMounts"]
    assert target == f"{staging['mountPath']}/engram.so"
    module_path = dict(zip(valkey["command"][1::2], valkey["command"][2::2], strict=False))["--loadmodule"]
    [shared] = [m for m in valkey["volumeMounts"] if m["name"] == staging["name"]]
    assert module_path == f"{shared['mountPath']}/engram.so" and shared["readOnly"] is True
    assert {"name": staging["name"], "emptyDir": {}} in pod["spec"]["volumes"]


def test_clients_reach_valkey_and_the_operator_reaches_the_nodes_control_port() -> None:
    pod = _engine_pod()
    containers = _containers(pod)
    valkey, node = containers["valkey"], containers["node"]
    assert valkey["ports"] == [{"name": "valkey", "containerPort": 6379}]
    assert {"name": "admin", "containerPort": 16379} in node["ports"]
    assert not any(p["containerPort"] == 6379 for p in node["ports"])
    # Every question to the node goes to its own port: the client port answers while it starts.
    assert node["readinessProbe"]["exec"]["command"][-2:] == ["--port", "16379"]
    assert node["startupProbe"]["tcpSocket"]["port"] == 16379
    assert node["livenessProbe"]["tcpSocket"]["port"] == 16379
    config = NodeConfig(**json.loads(pod["metadata"]["annotations"][labels.NODE_CONFIG]))
    assert (config.port, config.admin_port) == (6379, 16379)
    assert config.admin_announce == "demo-1-2.demo-nodes.db.svc.cluster.local:16379"


def _run_pre_stop(tmp_path: Path, roles: list[str]) -> tuple[float, int]:
    """Run Valkey's preStop with a valkey-cli that answers ENGRAM.STATUS with ``roles`` in turn
    ("" = the node does not answer); returns how long it waited and how often it asked."""
    tmp_path.mkdir(exist_ok=True)
    calls = tmp_path / "calls"
    script = "\n".join(
        [
            "#!/bin/sh",
            f"n=$(cat {calls} 2>/dev/null || echo 0); echo $((n+1)) > {calls}",
            f"set -- {' '.join(r or '-' for r in roles)}",
            'shift "$n" 2>/dev/null || exit 1',
            '[ "${1:--}" = - ] && exit 1',
            'printf "node_id\\ndemo-0-0\\nrole\\n%s\\nepoch\\n3\\n" "$1"',
        ]
    )
    cli = tmp_path / "valkey-cli"
    cli.write_text(script + "\n")
    cli.chmod(0o755)
    started = time.monotonic()
    command = _containers(_engine_pod())["valkey"]["lifecycle"]["preStop"]["exec"]["command"]
    subprocess.run(
        command, env={**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}, check=True, timeout=60
    )
    return time.monotonic() - started, int(calls.read_text())


def test_valkey_outlives_its_node_while_the_node_hands_its_shard_over(tmp_path: Path) -> None:
    """On pod deletion both containers get SIGTERM; Valkey's preStop holds it back while the node
    still says primary (it hands over on SIGTERM), and not a moment longer."""
    waited, calls = _run_pre_stop(tmp_path, ["primary", "primary", "replica"])
    assert calls == 3 and 0.9 < waited < 5
    assert _run_pre_stop(tmp_path / "r", ["replica"])[1] == 1
    # A node that already exited (or never answered) holds nothing back.
    assert _run_pre_stop(tmp_path / "gone", [""])[1] == 1


def test_the_grace_period_covers_the_nodes_hand_over_and_valkeys_wait_for_it() -> None:
    pod = _engine_pod()
    grace = pod["spec"]["terminationGracePeriodSeconds"]
    assert STOP_HANDOVER_TIMEOUT < PRE_STOP_WAIT_SECONDS < grace
    # The node itself has no preStop: SIGTERM is its cue to hand over.
    assert "lifecycle" not in _containers(pod)["node"]


def test_services_carry_the_client_port_only() -> None:
    """Clients need 6379 alone; the operator and peers reach the control port by pod IP or DNS name."""
    cluster = SPECS["minimal"]
    for svc in (builders.build_endpoint_service(cluster), builders.build_headless_service(cluster)):
        assert svc["spec"]["ports"] == [{"name": "valkey", "port": 6379, "targetPort": "valkey"}]


def test_configuration_endpoint_selects_every_engine_pod_regardless_of_role() -> None:
    svc = builders.build_endpoint_service(SPECS["minimal"])
    assert labels.ROLE not in svc["spec"]["selector"]
    assert svc["spec"]["selector"][labels.COMPONENT] == "engine"
    headless = builders.build_headless_service(SPECS["minimal"])
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["publishNotReadyAddresses"] is True


def test_every_pod_of_a_cluster_gets_its_node_selector_tolerations_and_affinity() -> None:
    cluster = SPECS["dedicated-nodes"]
    pods = [(obj["kind"], pod) for obj in all_manifests("dedicated-nodes") for pod in _pod_specs(obj)]
    assert {kind for kind, _ in pods} == {"Pod", "StatefulSet", "Job"}
    for _, pod in pods:
        assert pod["nodeSelector"] == {"pool": "databases"}
        assert pod["tolerations"] == cluster.placement.tolerations
        assert (
            pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][-1][
                "weight"
            ]
            == 50
        )


def test_the_users_required_node_terms_never_let_a_pod_out_of_its_planned_zone() -> None:
    pod = builders.build_engine_pod(
        SPECS["dedicated-nodes"], name="demo-1-1", shard=1, index=1, zone="zone-b", cluster_id=CLUSTER_ID
    )
    affinity = pod["spec"]["affinity"]
    terms = affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    zone = {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["zone-b"]}
    # Terms are ORed: each of the user's two keeps its own rule and gains the zone pin.
    assert [t["matchExpressions"] for t in terms] == [
        [{"key": "disk", "operator": "In", "values": ["ssd"]}, zone],
        [{"key": "disk", "operator": "In", "values": ["nvme"]}, zone],
    ]
    # The operator's own anti-affinity (nodes of a shard on distinct hosts) stays first.
    [own, theirs] = affinity["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert own["podAffinityTerm"]["labelSelector"]["matchLabels"][labels.SHARD] == "1"
    assert theirs["podAffinityTerm"]["labelSelector"] == {"matchLabels": {"app": "noisy"}}
    # The spec is not changed by building pods from it.
    user_terms = SPECS["dedicated-nodes"].placement.affinity["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]["nodeSelectorTerms"]
    assert all(len(t["matchExpressions"]) == 1 for t in user_terms)


def test_pods_without_scheduling_settings_carry_none() -> None:
    pod = builders.build_engine_pod(
        SPECS["minimal"], name="demo-0-0", shard=0, index=0, zone="zone-a", cluster_id=CLUSTER_ID
    )
    assert "nodeSelector" not in pod["spec"] and "tolerations" not in pod["spec"]


def test_pod_spec_hash_changes_with_the_rendered_node_config() -> None:
    """A pod reads its config once, at start: a config change must roll the pods or never arrive."""
    base = builders.pod_spec_hash(spec())
    debug = spec(engine={"logLevel": "debug"})
    assert builders.pod_spec_hash(debug) != base
    pod = builders.build_engine_pod(
        debug, name="demo-0-0", shard=0, index=0, zone="zone-a", cluster_id=CLUSTER_ID
    )
    assert json.loads(pod["metadata"]["annotations"][labels.NODE_CONFIG])["log_level"] == "debug"


def test_pod_spec_hash_changes_when_a_new_operator_renders_the_node_config_differently(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    base = builders.pod_spec_hash(spec())
    # ENGRAM_CLUSTER_DOMAIN moves every journal URL in the node config.
    monkeypatch.setattr(constants, "CLUSTER_DOMAIN", "cluster.example")
    assert builders.pod_spec_hash(spec()) != base


def test_pod_spec_hash_changes_when_a_new_operator_renders_the_pod_differently(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A pod's spec is immutable: an operator that adds a hook or a probe must roll the pods."""
    base = builders.pod_spec_hash(spec())
    monkeypatch.setattr(engine_builder, "PRE_STOP_WAIT_SECONDS", 20)
    assert builders.pod_spec_hash(spec()) != base


def test_pod_spec_hash_changes_with_scheduling_not_with_pod_identity() -> None:
    base = builders.pod_spec_hash(spec())
    assert builders.pod_spec_hash(spec(placement={"nodeSelector": {"pool": "db"}})) != base
    assert builders.pod_spec_hash(spec(placement={"tolerations": [{"operator": "Exists"}]})) != base
    # Every pod of a cluster has its own name, shard and zone in its config; none of it rolls.
    assert shared_node_config(spec()).keys().isdisjoint(POD_IDENTITY_FIELDS)


def test_pod_spec_hash_changes_with_the_engine_not_with_replica_count() -> None:
    base = builders.pod_spec_hash(spec())
    assert builders.pod_spec_hash(spec(replicasPerShard=3)) == base
    assert builders.pod_spec_hash(spec(engine={"version": "0.2.0"})) != base
    assert builders.pod_spec_hash(spec(resources={"node": {"limits": {"memory": "1Gi"}}})) != base


def test_journal_servers_spread_one_per_zone_with_zone_tags() -> None:
    cluster = SPECS["three-zones"]
    placements = plan_journal(ZONES, 3, "Required")
    assert [p.zone for p in placements] == ZONES
    cm = builders.build_journal_config(cluster, placements)
    conf = cm["data"]["server-1.conf"]
    assert 'server_tags: ["az:zone-b"]' in conf
    assert 'unique_tag: "az"' in conf and 'sync_interval: "always"' in conf
    assert "nats-route://demo-journal-2-0.demo-journal.db.svc.cluster.local:6222" in conf
    sts = builders.build_journal_statefulset(cluster, placements[1])
    tmpl = sts["spec"]["template"]["spec"]
    expr = tmpl["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert expr["nodeSelectorTerms"][0]["matchExpressions"][0]["values"] == ["zone-b"]
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] == "Delete"
    claim = sts["spec"]["volumeClaimTemplates"][0]["spec"]
    assert claim["storageClassName"] == "fast" and claim["resources"]["requests"]["storage"] == "20Gi"


def test_journal_servers_size_their_go_threads_to_the_pod_cpu_limit() -> None:
    cluster = SPECS["three-zones"]
    sts = builders.build_journal_statefulset(cluster, plan_journal(ZONES, 3, "Required")[0])
    (nats,) = sts["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["valueFrom"]["resourceFieldRef"] for e in nats["env"]}
    assert env["GOMAXPROCS"] == {"containerName": "nats", "resource": "limits.cpu", "divisor": "1"}


def test_journal_sync_interval_reaches_every_server_config() -> None:
    cluster = spec(journal={"syncInterval": "100ms"})
    cm = builders.build_journal_config(cluster, plan_journal(ZONES, 3, "Required"))
    assert all('sync_interval: "100ms"' in conf for conf in cm["data"].values())


def test_five_journal_servers_round_robin_over_three_zones() -> None:
    assert [p.zone for p in plan_journal(ZONES, 5, "Required")] == [*ZONES, "zone-a", "zone-b"]


def test_journal_on_too_few_zones_is_refused_when_required_and_tagged_apart_when_preferred() -> None:
    with pytest.raises(JournalSpreadError, match="span 2 zone"):
        plan_journal(["zone-a", "zone-b"], 3, "Required")
    tags = [p.tag_zone for p in plan_journal(["zone-a"], 3, "Preferred")]
    assert len(set(tags)) == 3


def test_pdbs_allow_one_disruption_per_shard_and_for_the_journal() -> None:
    cluster = SPECS["three-zones"]
    pdb = builders.build_shard_pdb(cluster, 2)
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"][labels.SHARD] == "2"
    assert builders.build_journal_pdb(cluster)["spec"]["maxUnavailable"] == 1


def test_engine_pod_names_skip_names_still_held_by_terminating_pods() -> None:
    assert labels.engine_pod_name("demo", 0, 1) == "demo-0-1"
    assert labels.engine_pod_name("demo", 0, 1, {"demo-0-1", "demo-0-1-r1"}) == "demo-0-1-r2"


def test_provision_job_runs_engram_provision_against_every_journal_server() -> None:
    cluster = SPECS["three-zones"]
    job = builders.build_provision_job(cluster, CLUSTER_ID)
    validate_manifest(job)
    assert job["metadata"]["name"] == "demo-provision"
    assert job["metadata"]["labels"][labels.COMPONENT] == "provision"
    assert job["metadata"]["annotations"][labels.CLUSTER_ID] == CLUSTER_ID
    pod = job["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["image"] == cluster.engine.resolved_image
    args = container["command"]
    assert args[:2] == ["engram", "provision"]
    flags = dict(zip(args[2::2], args[3::2], strict=True))
    urls = ",".join(f"nats://demo-journal-{i}-0.demo-journal.db.svc.cluster.local:4222" for i in range(3))
    assert flags == {
        "--cluster": "demo",
        "--cluster-id": CLUSTER_ID,
        "--shards": "3",
        "--journal-replicas": "3",
        "--journal": urls,
        "--timeout": "60",
    }


def test_provision_job_is_bounded_and_fails_at_once_when_retrying_cannot_help() -> None:
    job = builders.build_provision_job(SPECS["minimal"], CLUSTER_ID)
    spec_ = job["spec"]
    assert spec_["backoffLimit"] > 0 and spec_["activeDeadlineSeconds"] > 0
    # `engram provision` exits 2 (bad arguments) or 3 (name held by another id, restore failed).
    [fail, evicted] = spec_["podFailurePolicy"]["rules"]
    assert fail == {
        "action": "FailJob",
        "onExitCodes": {"containerName": "provision", "operator": "In", "values": [2, 3]},
    }
    assert evicted["action"] == "Ignore"
    pod = spec_["template"]["spec"]
    # A podFailurePolicy needs every attempt in a pod of its own.
    assert pod["restartPolicy"] == "Never" and pod["automountServiceAccountToken"] is False
    [container] = pod["containers"]
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
