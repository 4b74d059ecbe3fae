"""Issue 13: for the same cluster the local platform (processes) and the operator (pods) give every node
the same configuration, apart from what is truly each platform's own (where and how the node runs).

Both call engram.orchestration.node_config; this test keeps a platform from deciding a field itself.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from cluster_state import CLUSTER_ID, ZONES, provisioned, spec

from engram.node.config import NodeConfig
from engram.orchestration.node_config import PLATFORM_FIELDS
from engram.platforms.local import plan
from engram_operator import labels
from engram_operator.decisions import decide
from engram_operator.observe import SecretData

SHARDS = 3
REPLICAS = 2
LOG_LEVEL = "debug"
SNAPSHOT_INTERVAL = 60.0
SNAPSHOT_ENTRIES = 500
USERS = "user app on >app-secret ~app:* +@read +@write\n"
APP = {"name": "app", "rules": "~app:* +@read +@write",
       "passwordSecret": {"name": "app-pw", "key": "password"}}

# Fields that differ between the platforms by design, each with why. The core leaves the first group
# to the platform (PLATFORM_FIELDS); the rest it decides, from inputs that name platform things.
PLATFORM_SPECIFIC = {
    # Where the node listens and is reached: loopback ports locally, fixed container ports and the
    # pod's DNS name in Kubernetes.
    "port", "admin_port", "host", "announce", "metrics_port",
    # Files: a directory per node locally, the pod's fixed mount points in Kubernetes.
    "data_dir", "valkey_socket",
    # Locally the node spawns the Valkey binary it is given; a pod runs Valkey in its own container.
    "valkey_server", "spawn_valkey", "valkey_args",
    # Who terminates client TLS: the node locally (tls_front, on tls_port), Valkey itself in a pod.
    "tls_port", "valkey_tls",
    # Names: a process is named for its shard and index, a pod as Kubernetes names it (and renames
    # a replacement); the journal servers likewise.
    "node_id", "journal_urls", "journal_zones",
    # Paths of the same files: compared below for being set on both, not for their value.
    "users_file", "journal_password_file", "journal_ca_file", "tls_cert_file", "tls_key_file", "tls_ca_file",
}
PATH_FIELDS = ("users_file", "journal_password_file", "journal_ca_file", "tls_cert_file", "tls_key_file",
               "tls_ca_file")


def local_configs(tmp_path: Path, tls: bool) -> dict[tuple[int, int], NodeConfig]:
    """(shard, index) -> the NodeConfig `engram local up` writes, for the cluster of this test."""
    users = tmp_path / "users.acl"
    users.write_text(USERS)
    cluster = plan.ClusterSpec(name="demo", shards=SHARDS, replicas=REPLICAS, zones=tuple(ZONES), tls=tls,
                               log_level=LOG_LEVEL, snapshot_interval=SNAPSHOT_INTERVAL,
                               snapshot_entries=SNAPSHOT_ENTRIES, users_file=str(users))
    state = plan.plan(cluster, tmp_path / "demo", "nats-server", "valkey-server")
    # Provisioning chooses the id on either platform; give both the same one.
    state = dataclasses.replace(state, cluster_id=CLUSTER_ID)
    configs = plan.node_configs(state, state.nodes, cluster.log_level)
    zone_of = {j.url: j.zone for j in state.journal}
    # Journal URLs are addresses; what must agree is the order of their zones.
    for config in configs:
        config.journal_urls = [zone_of[url] for url in config.journal_urls]
    return {(n.shard, int(n.id.rpartition("-n")[2])): c for n, c in zip(state.nodes, configs, strict=True)}


def operator_configs(tls: bool) -> dict[tuple[int, int], NodeConfig]:
    """(shard, index) -> the NodeConfig the operator gives the pods of a new cluster."""
    overrides: dict[str, Any] = {
        "shards": SHARDS, "replicasPerShard": REPLICAS, "engine": {"logLevel": LOG_LEVEL}, "users": [APP],
        "snapshots": {"intervalSeconds": SNAPSHOT_INTERVAL, "tailEntries": SNAPSHOT_ENTRIES},
    }
    if tls:
        overrides["tls"] = {"secretName": "demo-certs"}
    cluster = spec(**overrides)
    seen = dataclasses.replace(provisioned(cluster), password_secrets={
        "app-pw": SecretData("app-pw", found=True, data={"password": b"app-secret"})})
    out = {}
    for pod in decide(cluster, seen).create:
        if pod["kind"] != "Pod":
            continue
        meta = pod["metadata"]
        config = NodeConfig(**json.loads(meta["annotations"][labels.NODE_CONFIG]))
        # A pod dials a journal server by its DNS name, whose first label is the server's name.
        config.journal_urls = [config.journal_zones.get(str(urlsplit(url).hostname).split(".")[0], "")
                               for url in config.journal_urls]
        out[(int(meta["labels"][labels.SHARD]), int(meta["labels"][labels.NODE_INDEX]))] = config
    return out


def shared(config: NodeConfig) -> dict[str, Any]:
    """The fields both platforms must agree on."""
    return {k: v for k, v in dataclasses.asdict(config).items() if k not in PLATFORM_SPECIFIC}


def test_the_platform_specific_list_holds_every_field_the_core_leaves_to_a_platform() -> None:
    assert PLATFORM_FIELDS <= PLATFORM_SPECIFIC
    assert PLATFORM_SPECIFIC <= {f.name for f in dataclasses.fields(NodeConfig)}


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_both_platforms_configure_every_node_alike(tmp_path: Path, tls: bool) -> None:
    local, pods = local_configs(tmp_path, tls), operator_configs(tls)
    assert sorted(local) == sorted(pods) == [(s, i) for s in range(SHARDS) for i in range(REPLICAS + 1)]
    for slot, config in local.items():
        pod = pods[slot]
        assert shared(config) == shared(pod), slot
        # Each node dials its own zone's journal server first, then the others in the same order.
        assert config.journal_urls == pod.journal_urls and config.journal_urls[0] == config.zone, slot
        assert sorted(config.journal_zones.values()) == sorted(pod.journal_zones.values()) == ZONES
        for path in PATH_FIELDS:
            assert bool(getattr(config, path)) == bool(getattr(pod, path)) == (path == "users_file" or tls)
        # Either platform's node serves client TLS exactly when the cluster has it, in its own way.
        assert bool(config.tls_port or config.valkey_tls) == bool(pod.tls_port or pod.valkey_tls) == tls


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_every_node_of_a_three_shard_cluster_knows_there_are_three_shards(tmp_path: Path, tls: bool) -> None:
    """The operator once left shards (and preferred_primary) out: shard 2 of 3 believed in one shard,
    and every slot went to shard 0."""
    local, pods = local_configs(tmp_path, tls), operator_configs(tls)
    for configs in (local, pods):
        assert configs[(2, 0)].shard == 2 and configs[(2, 0)].shards == SHARDS
        assert {c.shards for c in configs.values()} == {SHARDS}
        assert sum(c.preferred_primary for c in configs.values()) == SHARDS
    # And both platforms let the same node of each shard campaign first (the zone planner's choice).
    firsts = [{slot for slot, c in configs.items() if c.preferred_primary} for configs in (local, pods)]
    assert firsts[0] == firsts[1]
