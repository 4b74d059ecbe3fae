"""Configuration of one engine node (one Valkey instance and the process beside it)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from engram.journal.security import JournalSecurity
from engram.multiregion.link import check_region
from engram.multiregion.patterns import key_pattern_problems
from engram.node.certificate import TlsFiles
from engram.snapshots.schedule import SnapshotPolicy


@dataclass
class NodeConfig:
    """Everything a node process needs; written as JSON by the platform that starts it."""

    cluster: str
    node_id: str
    shard: int
    zone: str
    port: int
    journal_urls: list[str]
    data_dir: str
    # The cluster's unique id, chosen once by provisioning; the shard's stream and the cluster
    # metadata must carry it, or the node refuses to touch them.
    cluster_id: str = ""
    host: str = "127.0.0.1"
    # Address clients are told about (MOVED, CLUSTER SLOTS); defaults to host:port.
    announce: str = ""
    # The node's control port: ENGRAM.STATUS and ENGRAM.FAILOVER for probes, peers and tools.
    # Clients use `port`, served by Valkey itself; 0 means port + 10000.
    admin_port: int = 0
    journal_replicas: int = 3
    # Journal server name -> the zone in its server tag; lets a primary keep its stream's leader out
    # of its own zone (journal/placement.py). Empty: leaders stay wherever JetStream elects them.
    journal_zones: dict[str, str] = field(default_factory=dict)
    # Shards of the cluster when it was created (provisioning writes the slot map, not nodes).
    shards: int = 1
    # The zone planner's choice of primary: on a brand-new shard it campaigns first, so that
    # primaries start balanced over zones. Never used once the shard has a history.
    preferred_primary: bool = False
    lease_seconds: float = 2.0
    # How long a write waits for the journal before its client gets an error.
    commit_timeout: float = 10.0
    # Largest journal entry; NATS' default max_payload is 1 MiB.
    max_batch_bytes: int = 512 * 1024
    # Conditional appends kept in flight at once (pipelined group commit).
    append_window: int = 4
    valkey_server: str | None = None
    # False where Valkey runs beside the node in its own container (Kubernetes) on the shared socket.
    spawn_valkey: bool = True
    valkey_args: list[str] = field(default_factory=list)
    # Multi-region mode: the region this node's Valkey stamps writes with (module argument region).
    region: str = ""
    # The other regions of a multi-region cluster: region -> its cluster's name. A primary applies
    # their writes (multiregion/applier.py) and the snapshot cycle keeps what they have not copied.
    linked_regions: dict[str, str] = field(default_factory=dict)
    # Key patterns (globs) of additive counters: their increments add up across regions.
    region_counters: list[str] = field(default_factory=list)
    # Key patterns (globs) of keys whose TTLs replicate: a string's TTL is part of its value.
    region_ttls: list[str] = field(default_factory=list)
    # Unix socket of the private Valkey; default DATA_DIR/valkey.sock.
    valkey_socket: str = ""
    metrics_port: int | None = None
    log_level: str = "warning"
    # Snapshots (docs/snapshots.md), taken by one replica per shard: every snapshot_interval
    # seconds, or once snapshot_tail_entries entries follow the newest; 0 turns either off.
    snapshot_interval: float = 3600.0
    snapshot_tail_entries: int = 100_000
    snapshot_keep: int = 2
    # Users declared in Valkey's ACL file format (docs/security.md); re-read when it changes.
    users_file: str = ""
    # A locked journal (docs/security.md): its user, a file holding the password, and the CA its
    # servers' certificates are verified with (TLS when set). Empty: plain, open journal.
    journal_user: str = ""
    journal_password_file: str = ""
    journal_ca_file: str = ""
    # The cluster's certificate (a TLS cluster: `engram local up --tls`, spec.tls). With it the
    # control and metrics ports speak TLS only, and the node reloads it when the files change.
    tls_cert_file: str = ""
    tls_key_file: str = ""
    # The CA of the cluster's certificates: the node verifies its peers' control ports with it.
    tls_ca_file: str = ""
    # Client TLS terminated by the node (node/tls_front.py) where Valkey has none: served on
    # tls_port and announced there; 0 leaves clients on Valkey's own port.
    tls_port: int = 0
    # Valkey serves clients TLS itself with tls_cert_file and tls_key_file (Kubernetes): the node
    # has it read them again when they change (CONFIG SET tls-cert-file).
    valkey_tls: bool = False

    @property
    def journal_security(self) -> JournalSecurity:
        return JournalSecurity.from_files(self.journal_user, self.journal_password_file, self.journal_ca_file)

    def __post_init__(self) -> None:
        if not self.announce:
            self.announce = f"{self.host}:{self.tls_port or self.port}"
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("tls_cert_file and tls_key_file go together in the node config")
        if (self.tls_port or self.valkey_tls) and not self.tls_cert_file:
            raise ValueError("tls_port and valkey_tls need tls_cert_file and tls_key_file in the node config")
        if self.tls_port and self.valkey_tls:
            raise ValueError("either the node terminates client TLS (tls_port) or Valkey does (valkey_tls)")
        if self.tls_cert_file and not self.tls_ca_file:
            raise ValueError("a TLS node config needs tls_ca_file: peers' control ports are verified with it")
        if not self.admin_port:
            self.admin_port = self.port + 10000
        if not 0 < self.admin_port < 65536 or self.admin_port == self.port:
            raise ValueError(f"admin_port {self.admin_port} is not a free port apart from the client "
                             f"port {self.port}: set admin_port in the node config")
        if not self.valkey_socket:
            self.valkey_socket = str(Path(self.data_dir) / "valkey.sock")
        if self.linked_regions:
            if not self.region:
                raise ValueError("linked_regions needs region: only a multi-region cluster has links")
            for linked in (self.region, *self.linked_regions):
                check_region(linked)
            if self.region in self.linked_regions:
                raise ValueError(f"linked_regions names this node's own region {self.region!r}")
        for name, patterns in (("region_counters", self.region_counters), ("region_ttls", self.region_ttls)):
            if patterns and not self.region:
                raise ValueError(f"{name} needs region: only a multi-region node has them")
            if problems := key_pattern_problems(patterns):
                raise ValueError(f"{name}: {'; '.join(problems)}")
        if self.lease_seconds <= 0:
            raise ValueError(f"lease_seconds must be positive, got {self.lease_seconds}")
        self.snapshot_policy  # noqa: B018 - refuse a bad policy at load, not at the first snapshot

    @property
    def snapshot_policy(self) -> SnapshotPolicy:
        return SnapshotPolicy(self.snapshot_interval, self.snapshot_tail_entries, self.snapshot_keep)

    @property
    def tls_files(self) -> TlsFiles | None:
        """The cluster's certificate, key and CA; None on a plain-text cluster."""
        if not self.tls_cert_file:
            return None
        return TlsFiles(self.tls_cert_file, self.tls_key_file, self.tls_ca_file)

    @property
    def admin_announce(self) -> str:
        """Where peers reach this node's control port: the announced host, the admin port."""
        return f"{self.announce.rpartition(':')[0]}:{self.admin_port}"

    def dump(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> NodeConfig:
        return cls(**json.loads(Path(path).read_text()))
