"""A MultiRegionCluster's decisions as pure functions: its spec and what was observed in, the
MemoryClusters, Secrets and Services to make or update out (docs/multi-region.md, "On Kubernetes").

A refused spec (spec_problems, layout_problems, a MemoryCluster made outside it) changes nothing:
the plan then only reports.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from engram_operator import labels
from engram_operator.builders.multiregion import (
    AUTH_KEYS,
    TLS_KEYS,
    build_leafnode_services,
    build_link_secrets,
    build_region_memorycluster,
    region_spec,
)
from engram_operator.builders.region_link import region_links
from engram_operator.decisions.plan import Event
from engram_operator.multiregion_spec import (
    Layout,
    MultiRegionSpec,
    RegionEntry,
    layout_problems,
    spec_problems,
)
from engram_operator.observe import SecretData


@dataclass(frozen=True)
class RegionCluster:
    """The MemoryCluster a local region runs, as read (found False: there is none)."""

    found: bool = False
    uid: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    spec: Mapping[str, Any] = field(default_factory=dict)
    status: Mapping[str, Any] = field(default_factory=dict)

    def ready(self) -> bool:
        conditions = self.status.get("conditions") or []
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


@dataclass(frozen=True)
class LeafnodeServiceSeen:
    """A LoadBalancer or NodePort region's leafnode Service as read (``error``: why it could not be)."""

    name: str
    found: bool = False
    error: str = ""
    type: str = ""
    # Its load balancer's ingress points, each a hostname or else an IP, in the API's order.
    ingress: tuple[str, ...] = ()
    port: int = 0
    # 0 while none is allocated.
    node_port: int = 0


@dataclass(frozen=True)
class ObservedRegions:
    """Everything one MultiRegionCluster reconcile decides from."""

    # Local region -> its MemoryCluster.
    clusters: Mapping[str, RegionCluster] = field(default_factory=dict)
    # spec.link's Secrets in the MultiRegionCluster's namespace (None: not read).
    link_secret: SecretData | None = None
    tls_secret: SecretData | None = None
    # (namespace, kind, name) of the region Secrets and Services that exist.
    children: frozenset[tuple[str, str, str]] = frozenset()
    # status.layout as last written (None: nothing made yet).
    layout: Layout | None = None
    # Each local region's lag rows (engram.multiregion.lag.lag_row), where its journal was read.
    lag: Mapping[str, list[dict[str, Any]]] = field(default_factory=dict)
    # A LoadBalancer or NodePort local region -> its leafnode Services, one per journal server
    # (a region missing here: not read).
    leafnode_services: Mapping[str, tuple[LeafnodeServiceSeen, ...]] = field(default_factory=dict)
    # Where other clusters reach this one's Ready nodes (a NodePort region's URLs), by node name;
    # read only for NodePort regions. nodes_error: why the Nodes could not be listed.
    node_addresses: tuple[str, ...] = ()
    nodes_error: str = ""


@dataclass
class RegionPlan:
    """What one MultiRegionCluster reconcile does, and what it reports."""

    refused: list[str] = field(default_factory=list)
    create: list[dict[str, Any]] = field(default_factory=list)
    # (namespace, name, spec) of region MemoryClusters whose spec to update (spec.template,
    # spec.counters or spec.ttls changed).
    update: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    # status.layout to record once the regions are being made.
    layout: Layout | None = None


def foreign_problems(mrc: MultiRegionSpec, seen: ObservedRegions) -> list[str]:
    """MemoryClusters at a local region's place that this MultiRegionCluster did not make."""
    problems = []
    for region in mrc.local_regions:
        cluster = seen.clusters.get(region.name, RegionCluster())
        if cluster.found and not _ours(mrc, cluster):
            assert region.local is not None
            problems.append(
                f"spec.regions[{region.name}]: MemoryCluster {region.local.namespace}/"
                f"{region.local.memory_cluster} exists and was not made by this MultiRegionCluster; a "
                "cluster made outside it cannot be linked in (its keys carry no last-writer-wins stamps): "
                "name another memoryCluster, or delete that one"
            )
    return problems


def _ours(mrc: MultiRegionSpec, cluster: RegionCluster) -> bool:
    return (
        cluster.labels.get(labels.MULTIREGION) == mrc.name
        and cluster.labels.get(labels.MULTIREGION_NAMESPACE) == mrc.namespace
    )


def covers(observed: Any, desired: Any) -> bool:
    """Whether ``observed`` already holds everything ``desired`` says (the API server adds defaults
    to what it stores, so equality would never hold)."""
    if isinstance(desired, Mapping):
        return isinstance(observed, Mapping) and all(
            k in observed and covers(observed[k], v) for k, v in desired.items()
        )
    return observed == desired


def decide_regions(mrc: MultiRegionSpec, seen: ObservedRegions) -> RegionPlan:
    """The whole MultiRegionCluster decision; the reconcile only carries it out."""
    plan = RegionPlan()
    problems = spec_problems(mrc) or layout_problems(mrc, seen.layout) or foreign_problems(mrc, seen)
    if problems:
        plan.refused = problems
        plan.events.append(Event("Warning", "SpecRefused", "; ".join(problems), standing=True))
        return plan
    plan.layout = Layout.of(mrc)
    auth, tls = _link_data(mrc, seen, plan)
    for region in mrc.local_regions:
        _region(mrc, region, seen, plan, auth, tls)
    return plan


def _link_data(
    mrc: MultiRegionSpec, seen: ObservedRegions, plan: RegionPlan
) -> tuple[Mapping[str, bytes] | None, Mapping[str, bytes] | None]:
    """spec.link's Secrets' data to copy into the regions, or None (and why) while they are missing."""
    auth = _secret_data(seen.link_secret, AUTH_KEYS, "spec.link.secretName", mrc, plan)
    tls = None
    if mrc.link.tls_secret_name:
        tls = _secret_data(seen.tls_secret, TLS_KEYS, "spec.link.tls.secretName", mrc, plan)
        if tls is None:
            auth = None  # a link must not start plain-text when it was asked to be TLS
    return auth, tls


def _secret_data(
    secret: SecretData | None, keys: tuple[str, ...], where: str, mrc: MultiRegionSpec, plan: RegionPlan
) -> Mapping[str, bytes] | None:
    name = secret.name if secret is not None else "?"
    if secret is None or not secret.found:
        plan.waiting.append(f"{where}: Secret {mrc.namespace}/{name} does not exist yet")
        return None
    if missing := [k for k in keys if not secret.data.get(k)]:
        message = f"{where}: Secret {mrc.namespace}/{name} lacks {', '.join(missing)}"
        plan.waiting.append(message)
        plan.events.append(Event("Warning", "LinkSecretInvalid", message, standing=True))
        return None
    return secret.data


def _region(
    mrc: MultiRegionSpec,
    region: RegionEntry,
    seen: ObservedRegions,
    plan: RegionPlan,
    auth: Mapping[str, bytes] | None,
    tls: Mapping[str, bytes] | None,
) -> None:
    local = region.local
    assert local is not None
    cluster = seen.clusters.get(region.name, RegionCluster())
    if not cluster.found:
        plan.create.append(build_region_memorycluster(mrc, region))
        where = f"{local.namespace}/{local.memory_cluster}"
        plan.waiting.append(f"region {region.name}: creating MemoryCluster {where}")
        return
    desired = region_spec(mrc, region)
    if not covers(cluster.spec, desired):
        plan.update.append((local.namespace, local.memory_cluster, desired))
    # What lives in the region's namespace is owned by its MemoryCluster, whose uid is known now.
    wanted = []
    if auth is not None:
        wanted += build_link_secrets(mrc, region, cluster.uid, auth, tls)
    if region_links(region.name, mrc.region_names).listens:
        wanted += build_leafnode_services(mrc, region, cluster.uid)
    for obj in wanted:
        if (local.namespace, obj["kind"], obj["metadata"]["name"]) not in seen.children:
            plan.create.append(obj)
