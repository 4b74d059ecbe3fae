"""The MemoryCluster spec as typed dataclasses; defaults mirror the CRD's (a test keeps them equal)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from engram.multiregion.patterns import key_pattern_problems
from engram_operator import constants, labels

Spreading = Literal["Required", "Preferred"]


@dataclass(frozen=True)
class Resources:
    """Requests and limits of one container, as in a core ResourceRequirements."""

    requests: dict[str, str] = field(default_factory=dict)
    limits: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Resources:
        data = data or {}
        return cls(
            requests={k: str(v) for k, v in (data.get("requests") or {}).items()},
            limits={k: str(v) for k, v in (data.get("limits") or {}).items()},
        )

    def to_manifest(self) -> dict[str, dict[str, str]]:
        out: dict[str, dict[str, str]] = {}
        if self.requests:
            out["requests"] = dict(self.requests)
        if self.limits:
            out["limits"] = dict(self.limits)
        return out


@dataclass(frozen=True)
class EngineSpec:
    """Which engine runs in the pods."""

    version: str = "0.1.0"
    image: str = ""
    valkey_image: str = ""
    image_pull_policy: str = "IfNotPresent"
    log_level: str = "info"

    @property
    def resolved_image(self) -> str:
        return self.image or f"{constants.DEFAULT_ENGINE_REPOSITORY}:{self.version}"

    @property
    def resolved_valkey_image(self) -> str:
        return self.valkey_image or constants.DEFAULT_VALKEY_IMAGE


@dataclass(frozen=True)
class PlacementSpec:
    """How nodes are spread over failure domains."""

    topology_key: str = "topology.kubernetes.io/zone"
    spreading: Spreading = "Preferred"
    # Passed to every pod the cluster runs, merged with the operator's zone pin (builders/common.py).
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    affinity: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class JournalSpec:
    """The NATS JetStream cluster holding every shard's journal."""

    replicas: int = 3
    storage_size: str = "10Gi"
    storage_class: str | None = None
    image: str = ""
    resources: Resources = field(default_factory=Resources)
    # "always" fsyncs before every acknowledgement; a duration relaxes it (docs/durability.md).
    sync_interval: str = "always"

    @property
    def resolved_image(self) -> str:
        return self.image or constants.DEFAULT_NATS_IMAGE


@dataclass(frozen=True)
class SnapshotSpec:
    """When the engine nodes snapshot their shards (docs/snapshots.md), and an on-demand request.

    ``interval_seconds``, ``tail_entries`` and ``keep`` reach every node's config (NodeConfig's
    snapshot_*), so changing one rolls the pods. ``request`` never reaches a node: the operator
    asks one replica per shard for a snapshot when it changes (decisions.pending_snapshot_request).
    """

    interval_seconds: float = 3600.0
    tail_entries: int = 100_000
    keep: int = 2
    request: str = ""


@dataclass(frozen=True)
class RdbSource:
    """RDB files in a PersistentVolumeClaim of the cluster's namespace; ``paths`` relative to its root."""

    claim_name: str
    paths: tuple[str, ...] = ()


@dataclass(frozen=True)
class ClusterSource:
    """Another MemoryCluster of the namespace: the newest verified snapshot of each of its shards."""

    name: str


@dataclass(frozen=True)
class RestoreSpec:
    """What a new cluster is seeded from (spec.restoreFrom): one source, read once, by provisioning.

    ``resources`` size the provisioning Job, which loads each RDB into a scratch Valkey while it
    seeds the journal. Both sources are kept as given so that a spec naming both, or neither, can be
    refused by name (restore_problems) rather than silently read as one of them.
    """

    rdb: RdbSource | None = None
    cluster: ClusterSource | None = None
    resources: Resources = field(default_factory=Resources)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RestoreSpec:
        rdb = data.get("rdb")
        other = data.get("cluster")
        return cls(
            rdb=RdbSource(
                claim_name=str(rdb.get("claimName") or ""),
                paths=tuple(str(p) for p in rdb.get("paths") or []),
            )
            if isinstance(rdb, Mapping)
            else None,
            cluster=ClusterSource(name=str(other.get("name") or "")) if isinstance(other, Mapping) else None,
            resources=Resources.from_dict(data.get("resources")),
        )

    def source(self) -> dict[str, Any]:
        """The source as spec.restoreFrom spells it (resources left out): what status.restoredFrom records."""
        out: dict[str, Any] = {}
        if self.rdb is not None:
            out["rdb"] = {"claimName": self.rdb.claim_name, "paths": list(self.rdb.paths)}
        if self.cluster is not None:
            out["cluster"] = {"name": self.cluster.name}
        return out

    def describe(self) -> str:
        """The source in words, for conditions and events."""
        if self.cluster is not None:
            return f"the snapshots of MemoryCluster {self.cluster.name}"
        if self.rdb is not None:
            return f"{', '.join(self.rdb.paths) or 'no file'} in PersistentVolumeClaim {self.rdb.claim_name}"
        return "no source"


@dataclass(frozen=True)
class SecretKeyRef:
    """One key of a Secret in the cluster's namespace."""

    name: str
    key: str


@dataclass(frozen=True)
class UserSpec:
    """A declared user (spec.users): Valkey ACL rules, and where its password is kept.

    ``rules`` never carry a password (users_problems): the operator hashes the one in
    ``password_secret`` into the users file every node reads (builders/users.py).
    """

    name: str
    rules: str = ""
    password_secret: SecretKeyRef | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UserSpec:
        secret = data.get("passwordSecret")
        return cls(
            name=str(data.get("name") or ""),
            rules=str(data.get("rules") or ""),
            password_secret=SecretKeyRef(str(secret.get("name") or ""), str(secret.get("key") or ""))
            if isinstance(secret, Mapping)
            else None,
        )


@dataclass(frozen=True)
class NetworkSpec:
    """Which pods may reach the cluster's pods (spec.network; builders/network.py makes the policies).

    ``clients`` and ``metrics`` are NetworkPolicy peers as given (podSelector, namespaceSelector,
    ipBlock); None leaves that port open to every source, which an empty list would also mean in a
    NetworkPolicy, so the CRD refuses empty lists rather than let one read as "nobody".
    """

    policies: bool = True
    clients: tuple[dict[str, Any], ...] | None = None
    metrics: tuple[dict[str, Any], ...] | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NetworkSpec:
        def peers(key: str) -> tuple[dict[str, Any], ...] | None:
            value = data.get(key)
            return tuple(_plain(p) for p in value if isinstance(p, Mapping)) if value else None

        return cls(
            policies=bool(data.get("policies", cls.policies)),
            clients=peers("clients"),
            metrics=peers("metrics"),
        )


@dataclass(frozen=True)
class IssuerRef:
    """A cert-manager Issuer or ClusterIssuer that signs the cluster's certificates."""

    name: str
    kind: str = "Issuer"
    group: str = "cert-manager.io"


@dataclass(frozen=True)
class TlsSpec:
    """spec.tls: TLS for clients (Valkey's own) and for the journal, which then also demands a user
    and password (builders/tls.py). Certificates come from one Secret (``secret_name``) or from a
    cert-manager issuer (``issuer``), for which the operator makes Certificates. Fixed at creation.
    """

    secret_name: str = ""
    issuer: IssuerRef | None = None
    # The journal servers' certificate; default: the issuer's second Certificate, or secret_name.
    journal_secret_name: str = ""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TlsSpec:
        issuer = data.get("issuerRef")
        return cls(
            secret_name=str(data.get("secretName") or ""),
            issuer=IssuerRef(
                name=str(issuer.get("name") or ""),
                kind=str(issuer.get("kind") or IssuerRef.kind),
                group=str(issuer.get("group") or IssuerRef.group),
            )
            if isinstance(issuer, Mapping)
            else None,
            journal_secret_name=str(data.get("journalSecretName") or ""),
        )

    def client_secret(self, cluster: str) -> str:
        """The kubernetes.io/tls Secret Valkey serves clients with."""
        return self.secret_name or labels.tls_secret_name(cluster)

    def journal_secret(self, cluster: str) -> str:
        """The kubernetes.io/tls Secret the journal servers serve with (its ca.crt: what nodes trust)."""
        if self.journal_secret_name:
            return self.journal_secret_name
        return labels.journal_tls_secret_name(cluster) if self.issuer is not None else self.secret_name


@dataclass(frozen=True)
class RegionMember:
    """One region of a multi-region cluster as a region's MemoryCluster knows it: the region, its
    cluster's name (its streams are named after it), and the leafnode URLs its journal is reached at."""

    name: str
    cluster: str
    leafnode_urls: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RegionMember:
        return cls(
            name=str(data.get("name") or ""),
            cluster=str(data.get("cluster") or ""),
            leafnode_urls=tuple(str(u) for u in data.get("leafnodeURLs") or []),
        )

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "cluster": self.cluster, "leafnodeURLs": list(self.leafnode_urls)}


@dataclass(frozen=True)
class RegionSection:
    """spec.region: this cluster is one region of a MultiRegionCluster, which writes this section
    when it creates the cluster (docs/multi-region.md, "On Kubernetes"). Fixed at creation, but for
    ``counters`` and ``ttls``, which only decide how later local writes replicate.

    ``regions`` lists every region, this one included, in the MultiRegionCluster's order. The
    Secrets are in this cluster's namespace: the link's user and password (keys user, password)
    and, optionally, the link's certificate (tls.crt, tls.key, ca.crt).
    """

    name: str
    regions: tuple[RegionMember, ...] = ()
    auth_secret: str = ""
    tls_secret: str = ""
    # namespace/name of the MultiRegionCluster that manages this section (informational).
    managed_by: str = ""
    # Key patterns of additive counters (engram.multiregion.patterns): the module's `counters` args.
    counters: tuple[str, ...] = ()
    # Key patterns of keys whose string TTLs replicate and converge: the module's `ttls` args.
    ttls: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RegionSection:
        link = data.get("link") or {}
        return cls(
            name=str(data.get("name") or ""),
            regions=tuple(
                RegionMember.from_dict(r) for r in data.get("regions") or [] if isinstance(r, Mapping)
            ),
            auth_secret=str(link.get("authSecretName") or ""),
            tls_secret=str(link.get("tlsSecretName") or ""),
            managed_by=str(data.get("managedBy") or ""),
            counters=tuple(str(p) for p in data.get("counters") or []),
            ttls=tuple(str(p) for p in data.get("ttls") or []),
        )

    def to_dict(self) -> dict[str, Any]:
        """spec.region as the MultiRegionCluster writes it."""
        secrets = (("authSecretName", self.auth_secret), ("tlsSecretName", self.tls_secret))
        link = {k: v for k, v in secrets if v}
        # counters and ttls always, even empty: the update is a merge patch, and a list left out
        # would keep the patterns a MultiRegionCluster no longer lists.
        out: dict[str, Any] = {
            "name": self.name,
            "regions": [r.to_dict() for r in self.regions],
            "counters": list(self.counters),
            "ttls": list(self.ttls),
        }
        if link:
            out["link"] = link
        if self.managed_by:
            out["managedBy"] = self.managed_by
        return out

    @property
    def region_names(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.regions)

    @property
    def linked_regions(self) -> dict[str, str]:
        """Every other region with its cluster's name: the engine nodes' ``linked_regions``."""
        return {r.name: r.cluster for r in self.regions if r.name != self.name}

    def member(self, region: str) -> RegionMember | None:
        return next((r for r in self.regions if r.name == region), None)


@dataclass(frozen=True)
class ClusterSpec:
    """One MemoryCluster: identity plus its desired state."""

    name: str
    namespace: str
    uid: str = ""
    shards: int = 1
    replicas_per_shard: int = 1
    engine: EngineSpec = field(default_factory=EngineSpec)
    valkey_resources: Resources = field(default_factory=Resources)
    node_resources: Resources = field(default_factory=Resources)
    placement: PlacementSpec = field(default_factory=PlacementSpec)
    journal: JournalSpec = field(default_factory=JournalSpec)
    snapshots: SnapshotSpec = field(default_factory=SnapshotSpec)
    # Only read when the cluster is provisioned; the CRD refuses changing it afterwards.
    restore: RestoreSpec | None = None
    # Declared users, in the order given; the users file lists them sorted by name.
    users: tuple[UserSpec, ...] = ()
    network: NetworkSpec = field(default_factory=NetworkSpec)
    # None: plain text for clients and the journal, and a journal without authentication.
    tls: TlsSpec | None = None
    # A region of a multi-region cluster (written by its MultiRegionCluster); None: a cluster alone.
    region: RegionSection | None = None

    @property
    def nodes_per_shard(self) -> int:
        return self.replicas_per_shard + 1

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> ClusterSpec:
        """Build from a custom resource body (a dict or kopf Body)."""
        meta = body.get("metadata") or {}
        spec = body.get("spec") or {}
        engine = spec.get("engine") or {}
        placement = spec.get("placement") or {}
        journal = spec.get("journal") or {}
        storage = journal.get("storage") or {}
        resources = spec.get("resources") or {}
        snapshots = spec.get("snapshots") or {}
        restore = spec.get("restoreFrom")
        return cls(
            name=meta["name"],
            namespace=meta.get("namespace") or "default",
            uid=meta.get("uid") or "",
            shards=int(spec.get("shards", 1)),
            replicas_per_shard=int(spec.get("replicasPerShard", 1)),
            engine=EngineSpec(
                version=engine.get("version", EngineSpec.version),
                image=engine.get("image", ""),
                valkey_image=engine.get("valkeyImage", ""),
                image_pull_policy=engine.get("imagePullPolicy", EngineSpec.image_pull_policy),
                log_level=engine.get("logLevel", EngineSpec.log_level),
            ),
            valkey_resources=Resources.from_dict(resources.get("valkey")),
            node_resources=Resources.from_dict(resources.get("node")),
            placement=PlacementSpec(
                topology_key=placement.get("topologyKey", PlacementSpec.topology_key),
                spreading=placement.get("spreading", PlacementSpec.spreading),
                # Deep copies: manifests built from them never share objects with the body.
                node_selector={str(k): str(v) for k, v in (placement.get("nodeSelector") or {}).items()},
                tolerations=[_plain(t) for t in placement.get("tolerations") or []],
                affinity=_plain(placement.get("affinity") or {}),
            ),
            journal=JournalSpec(
                replicas=int(journal.get("replicas", JournalSpec.replicas)),
                storage_size=str(storage.get("size", JournalSpec.storage_size)),
                storage_class=storage.get("storageClassName"),
                image=journal.get("image", ""),
                resources=Resources.from_dict(journal.get("resources")),
                sync_interval=str(journal.get("syncInterval", JournalSpec.sync_interval)),
            ),
            snapshots=SnapshotSpec(
                interval_seconds=float(snapshots.get("intervalSeconds", SnapshotSpec.interval_seconds)),
                tail_entries=int(snapshots.get("tailEntries", SnapshotSpec.tail_entries)),
                keep=int(snapshots.get("keep", SnapshotSpec.keep)),
                request=str(snapshots.get("request") or ""),
            ),
            restore=RestoreSpec.from_dict(restore) if isinstance(restore, Mapping) else None,
            users=tuple(UserSpec.from_dict(u) for u in spec.get("users") or [] if isinstance(u, Mapping)),
            network=NetworkSpec.from_dict(spec.get("network") or {}),
            tls=TlsSpec.from_dict(spec["tls"]) if isinstance(spec.get("tls"), Mapping) else None,
            region=(
                RegionSection.from_dict(spec["region"]) if isinstance(spec.get("region"), Mapping) else None
            ),
        )


def restore_problems(cluster: ClusterSpec) -> list[str]:
    """Why spec.restoreFrom cannot be carried out as written ([] when it can, or is absent).

    The CRD's schema and CEL rules refuse all of these at apply time; the operator checks again so
    that an object admitted some other way (an API server without CEL, an older CRD) is refused
    with the same words instead of reaching `engram provision`.
    """
    restore = cluster.restore
    if restore is None:
        return []
    if (restore.rdb is None) == (restore.cluster is None):
        return [
            "spec.restoreFrom needs exactly one source: rdb (RDB files in a PersistentVolumeClaim) or "
            "cluster (another MemoryCluster's snapshots)"
        ]
    problems = []
    if restore.rdb is not None:
        if not restore.rdb.claim_name:
            problems.append("spec.restoreFrom.rdb.claimName must name a PersistentVolumeClaim")
        if not restore.rdb.paths:
            problems.append("spec.restoreFrom.rdb.paths must list at least one RDB file")
        for path in restore.rdb.paths:
            if not path or path.startswith("/") or ".." in path.split("/"):
                problems.append(
                    f"spec.restoreFrom.rdb.paths: {path!r} must be a non-empty path relative to the "
                    "volume's root, without '..'"
                )
    if restore.cluster is not None:
        if not restore.cluster.name:
            problems.append("spec.restoreFrom.cluster.name must name a MemoryCluster")
        elif restore.cluster.name == cluster.name:
            problems.append(
                f"spec.restoreFrom.cluster.name: MemoryCluster {cluster.name} cannot be restored from "
                "itself; name another MemoryCluster of the namespace"
            )
    return problems


# Rule words that set or remove a password (Valkey's >pw, <pw, #hash, !hash): passwords come from
# Secrets only, so that they never sit in clear in the MemoryCluster.
_PASSWORD_RULE = re.compile(r"(^|\s)[<>#!]")
# Rule words that would drop the password from the user's Secret (the file gives it before the rules).
_DROPS_PASSWORD = re.compile(r"(?i)(^|\s)(nopass|resetpass|reset)(\s|$)")


def users_problems(cluster: ClusterSpec) -> list[str]:
    """Why spec.users cannot be rendered into the users file as written ([] when it can).

    The CRD's schema and CEL rules refuse all of these at apply time; the operator checks again,
    with the same words, so that an object admitted without them never reaches the nodes.
    """
    problems: list[str] = []
    seen: set[str] = set()
    for index, user in enumerate(cluster.users):
        where = f"spec.users[{user.name or index}]"
        if not user.name or re.search(r"\s", user.name):
            problems.append(f"{where}.name must be a non-empty user name without spaces")
        elif user.name in seen:
            problems.append(f"spec.users: user {user.name} is listed twice; a user is declared once")
        seen.add(user.name)
        if "\n" in user.rules or "\r" in user.rules:
            problems.append(f"{where}.rules must be one line")
        if _PASSWORD_RULE.search(user.rules):
            problems.append(
                f"{where}.rules must not carry passwords (rules starting with '>', '<', '#' or '!'): "
                "a user's password comes from its passwordSecret"
            )
        secret = user.password_secret
        if secret is None:
            continue
        if not secret.name or not secret.key:
            problems.append(
                f"{where}.passwordSecret needs the name of a Secret and the key holding the password"
            )
        elif secret.name == labels.users_secret_name(cluster.name):
            problems.append(
                f"{where}.passwordSecret.name cannot be {secret.name}: the operator writes the users "
                "file into that Secret"
            )
        if _DROPS_PASSWORD.search(user.rules):
            problems.append(
                f"{where}.rules must not say nopass, resetpass or reset when passwordSecret is set: they "
                "would drop the password the Secret gives"
            )
    return problems


def tls_problems(cluster: ClusterSpec) -> list[str]:
    """Why spec.tls cannot be carried out as written ([] when it can, or is absent).

    The CRD refuses these at apply time; checked again for objects admitted without its CEL rules.
    """
    tls = cluster.tls
    if tls is None:
        return []
    if bool(tls.secret_name) == (tls.issuer is not None):
        return [
            "spec.tls needs exactly one source of certificates: secretName (a kubernetes.io/tls Secret) "
            "or issuerRef (a cert-manager Issuer or ClusterIssuer)"
        ]
    if tls.issuer is not None and (not tls.issuer.name or tls.issuer.kind not in ("Issuer", "ClusterIssuer")):
        return ["spec.tls.issuerRef needs a name and kind Issuer or ClusterIssuer"]
    return []


def region_problems(cluster: ClusterSpec) -> list[str]:
    """Why spec.region cannot be configured as written ([] when it can, or is absent).

    The MultiRegionCluster writes it, so these mean a hand-written or edited section; the CRD
    refuses most of them too. The link's own rules (region names, who dials whom) are link.py's.
    """
    from engram_operator.builders.region_link import RegionLinkError, region_links

    section = cluster.region
    if section is None:
        return []
    problems = []
    names = section.region_names
    if len(set(names)) != len(names):
        problems.append(f"spec.region.regions names a region twice ({', '.join(names)})")
    own = section.member(section.name)
    if own is None:
        problems.append(f"spec.region.regions must list this cluster's own region {section.name!r}")
    elif own.cluster != cluster.name:
        problems.append(
            f"spec.region.regions[{section.name}].cluster is {own.cluster!r}: a region's cluster is "
            f"the MemoryCluster itself, {cluster.name}"
        )
    for member in section.regions:
        if not member.cluster:
            problems.append(f"spec.region.regions[{member.name}].cluster must name that region's cluster")
    problems += [f"spec.region.counters: {p}" for p in key_pattern_problems(section.counters)]
    problems += [f"spec.region.ttls: {p}" for p in key_pattern_problems(section.ttls)]
    if cluster.restore is not None:
        problems.append(
            "spec.restoreFrom cannot seed a region of a multi-region cluster: restored keys carry no "
            "last-writer-wins stamps, so the regions could not agree on them"
        )
    if problems:
        return problems
    try:
        links = region_links(section.name, names)
    except RegionLinkError as err:
        return [f"spec.region: {err}"]
    for region in links.dials:
        member = section.member(region)
        if member is not None and not member.leafnode_urls:
            problems.append(
                f"spec.region.regions[{region}].leafnodeURLs must list where region {region}'s journal "
                f"listens for the link: region {section.name} dials it"
            )
    return problems


def _plain(value: Any) -> Any:
    """A deep copy made of dicts and lists only, whatever mapping type the body used."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
