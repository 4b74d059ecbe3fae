"""A MultiRegionCluster's status: each region's phase, the lag of every (region, source region,
shard), and the Linked, RegionsReady and Degraded conditions, built in one place."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from engram_operator.builders.multiregion import local_leafnode_urls
from engram_operator.builders.region_link import leafnode_urls, region_links
from engram_operator.conditions import MULTIREGION_CONDITION_TYPES, Condition, build_conditions
from engram_operator.decisions.multiregion import (
    LeafnodeServiceSeen,
    ObservedRegions,
    RegionCluster,
    RegionPlan,
)
from engram_operator.multiregion_spec import MultiRegionSpec, RegionEntry

# A link whose source has sent nothing (not even a heartbeat) for this long is taken for down:
# sourcing sends heartbeats every few seconds while it is up.
LINK_IDLE_LIMIT = 30.0

# Leafnode Service types that reach regions in other Kubernetes clusters: their addresses are read
# back and shown as status.regions[].externalLeafnodeURLs.
EXTERNAL_SERVICE_TYPES = ("LoadBalancer", "NodePort")


@dataclass(frozen=True)
class ExternalLeafnode:
    """A LoadBalancer or NodePort region's external leafnode URLs, one per journal server, or why
    they are not all known yet (``pending``)."""

    urls: tuple[str, ...] = ()
    pending: str = ""


def url_host(host: str) -> str:
    """A host as a URL takes it: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host else host


def _server_address(kind: str, service: LeafnodeServiceSeen, node: str) -> tuple[str, int] | str:
    """(host, port) where one journal server's leafnode Service is reached from outside the
    Kubernetes cluster, or why that is not known."""
    if service.error:
        return f"could not be read ({service.error})"
    if not service.found:
        return "not made yet"
    if service.type != kind:
        # decide_regions only creates: a Service made before leafnodeService.type changed keeps its type.
        return f"of type {service.type or '?'}, not {kind}: delete it to have it made again"
    if kind == "LoadBalancer":
        return (service.ingress[0], service.port) if service.ingress else "no load balancer address yet"
    # Without a node address (node ""), external_leafnode says why for the whole region.
    return (node, service.node_port) if service.node_port else "no nodePort yet"


def external_leafnode(
    mrc: MultiRegionSpec, region: RegionEntry, seen: ObservedRegions
) -> ExternalLeafnode | None:
    """Where regions in other Kubernetes clusters dial a local region; None for a ClusterIP region.

    The URLs are copied whole into another cluster's remote region, so none is shown until every
    server's is known. A NodePort server is reached through one node, server i through the i-th
    (round robin) of seen.node_addresses: losing a node costs one URL, which the dialling side
    moves past.
    """
    assert region.local is not None
    kind = region.local.leafnode_service.type
    if kind not in EXTERNAL_SERVICE_TYPES:
        return None
    services = seen.leafnode_services.get(region.name)
    if services is None:
        return ExternalLeafnode(pending="its leafnode Services were not read")
    nodes = seen.node_addresses if kind == "NodePort" else ()
    found: list[tuple[str, int]] = []
    waits: dict[str, list[str]] = {}
    for server, service in enumerate(services):
        address = _server_address(kind, service, nodes[server % len(nodes)] if nodes else "")
        if isinstance(address, str):
            waits.setdefault(address, []).append(f"Service {region.local.namespace}/{service.name}")
        else:
            found.append(address)
    pending = [f"{', '.join(names)}: {why}" for why, names in waits.items()]
    if kind == "NodePort" and not nodes:
        pending.append(f"the Nodes could not be listed ({seen.nodes_error})" if seen.nodes_error
                       else "no Ready node has an ExternalIP or InternalIP address")
    if pending:
        return ExternalLeafnode(pending="; ".join(pending))
    # The scheme is the in-cluster URLs' (leafnodeURLs): under spec.link.tls the dialling side's
    # remote carries a tls block, which makes the connection TLS whatever the scheme.
    urls = (url for host, port in found for url in leafnode_urls([url_host(host)], port))
    return ExternalLeafnode(urls=tuple(urls))


def _listens(mrc: MultiRegionSpec, region: RegionEntry) -> bool:
    try:
        return region_links(region.name, mrc.region_names).listens
    except ValueError:
        return False  # a refused spec: the refusal says why


def external_waiting(mrc: MultiRegionSpec, seen: ObservedRegions) -> list[str]:
    """status.waiting's lines for LoadBalancer or NodePort regions whose external URLs are not known yet."""
    out = []
    for region in mrc.local_regions:
        external = external_leafnode(mrc, region, seen) if _listens(mrc, region) else None
        if external is not None and external.pending:
            out.append(f"region {region.name}: external leafnode URLs not known yet: {external.pending}")
    return out


def region_rows(mrc: MultiRegionSpec, seen: ObservedRegions) -> list[dict[str, Any]]:
    """status.regions: each region, where it runs, its phase, whether it is Ready, and where other
    regions dial it (in this Kubernetes cluster, and from others for LoadBalancer or NodePort)."""
    rows = []
    for region in mrc.regions:
        if region.remote is not None:
            rows.append({"name": region.name, "type": "remote", "cluster": region.remote.cluster_name,
                         "phase": "Remote", "ready": False,
                         "leafnodeURLs": list(region.remote.leafnode_urls)})
            continue
        assert region.local is not None
        cluster = seen.clusters.get(region.name, RegionCluster())
        row: dict[str, Any] = {
            "name": region.name,
            "type": "local",
            "namespace": region.local.namespace,
            "memoryCluster": region.local.memory_cluster,
            "phase": str(cluster.status.get("phase") or ("Pending" if cluster.found else "Creating")),
            "ready": cluster.ready(),
            "readyNodes": str(cluster.status.get("readyNodes") or ""),
            "leafnodeURLs": [],
        }
        if _listens(mrc, region):
            row["leafnodeURLs"] = list(local_leafnode_urls(mrc, region))
            if (external := external_leafnode(mrc, region, seen)) is not None:
                row["externalLeafnodeURLs"] = list(external.urls)
        rows.append(row)
    return rows


def lag_rows(lag: Mapping[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """status.lag: one row per (region, source region, shard), as `engram local status` shows it."""
    return [
        {
            "region": region,
            "from": row["from"],
            "shard": row["shard"],
            "notCopied": row["not_copied"],
            "notApplied": row["not_applied"],
            "idleSeconds": row["idle"],
            "error": row["error"],
        }
        for region, rows in lag.items()
        for row in rows
    ]


def max_lag(lag: Mapping[str, list[dict[str, Any]]]) -> int | None:
    """The most entries any region trails any source by (not copied plus not applied); None while
    no figure is known."""
    figures = [
        (row["not_copied"] or 0) + (row["not_applied"] or 0)
        for rows in lag.values()
        for row in rows
        if row["not_copied"] is not None or row["not_applied"] is not None
    ]
    return max(figures) if figures else None


def conditions(mrc: MultiRegionSpec, seen: ObservedRegions, plan: RegionPlan) -> list[Condition]:
    out = []
    if plan.refused:
        message = "; ".join(plan.refused)
        return [
            Condition("Degraded", "True", "SpecRefused", message),
            Condition("Linked", "Unknown", "SpecRefused", "the spec was refused; nothing was changed"),
            Condition("RegionsReady", "Unknown", "SpecRefused", "the spec was refused; nothing was changed"),
        ]
    out.append(Condition("Degraded", "False", "AsSpecified", "the spec is carried out"))
    locals_ = mrc.local_regions
    waiting = [r.name for r in locals_ if not seen.clusters.get(r.name, RegionCluster()).ready()]
    if waiting:
        out.append(Condition("RegionsReady", "False", "RegionsNotReady",
                             f"not Ready yet: {', '.join(waiting)}"))
    else:
        out.append(Condition("RegionsReady", "True", "AllReady",
                             f"every local region is Ready ({', '.join(r.name for r in locals_)})"))
    out.append(_linked(mrc, seen, plan))
    return out


def _linked(mrc: MultiRegionSpec, seen: ObservedRegions, plan: RegionPlan) -> Condition:
    """Linked: every local region hears from every other region, shard by shard."""
    if link_waits := [w for w in plan.waiting if w.startswith("spec.link")]:
        return Condition("Linked", "False", "LinkSecretMissing", "; ".join(link_waits))
    expected = len(mrc.regions) - 1
    rows = [(region, row) for region, lag in seen.lag.items() for row in lag]
    read = {region for region, lag in seen.lag.items() if len(lag) >= expected * mrc.shards}
    if not rows or len(read) < len(mrc.local_regions):
        unread = sorted({r.name for r in mrc.local_regions} - read)
        return Condition("Linked", "Unknown", "LagNotRead",
                         f"the lag of {', '.join(unread)} could not be read yet")
    down = [
        f"{region} from {row['from']} shard {row['shard']}: "
        + (row["error"] or f"nothing heard for {row['idle'] if row['idle'] is not None else '?'}s")
        for region, row in rows
        if row["error"] or row["idle"] is None or row["idle"] > LINK_IDLE_LIMIT
    ]
    if down:
        return Condition("Linked", "False", "LinkDown", "; ".join(down[:5]))
    return Condition("Linked", "True", "Linked", "every region hears from every other region")


def build_multiregion_status(
    mrc: MultiRegionSpec,
    seen: ObservedRegions,
    plan: RegionPlan,
    previous: Mapping[str, Any],
    generation: int,
    failures: list[str] | None = None,
) -> dict[str, Any]:
    """The whole status (kopf's merge patch replaces lists, so every list is built whole)."""
    regions = region_rows(mrc, seen)
    locals_ = [r for r in regions if r["type"] == "local"]
    ready = sum(1 for r in locals_ if r["ready"])
    conds = conditions(mrc, seen, plan)
    if failures:
        conds = [c for c in conds if c.type != "Degraded"]
        conds.append(Condition("Degraded", "True", "ActionFailed", "; ".join(failures)))
    built = build_conditions(previous.get("conditions"), conds, generation, types=MULTIREGION_CONDITION_TYPES)
    degraded = any(c["type"] == "Degraded" and c["status"] == "True" for c in built)
    phase = "Degraded" if degraded else "Ready" if ready == len(locals_) else "Reconciling"
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "phase": phase,
        "regionCount": len(regions),
        "readyRegions": f"{ready}/{len(locals_)}",
        "maxLag": max_lag(seen.lag),
        "regions": regions,
        "lag": lag_rows(seen.lag),
        "waiting": list(plan.waiting) + external_waiting(mrc, seen),
        "conditions": built,
    }
    layout = plan.layout.to_status() if plan.layout is not None else previous.get("layout")
    if layout:
        status["layout"] = layout
    return status
