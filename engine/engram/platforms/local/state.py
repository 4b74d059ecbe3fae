"""A local cluster's state file, DIR/NAME/state.json: its plan, its processes and their pids."""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from engram.journal.security import PLAIN, JournalSecurity
from engram.platforms.local.network import ZoneNetwork
from engram.platforms.local.ports import LOOPBACK
from engram.platforms.local.tls import LocalTLS

STATE_FILE = "state.json"
# Survives `down --keep-data`: the provisioned cluster's id, so `up` resumes the same cluster.
IDENTITY_FILE = "identity.json"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,39}$")

# Phases the supervisor walks through; `up` reports them as progress.
PLANNED = "planned"
JOURNAL_STARTING = "journal-starting"
JOURNAL_READY = "journal-ready"
NODES_STARTED = "nodes-started"
STOPPING = "stopping"
FAILED = "failed"


def default_base_dir() -> Path:
    """The per-user state directory: $XDG_STATE_HOME/engram, else ~/.local/state/engram."""
    xdg = os.environ.get("XDG_STATE_HOME")
    root = Path(xdg) if xdg else Path.home() / ".local" / "state"
    return root / "engram"


def check_name(name: str) -> str:
    """A cluster name becomes a directory, node ids and journal stream names: keep it plain."""
    if not _NAME.match(name):
        raise ValueError(
            f"cluster name {name!r} must start with a letter or digit and hold only letters, digits, "
            "'-' and '_' (at most 40 characters)"
        )
    return name


def cluster_dir(base: str | Path, name: str) -> Path:
    return Path(base).expanduser().absolute() / check_name(name)


def state_path(base: str | Path, name: str) -> Path:
    return cluster_dir(base, name) / STATE_FILE


@dataclass
class NodeState:
    """One engine node: its place in the cluster, its files and its current process."""

    id: str
    shard: int
    zone: str
    port: int
    config: str
    log: str
    # The zone planner's primary for this shard; it campaigns first on a brand-new shard.
    preferred_primary: bool = False
    pid: int | None = None
    restarts: int = 0
    last_exit: int | None = None
    # 127.0.0.1, or the zone's address when each zone has its own network namespace.
    host: str = LOOPBACK
    # The node's control port (ENGRAM.STATUS, ENGRAM.FAILOVER), allocated by the plan like `port`.
    # 0 only in state files written before control ports existed: their nodes took port + 10000.
    admin_port: int = 0
    # Where the node serves clients over TLS (--tls; node/tls_front.py); 0: Valkey's port serves them.
    tls_port: int = 0
    # The cluster's CA when the node's control port speaks TLS (--tls); "": plain text.
    control_ca: str = ""
    # What the node runs, recorded by the supervisor when it starts it: the node command (argv before
    # `--config PATH`) and the valkey-server it names in its config. `engram local upgrade` changes
    # them one node at a time, so a half-done upgrade shows here. Empty: not started yet.
    command: list[str] = field(default_factory=list)
    valkey_server: str = ""

    @property
    def client_port(self) -> int:
        """The port clients use: the TLS one when the cluster has it."""
        return self.tls_port or self.port

    @property
    def address(self) -> str:
        """Where clients connect: the node's data path."""
        return f"{self.host}:{self.client_port}"

    @property
    def control_port(self) -> int:
        return self.admin_port or self.port + 10000

    @property
    def admin(self) -> str:
        """Where the platform asks the node what it is and requests switchovers."""
        return f"{self.host}:{self.control_port}"


@dataclass
class JournalState:
    """One journal (nats-server) process, one per zone."""

    zone: str
    name: str
    port: int
    cluster_port: int
    http_port: int
    config: str
    store_dir: str
    log: str
    pid: int | None = None
    restarts: int = 0
    last_exit: int | None = None
    host: str = LOOPBACK

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def target(self) -> str:
        """The name `engram local kill` knows this server by."""
        return f"journal-{self.zone}"


@dataclass
class ClusterState:
    """Everything `engram local` and the supervisor share about one cluster."""

    name: str
    dir: str
    endpoint_port: int
    shards: int
    replicas: int
    zones: list[str]
    lease_seconds: float
    nats_server: str
    valkey_server: str
    nodes: list[NodeState] = field(default_factory=list)
    journal: list[JournalState] = field(default_factory=list)
    # Replaces `python -m engram.node` (profilers, test doubles); empty: the real node.
    node_command: list[str] = field(default_factory=list)
    supervisor_pid: int | None = None
    # The node the endpoint relays new connections to: shard 0's primary ("" while none is known).
    endpoint_node: str = ""
    phase: str = PLANNED
    error: str = ""
    # Set when every zone runs in its own network namespace (`up --netns`), so zones can be partitioned.
    network: ZoneNetwork | None = None
    # Chosen once when the cluster is planned; its streams and metadata carry it.
    cluster_id: str = ""
    # Provisioning created the streams and metadata; it never runs again for this cluster.
    provisioned: bool = False
    snapshot_interval: float = 3600.0
    snapshot_entries: int = 100_000
    restore_from: list[str] = field(default_factory=list)
    # A local cluster whose snapshots seed this one, and its journal URLs (read when this one was planned).
    restore_cluster: str = ""
    restore_journal: list[str] = field(default_factory=list)
    restore_entry_keys: int = 0
    journal_sync: str = "always"
    users_file: str = ""
    # Move primaries back to an even spread over zones (orchestration/rebalance.py), once no role
    # has changed for rebalance_settle seconds.
    rebalance: bool = True
    rebalance_settle: float = 30.0
    # The journal is locked: TLS and passwords, its files in DIR/NAME/tls (platforms/local/tls.py).
    tls: bool = False
    # `up --port BASE`: nodes of shards added later take the ports after the cluster's highest.
    base_port: int | None = None
    # The last shard request (platforms/local/shard_nodes.py) the supervisor carried out, and why it
    # failed ("" when it did not).
    shard_request: str = ""
    shard_request_error: str = ""
    # The same for the last node request (platforms/local/node_requests.py: `engram local upgrade`).
    node_request: str = ""
    node_request_error: str = ""
    # The same for the last replica request (platforms/local/replica_nodes.py: `scale --replicas`).
    replica_request: str = ""
    replica_request_error: str = ""
    # A region of a multi-region cluster (`up --regions`, platforms/local/regions.py): the region
    # (its journal's JetStream domain), the other regions' clusters, the leafnode port each zone's
    # journal server listens on for them, the leafnode URLs of the regions it dials, and the
    # password of the link (engram.multiregion.link.LinkAuth).
    region: str = ""
    linked_regions: dict[str, str] = field(default_factory=dict)
    leaf_ports: dict[str, int] = field(default_factory=dict)
    leaf_remotes: dict[str, list[str]] = field(default_factory=dict)
    link_password: str = ""
    # Under --tls: the CA of each other region, which its leafnode certificate is verified against.
    leaf_ca_files: dict[str, str] = field(default_factory=dict)
    # The relays this region's dials go through, as [other region, relay port, its leafnode port],
    # and where the markers of cut links are (platforms/local/link_relay.py).
    link_relays: list[list[str | int]] = field(default_factory=list)
    link_cuts_dir: str = ""
    # Key patterns of additive counters: their increments add up across regions.
    region_counters: list[str] = field(default_factory=list)
    # Key patterns of keys whose TTLs replicate: a string's TTL is part of its value.
    region_ttls: list[str] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        return f"{LOOPBACK}:{self.endpoint_port}"

    @property
    def path(self) -> Path:
        return Path(self.dir) / STATE_FILE

    @property
    def logs(self) -> Path:
        return Path(self.dir) / "logs"

    @property
    def journal_urls(self) -> list[str]:
        return [j.url for j in self.journal]

    @property
    def local_tls(self) -> LocalTLS | None:
        return LocalTLS(Path(self.dir) / "tls") if self.tls else None

    @property
    def journal_security(self) -> JournalSecurity:
        """How this cluster's own processes reach its journal."""
        return self.local_tls.security() if self.local_tls else PLAIN

    @property
    def restore_security(self) -> JournalSecurity:
        """How to reach the journal of the cluster this one is restored from (a sibling directory)."""
        source = LocalTLS(Path(self.dir).parent / self.restore_cluster / "tls")
        return source.security() if self.restore_cluster and Path(source.ca_file).exists() else PLAIN

    def launcher(self, zone: str) -> list[str]:
        """The argv prefix that starts a process in the zone's network (nothing without zone networks)."""
        return self.network.launcher(zone) if self.network is not None else []

    def node(self, node_id: str) -> NodeState | None:
        return next((n for n in self.nodes if n.id == node_id), None)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def record_identity(self) -> None:
        """Remember, outside the journal, that this cluster was provisioned and under which id."""
        record = {"cluster_id": self.cluster_id, "shards": self.shards}
        tmp = _write_temp(self.path, json.dumps(record))
        os.replace(tmp, Path(self.dir) / IDENTITY_FILE)

    def resume_identity(self) -> bool:
        """Adopt the id of a cluster provisioned in this directory before; False if there is none."""
        path = Path(self.dir) / IDENTITY_FILE
        if not path.exists():
            return False
        record = json.loads(path.read_text())
        if record["shards"] != self.shards:
            raise ValueError(
                f"the data kept in {self.dir} is of a cluster with {record['shards']} shards, not "
                f"{self.shards}: start it with --shards {record['shards']}"
            )
        self.cluster_id, self.provisioned = record["cluster_id"], True
        return True

    @classmethod
    def from_dict(cls, data: dict) -> ClusterState:
        data = dict(data)
        nodes = [NodeState(**n) for n in data.pop("nodes", [])]
        journal = [JournalState(**j) for j in data.pop("journal", [])]
        net = data.pop("network", None)
        network = ZoneNetwork.from_dict(net) if net else None
        return cls(**data, nodes=nodes, journal=journal, network=network)

    @classmethod
    def load(cls, path: str | Path) -> ClusterState:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def save(self) -> None:
        """Replace the state file atomically, so a reader never sees half of it."""
        tmp = _write_temp(self.path, self.to_json())
        os.replace(tmp, self.path)

    def create(self) -> bool:
        """Write the state file only if none exists; False when another cluster holds the name."""
        tmp = _write_temp(self.path, self.to_json())
        try:
            os.link(tmp, self.path)  # link() refuses to overwrite: an atomic exclusive create
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
        return True


def replace_file(path: Path, text: str) -> None:
    """Write path atomically (a temporary file renamed over it): a reader sees all of it or none."""
    os.replace(_write_temp(path, text), path)


def _write_temp(path: Path, text: str) -> str:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    return tmp
