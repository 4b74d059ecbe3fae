"""A node's configuration as the cluster decides it, the same on every platform.

The local platform (processes) and the operator (pods) each describe the cluster once
(NodeClusterSettings) and each node (NodeIdentity); node_config() makes every decision that does
not depend on where the node runs. A platform adds only what is truly its own (PLATFORM_FIELDS):
addresses, ports, paths, and how Valkey is run and serves TLS.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from engram.node.certificate import TlsFiles
from engram.node.config import NodeConfig
from engram.snapshots.schedule import SnapshotPolicy

# The user a locked journal knows the cluster's own processes by (docs/security.md).
JOURNAL_USER = "engram"

# Copies of a shard's stream: each on its own journal server (JetStream's unique tag puts them in
# distinct zones where there are enough); three survive a zone and then a server more.
MAX_STREAM_REPLICAS = 3

# NodeConfig fields a platform decides for itself, because they say where and how the node runs
# there: its addresses and ports, its files, and whether it spawns Valkey and who terminates client
# TLS. Everything else comes from node_config().
PLATFORM_FIELDS = frozenset({
    "port", "admin_port", "host", "announce", "data_dir", "metrics_port",
    "valkey_server", "spawn_valkey", "valkey_socket", "valkey_args", "tls_port", "valkey_tls",
})


def stream_replicas(journal_servers: int) -> int:
    """Replicas of every journal stream: one per journal server, at most MAX_STREAM_REPLICAS."""
    return min(MAX_STREAM_REPLICAS, journal_servers)


@dataclass(frozen=True)
class JournalServer:
    """One journal server as a node sees it: its name, the URL to dial, and its real zone ("" when
    not known, or when its tag is made up because there are fewer zones than stream replicas)."""

    name: str
    url: str
    zone: str = ""


def own_zone_first(zone: str, journal: Sequence[JournalServer]) -> list[str]:
    """A node's journal URLs, its own zone's servers first: a node then talks to a server it shares a
    fate with, and losing another zone never leaves it on a dead connection."""
    home = zone.lower()
    return [s.url for s in sorted(journal, key=lambda s: s.zone.lower() != home)]


@dataclass(frozen=True)
class JournalClientFiles:
    """A locked journal, as its clients reach it: the file with JOURNAL_USER's password, and the CA
    its servers' certificates are verified with."""

    password_file: str
    ca_file: str


@dataclass(frozen=True)
class NodeClusterSettings:
    """What every node of one cluster shares. Paths are where this platform puts the files."""

    name: str
    cluster_id: str
    # Shards of the cluster when the node is made (provisioning writes the slot map, not nodes).
    shards: int
    journal: tuple[JournalServer, ...]
    log_level: str
    lease_seconds: float = 2.0
    snapshots: SnapshotPolicy = field(default_factory=SnapshotPolicy)
    users_file: str = ""
    # A locked journal (TLS clusters); None: a plain, open journal.
    journal_files: JournalClientFiles | None = None
    # The cluster's certificate, which the node's control and metrics ports serve; None: plain text.
    tls: TlsFiles | None = None
    # The cluster's region when it is one of a multi-region cluster's (docs/multi-region.md): its
    # nodes stamp writes and refuse those that cannot merge. Empty: a single-region cluster.
    region: str = ""
    # The multi-region cluster's other regions: region -> that region's cluster name.
    linked_regions: Mapping[str, str] = field(default_factory=dict)
    # Key patterns of additive counters (multiregion/patterns.py).
    region_counters: tuple[str, ...] = ()
    # Key patterns of keys whose TTLs replicate (multiregion/patterns.py).
    region_ttls: tuple[str, ...] = ()

    @property
    def journal_replicas(self) -> int:
        return stream_replicas(len(self.journal))


@dataclass(frozen=True)
class NodeIdentity:
    """Which node this is: its id, its shard, its zone ("" when unknown), and whether the zone
    planner chose it as its brand-new shard's first primary."""

    node_id: str
    shard: int
    zone: str
    preferred_primary: bool = False


def node_config(cluster: NodeClusterSettings, node: NodeIdentity, **platform: Any) -> NodeConfig:
    """The node's NodeConfig; ``platform`` holds only PLATFORM_FIELDS (TypeError otherwise)."""
    if unknown := sorted(platform.keys() - PLATFORM_FIELDS):
        raise TypeError(f"node_config decides {', '.join(unknown)} itself; a platform sets only "
                        f"{', '.join(sorted(PLATFORM_FIELDS))}")
    values: dict[str, Any] = {
        "cluster": cluster.name,
        "cluster_id": cluster.cluster_id,
        "node_id": node.node_id,
        "shard": node.shard,
        # Every node needs the shard count: a node of shard 2 told shards=1 finds no slots of its own.
        "shards": cluster.shards,
        "preferred_primary": node.preferred_primary,
        "zone": node.zone,
        "journal_urls": own_zone_first(node.zone, cluster.journal),
        # Only real zones: a primary keeps its stream's leader out of its own zone by them, and a
        # made-up tag must not move a leader.
        "journal_zones": {s.name: s.zone for s in cluster.journal if s.zone},
        "journal_replicas": cluster.journal_replicas,
        "lease_seconds": cluster.lease_seconds,
        "log_level": cluster.log_level,
        "snapshot_interval": cluster.snapshots.interval,
        "snapshot_tail_entries": cluster.snapshots.tail_entries,
        "snapshot_keep": cluster.snapshots.keep,
        "users_file": cluster.users_file,
        "region": cluster.region,
        "linked_regions": dict(cluster.linked_regions),
        "region_counters": list(cluster.region_counters),
        "region_ttls": list(cluster.region_ttls),
    }
    if (journal := cluster.journal_files) is not None:
        values.update(journal_user=JOURNAL_USER, journal_password_file=journal.password_file,
                      journal_ca_file=journal.ca_file)
    if (tls := cluster.tls) is not None:
        values.update(tls_cert_file=tls.cert_file, tls_key_file=tls.key_file, tls_ca_file=tls.ca_file)
    return NodeConfig(**values, **platform)
