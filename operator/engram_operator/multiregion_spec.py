"""The MultiRegionCluster spec as typed dataclasses, and every reason it can be refused
(docs/multi-region.md, "On Kubernetes").

Each region is *local* (a MemoryCluster this resource creates and owns, from ``spec.template``) or
*remote* (a region whose journal runs in another Kubernetes cluster: its cluster's name, its shard
count and its leafnode URLs).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from engram.multiregion.patterns import key_pattern_problems
from engram_operator.builders.region_link import RegionLinkError, region_links, region_name_problem
from engram_operator.spec import _plain

# What a region may set differently from spec.template: where its pods run and how big they are.
OVERRIDABLE = ("placement", "resources", "journal")
# The fields only a local region has.
LOCAL_FIELDS = ("namespace", "memoryCluster", "overrides", "leafnodeService")
SERVICE_TYPES = ("ClusterIP", "LoadBalancer", "NodePort")
# A MemoryCluster's name (its CRD's rules): it names pods and Services.
_CLUSTER_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
MAX_CLUSTER_NAME = 40
DEFAULT_SHARDS = 1
DEFAULT_JOURNAL_REPLICAS = 3


@dataclass(frozen=True)
class LeafnodeServiceSpec:
    """How a listening local region's leafnode port is exposed: ClusterIP reaches regions in this
    Kubernetes cluster, LoadBalancer or NodePort regions in others."""

    type: str = "ClusterIP"
    annotations: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LocalRegion:
    """A region run here: a MemoryCluster in ``namespace``, made from the template and ``overrides``."""

    namespace: str
    memory_cluster: str
    overrides: dict[str, Any] = field(default_factory=dict)
    leafnode_service: LeafnodeServiceSpec = field(default_factory=LeafnodeServiceSpec)


@dataclass(frozen=True)
class RemoteRegion:
    """A region whose journal runs in another Kubernetes cluster (its own MultiRegionCluster there)."""

    cluster_name: str
    shards: int
    leafnode_urls: tuple[str, ...] = ()


@dataclass(frozen=True)
class RegionEntry:
    """One item of spec.regions: local or remote (a spec giving both, or neither, is refused)."""

    name: str
    local: LocalRegion | None = None
    remote: RemoteRegion | None = None
    # The fields a local region was given, so that a region written as both can be refused by name.
    local_fields: tuple[str, ...] = ()

    @property
    def cluster(self) -> str:
        """The region's cluster name: its streams are named after it."""
        if self.remote is not None:
            return self.remote.cluster_name
        return self.local.memory_cluster if self.local is not None else ""


@dataclass(frozen=True)
class LinkSpec:
    """spec.link: the Secret with the leafnode user and password, and the optional TLS Secret."""

    secret_name: str = ""
    tls_secret_name: str = ""


@dataclass(frozen=True)
class MultiRegionSpec:
    """One MultiRegionCluster: identity plus its desired state."""

    name: str
    namespace: str
    uid: str = ""
    regions: tuple[RegionEntry, ...] = ()
    # A MemoryCluster spec, as given (the API server has applied the CRD's defaults to it).
    template: dict[str, Any] = field(default_factory=dict)
    link: LinkSpec = field(default_factory=LinkSpec)
    # Key patterns of additive counters, copied into every local region's spec.region.counters. Not
    # part of the Layout: a change only decides how later increments replicate.
    counters: tuple[str, ...] = ()
    # Key patterns of keys whose string TTLs replicate and converge, copied into every local region's
    # spec.region.ttls. Not part of the Layout either: a change only decides how later writes replicate.
    ttls: tuple[str, ...] = ()

    @property
    def region_names(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.regions)

    @property
    def local_regions(self) -> tuple[RegionEntry, ...]:
        return tuple(r for r in self.regions if r.local is not None)

    @property
    def shards(self) -> int:
        return int(self.template.get("shards", DEFAULT_SHARDS))

    @property
    def journal_replicas(self) -> int:
        return int((self.template.get("journal") or {}).get("replicas", DEFAULT_JOURNAL_REPLICAS))

    @property
    def managed_by(self) -> str:
        return f"{self.namespace}/{self.name}"

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> MultiRegionSpec:
        meta = body.get("metadata") or {}
        spec = body.get("spec") or {}
        namespace = meta.get("namespace") or "default"
        name = meta["name"]
        link = spec.get("link") or {}
        return cls(
            name=name,
            namespace=namespace,
            uid=meta.get("uid") or "",
            regions=tuple(
                _region(r, name, namespace) for r in spec.get("regions") or [] if isinstance(r, Mapping)
            ),
            template=_plain(spec.get("template") or {}),
            link=LinkSpec(
                secret_name=str(link.get("secretName") or ""),
                tls_secret_name=str((link.get("tls") or {}).get("secretName") or ""),
            ),
            counters=tuple(str(p) for p in spec.get("counters") or []),
            ttls=tuple(str(p) for p in spec.get("ttls") or []),
        )


def _region(data: Mapping[str, Any], owner: str, namespace: str) -> RegionEntry:
    name = str(data.get("name") or "")
    local_fields = tuple(k for k in LOCAL_FIELDS if k in data)
    remote = data.get("remote")
    service = data.get("leafnodeService") or {}
    local = None
    if not isinstance(remote, Mapping):
        local = LocalRegion(
            namespace=str(data.get("namespace") or namespace),
            memory_cluster=str(data.get("memoryCluster") or f"{owner}-{name}"),
            overrides=_plain(data.get("overrides") or {}),
            leafnode_service=LeafnodeServiceSpec(
                type=str(service.get("type") or LeafnodeServiceSpec.type),
                annotations={str(k): str(v) for k, v in (service.get("annotations") or {}).items()},
            ),
        )
    return RegionEntry(
        name=name,
        local=local,
        remote=RemoteRegion(
            cluster_name=str(remote.get("clusterName") or ""),
            shards=int(remote.get("shards") or 0),
            leafnode_urls=tuple(str(u) for u in remote.get("leafnodeURLs") or []),
        )
        if isinstance(remote, Mapping)
        else None,
        local_fields=local_fields,
    )


@dataclass(frozen=True)
class Layout:
    """What a running multi-region cluster was made of (status.layout): its regions, where each
    runs, and its shard count. Changing any of it is refused in this version."""

    regions: tuple[tuple[str, str], ...]  # (region, "namespace/memoryCluster" or "remote:cluster")
    shards: int

    @classmethod
    def of(cls, mrc: MultiRegionSpec) -> Layout:
        return cls(tuple((r.name, _where(r)) for r in mrc.regions), mrc.shards)

    @classmethod
    def from_status(cls, status: Mapping[str, Any]) -> Layout | None:
        layout = status.get("layout")
        if not isinstance(layout, Mapping) or not layout.get("regions"):
            return None
        items = [r for r in layout["regions"] if isinstance(r, Mapping)]
        regions = tuple((str(r.get("name")), str(r.get("at"))) for r in items)
        return cls(regions, int(layout.get("shards") or 0))

    def to_status(self) -> dict[str, Any]:
        return {"regions": [{"name": n, "at": at} for n, at in self.regions], "shards": self.shards}


def _where(region: RegionEntry) -> str:
    if region.remote is not None:
        return f"remote:{region.remote.cluster_name}"
    assert region.local is not None
    return f"{region.local.namespace}/{region.local.memory_cluster}"


def spec_problems(mrc: MultiRegionSpec) -> list[str]:
    """Why the spec cannot be carried out as written, each naming its field ([] when it can).

    The CRD refuses most of these at apply time; the operator checks again, with the same words,
    so that an object admitted without the CRD's rules changes nothing.
    """
    problems: list[str] = []
    names = mrc.region_names
    if len(names) < 2:
        problems.append(f"spec.regions needs at least two regions to link, got {len(names)}")
    for index, region in enumerate(mrc.regions):
        where = f"spec.regions[{region.name or index}]"
        if problem := region_name_problem(region.name):
            problems.append(f"{where}.name: {problem}")
        if region.remote is not None and region.local_fields:
            problems.append(
                f"{where}: a region is local ({', '.join(LOCAL_FIELDS)}) or remote, not both; it gives "
                f"remote and {', '.join(region.local_fields)}"
            )
        problems += _local_problems(mrc, region, where) + _remote_problems(mrc, region, where)
    if len(set(names)) != len(names):
        problems.append(f"spec.regions names a region twice ({', '.join(names)})")
    places = [_where(r) for r in mrc.local_regions]
    for place in sorted({p for p in places if places.count(p) > 1}):
        problems.append(f"spec.regions: two regions run the same MemoryCluster {place}")
    if not mrc.local_regions:
        problems.append("spec.regions needs at least one local region (one without remote)")
    if not mrc.link.secret_name:
        problems.append("spec.link.secretName must name the Secret holding the link's user and password")
    if "restoreFrom" in mrc.template:
        problems.append(
            "spec.template.restoreFrom cannot seed a multi-region cluster: restored keys carry no "
            "last-writer-wins stamps, so the regions could not agree on them; a multi-region cluster "
            "is built from new regional clusters"
        )
    if "region" in mrc.template:
        problems.append("spec.template.region is written by the MultiRegionCluster itself; leave it out")
    problems += [f"spec.counters: {p}" for p in key_pattern_problems(mrc.counters)]
    problems += [f"spec.ttls: {p}" for p in key_pattern_problems(mrc.ttls)]
    if problems:
        return problems
    return _link_problems(mrc)


def _local_problems(mrc: MultiRegionSpec, region: RegionEntry, where: str) -> list[str]:
    local = region.local
    if local is None:
        return []
    problems = []
    name = local.memory_cluster
    if len(name) > MAX_CLUSTER_NAME or not _CLUSTER_NAME.match(name):
        problems.append(
            f"{where}.memoryCluster: {name!r} must be at most {MAX_CLUSTER_NAME} lower-case letters, "
            "digits and '-', starting with a letter (it names the region's MemoryCluster)"
        )
    if unknown := sorted(set(local.overrides) - set(OVERRIDABLE)):
        problems.append(f"{where}.overrides may set only {', '.join(OVERRIDABLE)}, not {', '.join(unknown)}")
    if "replicas" in (local.overrides.get("journal") or {}):
        # Every region dials one leafnode Service per journal server of every other region, counted
        # from the template: a region of another size would leave servers nobody dials.
        problems.append(f"{where}.overrides.journal.replicas: every region has "
                        "spec.template.journal.replicas journal servers; set it there")
    if local.leafnode_service.type not in SERVICE_TYPES:
        problems.append(f"{where}.leafnodeService.type must be one of {', '.join(SERVICE_TYPES)}")
    return problems


def _remote_problems(mrc: MultiRegionSpec, region: RegionEntry, where: str) -> list[str]:
    remote = region.remote
    if remote is None:
        return []
    problems = []
    if not remote.cluster_name:
        problems.append(f"{where}.remote.clusterName must name that region's MemoryCluster")
    if remote.shards != mrc.shards:
        problems.append(
            f"{where}.remote.shards is {remote.shards} but spec.template.shards is {mrc.shards}: every "
            "region must have the same shard count (inbound streams are per shard, and writes are "
            "applied by slot)"
        )
    return problems


def _link_problems(mrc: MultiRegionSpec) -> list[str]:
    """What the link needs: regions link.py can link, and URLs for every region a local one dials."""
    problems = []
    for region in mrc.local_regions:
        try:
            links = region_links(region.name, mrc.region_names)
        except RegionLinkError as err:
            return [f"spec.regions: {err}"]
        for dialled in links.dials:
            entry = next(r for r in mrc.regions if r.name == dialled)
            if entry.remote is not None and not entry.remote.leafnode_urls:
                problems.append(
                    f"spec.regions[{dialled}].remote.leafnodeURLs must list where region {dialled}'s "
                    f"journal listens for the link: region {region.name} dials it"
                )
    return problems


def layout_problems(mrc: MultiRegionSpec, recorded: Layout | None) -> list[str]:
    """Why the spec cannot apply to the running multi-region cluster ``recorded`` describes."""
    if recorded is None:
        return []
    now = Layout.of(mrc)
    problems = []
    if now.regions != recorded.regions:
        before = ", ".join(f"{n} ({at})" for n, at in recorded.regions)
        after = ", ".join(f"{n} ({at})" for n, at in now.regions)
        problems.append(
            f"spec.regions: changing the regions of a running multi-region cluster is not supported in "
            f"this version (it runs {before}; the spec asks for {after}); restore the regions, or create "
            "a new MultiRegionCluster"
        )
    if now.shards != recorded.shards:
        problems.append(
            f"spec.template.shards: resharding a multi-region cluster is not supported in this version "
            f"(its regions have {recorded.shards} shards); set it back to {recorded.shards}"
        )
    return problems


def merged(template: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The template with a region's overrides laid over it: maps merge key by key, anything else
    (lists included) is replaced."""
    out = _plain(template)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merged(out[key], value)
        else:
            out[key] = _plain(value)
    return out
