"""What a MultiRegionCluster makes for each local region: its MemoryCluster (the template, the
region's overrides, and spec.region), the link Secrets copied into its namespace, and the leafnode
Services of a region that listens. Pure: a spec in, plain Kubernetes dicts out.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

from engram_operator import API_VERSION, KIND, MULTIREGION_KIND, constants, labels
from engram_operator.builders.common import metadata
from engram_operator.builders.region_link import leafnode_urls
from engram_operator.multiregion_spec import MultiRegionSpec, RegionEntry, merged
from engram_operator.spec import ClusterSpec, RegionMember, RegionSection

# The keys copied from spec.link's Secrets: the link's user and password, and its certificate.
AUTH_KEYS = ("user", "password")
TLS_KEYS = (constants.TLS_CERT, constants.TLS_KEY, constants.TLS_CA)


def region_labels(mrc: MultiRegionSpec, region: str) -> dict[str, str]:
    """Labels of everything a MultiRegionCluster makes for one region."""
    return {
        labels.NAME: "engram",
        labels.MANAGED_BY: labels.MANAGER,
        labels.PART_OF: "engram",
        labels.MULTIREGION: mrc.name,
        labels.MULTIREGION_NAMESPACE: mrc.namespace,
        labels.REGION: region,
    }


def local_leafnode_urls(mrc: MultiRegionSpec, region: RegionEntry) -> tuple[str, ...]:
    """Where a local region's journal servers take the link: one leafnode Service per server, by its
    DNS name in this Kubernetes cluster (regions elsewhere list the Services' external addresses)."""
    assert region.local is not None
    hosts = [
        f"{labels.leafnode_service_name(region.local.memory_cluster, i)}.{region.local.namespace}.svc."
        f"{constants.CLUSTER_DOMAIN}"
        for i in range(mrc.journal_replicas)
    ]
    return leafnode_urls(hosts)


def region_section(mrc: MultiRegionSpec, region: RegionEntry) -> RegionSection:
    """The spec.region the MultiRegionCluster writes into a local region's MemoryCluster."""
    members = tuple(
        RegionMember(
            r.name,
            r.cluster,
            r.remote.leafnode_urls if r.remote is not None else local_leafnode_urls(mrc, r),
        )
        for r in mrc.regions
    )
    assert region.local is not None
    cluster = region.local.memory_cluster
    return RegionSection(
        name=region.name,
        regions=members,
        auth_secret=labels.link_auth_secret_name(cluster),
        tls_secret=labels.link_tls_secret_name(cluster) if mrc.link.tls_secret_name else "",
        managed_by=mrc.managed_by,
        counters=mrc.counters,
        ttls=mrc.ttls,
    )


def region_spec(mrc: MultiRegionSpec, region: RegionEntry) -> dict[str, Any]:
    """A local region's MemoryCluster spec: the template, the region's overrides, spec.region."""
    assert region.local is not None
    spec = merged(mrc.template, region.local.overrides)
    spec["region"] = region_section(mrc, region).to_dict()
    return spec


def build_region_memorycluster(mrc: MultiRegionSpec, region: RegionEntry) -> dict[str, Any]:
    """A local region's MemoryCluster. In the MultiRegionCluster's own namespace it is owned through
    an owner reference; in another namespace, where an owner reference cannot point, through its
    labels, and the MultiRegionCluster's finalizer deletes it."""
    assert region.local is not None
    meta: dict[str, Any] = {
        "name": region.local.memory_cluster,
        "namespace": region.local.namespace,
        "labels": region_labels(mrc, region.name),
    }
    if region.local.namespace == mrc.namespace:
        meta["ownerReferences"] = [
            {
                "apiVersion": API_VERSION,
                "kind": MULTIREGION_KIND,
                "name": mrc.name,
                "uid": mrc.uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": meta, "spec": region_spec(mrc, region)}


def _owner(region: RegionEntry, uid: str) -> ClusterSpec:
    """The region's MemoryCluster as the owner of what is made in its namespace."""
    assert region.local is not None
    return ClusterSpec(name=region.local.memory_cluster, namespace=region.local.namespace, uid=uid)


def build_link_secrets(
    mrc: MultiRegionSpec,
    region: RegionEntry,
    owner_uid: str,
    auth: Mapping[str, bytes],
    tls: Mapping[str, bytes] | None,
) -> list[dict[str, Any]]:
    """spec.link's Secrets copied into a local region's namespace, owned by its MemoryCluster (its
    journal servers mount and render them: a pod reads Secrets of its own namespace only)."""
    assert region.local is not None
    cluster = _owner(region, owner_uid)
    wanted = [(labels.link_auth_secret_name(cluster.name), auth, AUTH_KEYS)]
    if tls is not None:
        wanted.append((labels.link_tls_secret_name(cluster.name), tls, TLS_KEYS))
    return [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": metadata(cluster, name, region_labels(mrc, region.name)),
            "type": "Opaque",
            "data": {k: base64.b64encode(data[k]).decode() for k in keys if k in data},
        }
        for name, data, keys in wanted
    ]


def build_leafnode_services(
    mrc: MultiRegionSpec, region: RegionEntry, owner_uid: str
) -> list[dict[str, Any]]:
    """One Service per journal server of a listening region, on its leafnode port: what the other
    regions' journal servers dial (a remote lists them all, and moves on when one is away)."""
    assert region.local is not None
    cluster = _owner(region, owner_uid)
    service = region.local.leafnode_service
    out = []
    for server in range(mrc.journal_replicas):
        meta = metadata(
            cluster,
            labels.leafnode_service_name(cluster.name, server),
            {**labels.cluster_labels(cluster.name, labels.JOURNAL), **region_labels(mrc, region.name)},
            service.annotations or None,
        )
        out.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": meta,
                "spec": {
                    "type": service.type,
                    "selector": {
                        **labels.selector(cluster.name, labels.JOURNAL),
                        labels.JOURNAL_SERVER: str(server),
                    },
                    # A leaf connection is long-lived; a restarting server's remotes reconnect, so
                    # a server that is not Ready yet need not be reachable.
                    "ports": [
                        {"name": "leafnode", "port": constants.LEAFNODE_PORT, "targetPort": "leafnode"}
                    ],
                },
            }
        )
    return out
