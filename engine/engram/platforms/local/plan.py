"""Plan a local cluster: zones, node ids, ports, files; write the node and journal configs."""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engram.cluster.users import UsersFileError, parse_users
from engram.journal.servers import SYNC_ALWAYS, sync_interval_problem
from engram.multiregion.patterns import key_pattern_problems
from engram.node.certificate import TlsFiles
from engram.node.config import NodeConfig
from engram.orchestration.node_config import (
    JournalClientFiles,
    JournalServer,
    NodeClusterSettings,
    NodeIdentity,
    stream_replicas,
)
from engram.orchestration.node_config import node_config as core_node_config
from engram.orchestration.provision import ProvisionRequest, new_cluster_id
from engram.orchestration.zones import NodePlacement, Spreading, ZonePlan, plan_zones
from engram.platforms.local import journal, network, ports, regions
from engram.platforms.local.state import ClusterState, JournalState, NodeState, check_name
from engram.platforms.local.tls import LocalTLS
from engram.snapshots.schedule import SnapshotPolicy

# Linux refuses unix socket paths longer than this (sun_path is 108 bytes with its NUL).
MAX_UNIX_SOCKET = 107


class PlanError(ValueError):
    """The requested cluster cannot be laid out as asked."""


@dataclass(frozen=True)
class ClusterSpec:
    """What the user asked for."""

    name: str
    shards: int = 1
    replicas: int = 2
    zones: tuple[str, ...] = ("a", "b", "c")
    base_port: int | None = None
    lease_seconds: float = 2.0
    log_level: str = "warning"
    # Snapshot triggers (0 turns one off): seconds between snapshots, entries since the newest.
    snapshot_interval: float = 3600.0
    snapshot_entries: int = 100_000
    # RDB files that seed the new cluster (`up --restore-from`).
    restore_from: tuple[str, ...] = ()
    # Or a running local cluster whose newest verified snapshots seed it (`up --restore-from-cluster`).
    restore_cluster: str = ""
    # Keys per seeded journal entry (0: as many as fit; 1 makes a long journal, for bench-recovery).
    restore_entry_keys: int = 0
    node_command: tuple[str, ...] = ()
    # Each zone in its own network namespace, so a zone can be partitioned (root only).
    netns: bool = False
    # When journal servers fsync: "always" (before acknowledging) or a duration (docs/durability.md).
    journal_sync: str = SYNC_ALWAYS
    # Users declared in Valkey's ACL file format; nodes read the file again when it changes.
    users_file: str = ""
    # The supervisor moves primaries back to an even spread over zones after failovers, once no
    # role has changed for rebalance_settle seconds.
    rebalance: bool = True
    rebalance_settle: float = 30.0
    # Lock the journal: TLS between every process and journal server, and passwords (docs/security.md).
    tls: bool = False
    # Clients over TLS too, terminated by each node (node/tls_front.py); with tls unless told not.
    client_tls: bool | None = None
    # This cluster is one region of a multi-region cluster (`up --regions`, regions.py).
    region_link: regions.RegionLink | None = None
    # Key patterns of additive counters (`up --regions ... --counters`, multiregion/patterns.py).
    region_counters: tuple[str, ...] = ()
    # Key patterns of keys whose TTLs replicate (`up --regions ... --ttls`).
    region_ttls: tuple[str, ...] = ()

    @property
    def serves_tls(self) -> bool:
        return self.tls if self.client_tls is None else self.client_tls

    def __post_init__(self) -> None:
        check_name(self.name)
        if self.users_file:
            try:
                parse_users(Path(self.users_file).read_text(encoding="utf-8"), f"--users {self.users_file}")
            except (OSError, UnicodeDecodeError) as exc:
                raise PlanError(f"--users {self.users_file}: cannot be read: {exc}") from exc
            except UsersFileError as exc:
                raise PlanError(str(exc)) from exc
        if problem := sync_interval_problem(self.journal_sync):
            raise PlanError(f"--journal-sync: {problem}")
        if self.shards < 1:
            raise PlanError(f"--shards must be at least 1, got {self.shards}")
        if self.replicas < 0:
            raise PlanError(f"--replicas must be 0 or more, got {self.replicas}")
        if not self.zones or len(set(self.zones)) != len(self.zones):
            raise PlanError(f"--zones must name one or more distinct zones, got {','.join(self.zones)!r}")
        if self.lease_seconds <= 0:
            raise PlanError(f"--lease must be positive, got {self.lease_seconds}")
        for flag, patterns in (("--counters", self.region_counters), ("--ttls", self.region_ttls)):
            if problems := key_pattern_problems(patterns):
                raise PlanError(f"{flag}: {'; '.join(problems)}")
        for path in self.restore_from:
            if not Path(path).is_file():
                raise PlanError(f"--restore-from {path}: no such file")
        if self.restore_from and self.restore_cluster:
            raise PlanError("--restore-from and --restore-from-cluster exclude each other: restore from "
                            "RDB files or from a cluster's snapshots")
        if self.restore_cluster == self.name:
            raise PlanError(f"--restore-from-cluster {self.name}: a new cluster cannot be restored from "
                            "itself; name the running cluster whose snapshots to restore")
        if self.client_tls and not self.tls:
            raise PlanError("clients over TLS come with --tls, which makes the cluster's certificates")
        if self.rebalance_settle < 0:
            raise PlanError(f"--rebalance-settle must not be negative, got {self.rebalance_settle:g}")
        if self.snapshot_interval < 0 or self.snapshot_entries < 0:
            raise PlanError("--snapshot-interval and --snapshot-entries must not be negative (0: off)")

    @property
    def node_count(self) -> int:
        return self.shards * (self.replicas + 1)

    @property
    def journal_replicas(self) -> int:
        """One journal server per zone (journal.plan_journal), so one stream replica per zone."""
        return stream_replicas(len(self.zones))


def zone_plan(spec: ClusterSpec) -> ZonePlan:
    """The zone planner's layout: a shard's nodes in distinct zones where the zones allow it
    (Preferred spreading, as a laptop may have fewer zones than nodes), primaries balanced."""
    return plan_zones(spec.zones, spec.shards, spec.replicas, Spreading.PREFERRED)


def node_id(name: str, shard: int, index: int) -> str:
    return f"{name}-s{shard}-n{index}"


def node_state(name: str, directory: Path, placement: NodePlacement, port: int, admin_port: int,
               tls_port: int, host: str, control_ca: str = "") -> NodeState:
    """One planned node: its id, zone, ports and files (for `up` and for shards added later).

    ``control_ca``: the cluster's CA file on a TLS cluster, whose control ports speak TLS."""
    nid = node_id(name, placement.shard, placement.index)
    return NodeState(
        id=nid,
        shard=placement.shard,
        zone=placement.zone,
        preferred_primary=placement.primary,
        port=port,
        admin_port=admin_port,
        tls_port=tls_port,
        control_ca=control_ca,
        config=str(directory / "nodes" / nid / "node.json"),
        log=str(directory / "logs" / f"{nid}.log"),
        host=host,
    )


def port_count(spec: ClusterSpec) -> int:
    """Ports a cluster needs (see port_layout)."""
    return 1 + 2 * spec.node_count + 3 * len(spec.zones) + (spec.node_count if spec.serves_tls else 0)


def port_layout(
    spec: ClusterSpec, numbers: list[int]
) -> tuple[int, list[int], list[int], list[int], list[int]]:
    """Split the allocated ports: (endpoint, node client ports, journal ports, node control ports,
    node TLS ports).

    With --port BASE the order is predictable (docs/local-platform.md): the endpoint, every node's
    client port, three per journal server, every node's control port, then every node's TLS port
    when the cluster serves TLS. Later additions come last so that earlier ports keep their numbers.
    """
    if len(numbers) != port_count(spec):
        raise ValueError(f"the cluster needs {port_count(spec)} ports, got {len(numbers)}")
    n = spec.node_count
    journal_end = 1 + n + 3 * len(spec.zones)
    return (numbers[0], numbers[1 : 1 + n], numbers[1 + n : journal_end],
            numbers[journal_end : journal_end + n], numbers[journal_end + n :])


def plan(spec: ClusterSpec, directory: Path, nats_server: str, valkey_server: str,
         restore_journal: list[str] | None = None) -> ClusterState:
    """Lay the cluster out: allocate every port (raising PortBusy) and name every file.

    restore_journal: the journal URLs of spec.restore_cluster, which must be running."""
    if spec.restore_cluster and not restore_journal:
        raise PlanError(f"--restore-from-cluster {spec.restore_cluster}: its journal servers are not known")
    # Control ports are allocated, not derived (client port + 10000): an ephemeral client port
    # plus 10000 can pass 65535, and nothing would check that it is free.
    numbers = ports.allocate(port_count(spec), spec.base_port)
    # A configured port range is every port the cluster may take, 6379 included only if inside it.
    prefer_default = spec.base_port is None and ports.configured_range() is None
    default = ports.DEFAULT_ENDPOINT_PORT
    if prefer_default and default not in numbers and ports.claim(default):
        numbers[0] = default
    endpoint, node_ports, rest, admin_ports, tls_ports = port_layout(spec, numbers)
    net = network.plan_network(str(directory), spec.zones) if spec.netns else None
    hosts = {link.zone: link.address for link in net.links} if net else {}
    nodes = []
    zones = zone_plan(spec)
    for placement in zones.nodes:
        i = len(nodes)
        nodes.append(node_state(spec.name, directory, placement, node_ports[i], admin_ports[i],
                                tls_ports[i] if tls_ports else 0, hosts.get(placement.zone, ports.LOOPBACK),
                                LocalTLS(directory / "tls").ca_file if spec.tls else ""))
    return ClusterState(
        name=spec.name,
        dir=str(directory),
        endpoint_port=endpoint,
        shards=spec.shards,
        replicas=spec.replicas,
        zones=list(spec.zones),
        lease_seconds=spec.lease_seconds,
        snapshot_interval=spec.snapshot_interval,
        snapshot_entries=spec.snapshot_entries,
        restore_from=[str(Path(p).resolve()) for p in spec.restore_from],
        restore_cluster=spec.restore_cluster,
        restore_journal=list(restore_journal or []),
        restore_entry_keys=spec.restore_entry_keys,
        journal_sync=spec.journal_sync,
        users_file=str(Path(spec.users_file).resolve()) if spec.users_file else "",
        rebalance=spec.rebalance,
        rebalance_settle=spec.rebalance_settle,
        tls=spec.tls,
        base_port=spec.base_port,
        region=link.region if (link := spec.region_link) else "",
        linked_regions=dict(link.linked) if link else {},
        leaf_ports=dict(link.listen) if link else {},
        leaf_remotes={r: list(urls) for r, urls in link.dials} if link else {},
        link_password=link.password if link else "",
        leaf_ca_files=dict(link.ca_files) if link else {},
        link_relays=[list(relay) for relay in link.relays] if link else [],
        link_cuts_dir=link.cuts_dir if link else "",
        region_counters=list(spec.region_counters),
        region_ttls=list(spec.region_ttls),
        nats_server=nats_server,
        valkey_server=valkey_server,
        nodes=nodes,
        journal=journal.plan_journal(spec.name, spec.zones, directory, rest, hosts),
        node_command=list(spec.node_command),
        network=net,
        cluster_id=new_cluster_id(),
    )


def journal_replicas(state: ClusterState) -> int:
    """Replicas of every journal stream: one per journal server (one per zone), at most three."""
    return stream_replicas(len(state.journal))


def provision_request(state: ClusterState) -> ProvisionRequest:
    """What provisioning creates for this cluster, once, before its first node starts."""
    return ProvisionRequest(state.name, state.cluster_id, state.shards, journal_replicas(state),
                            restore_from=tuple(state.restore_from), restore_cluster=state.restore_cluster,
                            restore_journal=tuple(state.restore_journal),
                            restore_entry_keys=state.restore_entry_keys)


def cluster_settings(state: ClusterState, log_level: str = "warning") -> NodeClusterSettings:
    """What every node of the local cluster shares, for the orchestration core's node_config."""
    tls = state.local_tls
    return NodeClusterSettings(
        name=state.name,
        cluster_id=state.cluster_id,
        shards=state.shards,
        journal=tuple(JournalServer(j.name, j.url, j.zone) for j in state.journal),
        log_level=log_level,
        lease_seconds=state.lease_seconds,
        snapshots=SnapshotPolicy(state.snapshot_interval, state.snapshot_entries),
        users_file=state.users_file,
        journal_files=JournalClientFiles(tls.password_file, tls.ca_file) if tls else None,
        # A TLS cluster's control and metrics ports speak TLS, whether or not its clients do.
        tls=TlsFiles(tls.cert_file, tls.key_file, tls.ca_file) if tls else None,
        region=state.region,
        linked_regions=dict(state.linked_regions),
        region_counters=tuple(state.region_counters),
        region_ttls=tuple(state.region_ttls),
    )


def node_config(state: ClusterState, node: NodeState, log_level: str = "warning") -> NodeConfig:
    """The NodeConfig a node process is started with: the core's decisions, and local processes'
    addresses, files and Valkey binary."""
    data_dir = str(Path(node.config).parent)
    platform: dict[str, Any] = {}
    if state.tls and node.tls_port:
        # The node terminates client TLS itself (node/tls_front.py): local Valkey has no certificate.
        platform["tls_port"] = node.tls_port
    if len(str(Path(data_dir) / "valkey.sock")) > MAX_UNIX_SOCKET:
        platform["valkey_socket"] = short_socket(data_dir)
    return core_node_config(
        cluster_settings(state, log_level),
        NodeIdentity(node.id, node.shard, node.zone, node.preferred_primary),
        port=node.port, admin_port=node.control_port, host=node.host, data_dir=data_dir,
        valkey_server=state.valkey_server, **platform,
    )


def short_socket(data_dir: str) -> str:
    """A unix socket path for a node whose data directory is too deep to hold one (sun_path limit)."""
    digest = hashlib.sha256(data_dir.encode()).hexdigest()[:16]
    return str(Path(tempfile.gettempdir()) / f"engram-{digest}.sock")


def node_configs(state: ClusterState, nodes: list[NodeState], log_level: str) -> list[NodeConfig]:
    """The nodes' configs, or PlanError when the directory is too deep for a Valkey socket."""
    configs = [node_config(state, node, log_level) for node in nodes]
    for config in configs:
        if len(config.valkey_socket) > MAX_UNIX_SOCKET:
            raise PlanError(
                f"the directory {state.dir} is too deep: a node's Valkey socket path would be "
                f"{len(config.valkey_socket)} bytes, over the {MAX_UNIX_SOCKET} Linux allows; "
                "use a shorter --dir"
            )
    return configs


def write_node_configs(nodes: list[NodeState], configs: list[NodeConfig]) -> None:
    """Create each node's data directory and write its config there."""
    for node, config in zip(nodes, configs, strict=True):
        Path(config.data_dir).mkdir(parents=True, exist_ok=True)
        config.dump(node.config)


def region_blocks(state: ClusterState) -> journal.ExtraBlocks | None:
    """A region's journal servers' accounts and leafnodes blocks (each zone's listener, every
    remote); None for a cluster that is no region."""
    if not state.leaf_ports:
        return None

    tls = state.local_tls
    engine = (auth.user, auth.password) if tls is not None and (auth := tls.auth()) else None

    def blocks(server: JournalState) -> tuple[str, ...]:
        return regions.link_blocks(state.region, server.host, state.leaf_ports[server.zone],
                                   state.leaf_remotes, state.link_password,
                                   tls.server_tls() if tls else None, state.leaf_ca_files, engine)

    return blocks


def write_files(state: ClusterState, log_level: str = "warning") -> None:
    """Create the cluster's directories and write every journal and node config."""
    configs = node_configs(state, state.nodes, log_level)
    (Path(state.dir) / "logs").mkdir(parents=True, exist_ok=True)
    tls = state.local_tls
    if tls is not None:
        # One certificate for the cluster's servers: journal servers and nodes share their addresses,
        # and the endpoint on loopback relays TLS to a node, which must answer for that name too.
        tls.ensure([ports.LOOPBACK] + [j.host for j in state.journal] + [n.host for n in state.nodes])
    journal.write_configs(state.journal, f"{state.name}-journal", state.journal_sync,
                          tls.server_tls() if tls else None, tls.auth() if tls else None,
                          domain=state.region, extra=region_blocks(state))
    write_node_configs(state.nodes, configs)
