"""The one idempotent MultiRegionCluster reconcile: observe, decide (decisions/multiregion.py, pure),
act, write status. Called by every handler in handlers/handle_multiregion.py."""

from __future__ import annotations

import base64
import contextlib
import logging
import ssl
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

import nats
from kubernetes.client.exceptions import ApiException
from nats.js.client import JetStreamContext

from engram.multiregion.lag import ASK_TIMEOUT, RegionJournal, read_lags
from engram.orchestration.node_config import JOURNAL_USER
from engram_operator import constants, kube, labels, reconcile
from engram_operator.builders.journal_auth import PASSWORD_KEY
from engram_operator.decisions.multiregion import (
    LeafnodeServiceSeen,
    ObservedRegions,
    RegionCluster,
    RegionPlan,
    decide_regions,
)
from engram_operator.decisions.plan import Event
from engram_operator.multiregion_spec import Layout, MultiRegionSpec
from engram_operator.multiregion_status import EXTERNAL_SERVICE_TYPES, build_multiregion_status
from engram_operator.observe import node_from_api, secret_from_api
from engram_operator.spec import ClusterSpec

log = logging.getLogger(__name__)
EmitEvent = Callable[[Event], None]


def region_cluster_from_api(obj: Mapping[str, Any] | None) -> RegionCluster:
    if obj is None:
        return RegionCluster()
    meta = obj.get("metadata") or {}
    return RegionCluster(True, meta.get("uid") or "", dict(meta.get("labels") or {}),
                         dict(obj.get("spec") or {}), dict(obj.get("status") or {}))


def leafnode_service_from_api(name: str, obj: Mapping[str, Any] | None) -> LeafnodeServiceSeen:
    """A leafnode Service's type, leafnode port, nodePort and load balancer ingress points."""
    if obj is None:
        return LeafnodeServiceSeen(name)
    spec = obj.get("spec") or {}
    ports = spec.get("ports") or []
    port = next((p for p in ports if p.get("name") == "leafnode"), ports[0] if ports else {})
    ingress = ((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
    return LeafnodeServiceSeen(
        name,
        found=True,
        type=str(spec.get("type") or "ClusterIP"),
        # A hostname when there is one: it is what a provider keeps stable (and certificates name).
        ingress=tuple(h for i in ingress if (h := i.get("hostname") or i.get("ip"))),
        port=int(port.get("port") or 0),
        node_port=int(port.get("nodePort") or 0),
    )


def node_address(node: Mapping[str, Any]) -> str:
    """Where another Kubernetes cluster reaches a node's NodePorts: its ExternalIP, else its
    InternalIP (clusters on one private network); "" for a node that is not Ready, or cordoned
    (likely leaving, and the URLs are copied into another cluster to last)."""
    if not node_from_api(node, "").usable:
        return ""
    first: dict[str, str] = {}
    for address in (node.get("status") or {}).get("addresses") or []:
        if address.get("address"):
            first.setdefault(str(address.get("type")), str(address["address"]))
    return first.get("ExternalIP") or first.get("InternalIP") or ""


def node_addresses(nodes: list[Mapping[str, Any]]) -> tuple[str, ...]:
    """The usable nodes' addresses, by node name: the same nodes keep the same place in the status."""
    ordered = sorted(nodes, key=lambda n: (n.get("metadata") or {}).get("name") or "")
    return tuple(a for n in ordered if (a := node_address(n)))


def _why(err: Exception) -> str:
    if isinstance(err, ApiException):
        return f"{err.status} {err.reason}"
    return repr(err)


async def observe_leafnode_service(namespace: str, name: str) -> LeafnodeServiceSeen:
    """A LoadBalancer or NodePort region's leafnode Service; an unreadable one is kept with why."""
    try:
        return leafnode_service_from_api(name, await kube.read_service(namespace, name))
    except Exception as err:  # only the status's external URLs depend on it: never fail the reconcile
        log.info("multi-region: leafnode Service %s/%s could not be read: %r", namespace, name, err)
        return LeafnodeServiceSeen(name, error=_why(err))


async def observe_node_addresses() -> tuple[tuple[str, ...], str]:
    """The usable nodes' addresses (through the operator's one node list), and why not when unlisted."""
    try:
        return node_addresses(await reconcile.NODES.get()), ""
    except Exception as err:  # as for a Service: the NodePort URLs show as unknown, with why
        log.info("multi-region: the Nodes could not be listed: %r", err)
        return (), _why(err)


async def observe_regions(mrc: MultiRegionSpec, status: Mapping[str, Any]) -> ObservedRegions:
    """Every local region's MemoryCluster, spec.link's Secrets, the region children, the lag, and a
    LoadBalancer or NodePort region's leafnode Services (and the nodes) for its external URLs."""
    clusters: dict[str, RegionCluster] = {}
    bodies: dict[str, dict[str, Any]] = {}
    children: set[tuple[str, str, str]] = set()
    services: dict[str, tuple[LeafnodeServiceSeen, ...]] = {}
    for region in mrc.local_regions:
        assert region.local is not None
        ns, name = region.local.namespace, region.local.memory_cluster
        body = await kube.get_memorycluster(ns, name)
        clusters[region.name] = region_cluster_from_api(body)
        if body is not None:
            bodies[region.name] = body
        for secret in (labels.link_auth_secret_name(name), labels.link_tls_secret_name(name)):
            if await kube.get_secret(ns, secret) is not None:
                children.add((ns, "Secret", secret))
        names = [labels.leafnode_service_name(name, server) for server in range(mrc.journal_replicas)]
        if region.local.leafnode_service.type in EXTERNAL_SERVICE_TYPES:
            # Read whole, for its addresses. One that could not be read is left alone this pass,
            # as if made: the next pass knows whether to make it.
            services[region.name] = tuple([await observe_leafnode_service(ns, n) for n in names])
            children |= {(ns, "Service", s.name) for s in services[region.name] if s.found or s.error}
        else:
            children |= {(ns, "Service", n) for n in names if await kube.service_exists(ns, n)}
    link = tls = None
    if name := mrc.link.secret_name:
        link = secret_from_api(name, await kube.get_secret(mrc.namespace, name))
    if name := mrc.link.tls_secret_name:
        tls = secret_from_api(name, await kube.get_secret(mrc.namespace, name))
    nodes: tuple[str, ...] = ()
    nodes_error = ""
    if any(r.local is not None and r.local.leafnode_service.type == "NodePort" for r in mrc.local_regions):
        nodes, nodes_error = await observe_node_addresses()
    return ObservedRegions(
        clusters=clusters,
        link_secret=link,
        tls_secret=tls,
        children=frozenset(children),
        layout=Layout.from_status(status),
        lag=await region_lag(mrc, bodies),
        leafnode_services=services,
        node_addresses=nodes,
        nodes_error=nodes_error,
    )


async def _journal_tls(cluster: ClusterSpec) -> tuple[str, str, ssl.SSLContext | None]:
    """A locked journal's user, password and CA (spec.tls), as its nodes use them; open: ("", "", None)."""
    if cluster.tls is None:
        return "", "", None
    auth = await kube.get_secret(cluster.namespace, labels.journal_auth_secret_name(cluster.name))
    ca = await kube.get_secret(cluster.namespace, cluster.tls.journal_secret(cluster.name))
    password = base64.b64decode(((auth or {}).get("data") or {}).get(PASSWORD_KEY, "")).decode()
    context = ssl.create_default_context(
        cadata=base64.b64decode(((ca or {}).get("data") or {}).get(constants.TLS_CA, "")).decode()
    )
    return JOURNAL_USER, password, context


async def _connect(cluster: ClusterSpec) -> nats.NATS | None:
    """The region's journal through its Service; None when it does not answer."""
    url = (f"nats://{labels.journal_service_name(cluster.name)}.{cluster.namespace}.svc."
           f"{constants.CLUSTER_DOMAIN}:{constants.JOURNAL_CLIENT_PORT}")
    try:
        user, password, context = await _journal_tls(cluster)
        options: dict[str, Any] = {"user": user, "password": password, "tls": context} if context else {}
        return await nats.connect([url], connect_timeout=2, allow_reconnect=False, max_reconnect_attempts=0,
                                  **options)
    except Exception as err:  # a journal that is away: its figures show as unknown, with why
        log.info("multi-region lag: the journal of %s/%s does not answer: %r",
                 cluster.namespace, cluster.name, err)
        return None


async def region_lag(
    mrc: MultiRegionSpec, bodies: Mapping[str, dict[str, Any]]
) -> dict[str, list[dict[str, Any]]]:
    """Each local region's lag behind the others (engram.multiregion.lag), read from its journal. A
    remote region's origin streams are asked over the link, through its JetStream domain."""
    regions: dict[str, RegionJournal] = {}
    conns: dict[str, nats.NATS | None] = {}
    for region, body in bodies.items():
        cluster = ClusterSpec.from_body(body)
        if cluster.region is None:
            continue
        regions[region] = RegionJournal(region, cluster.name, cluster.shards, cluster.region.linked_regions)
        conns[region] = await _connect(cluster)
    try:
        journals: dict[str, JetStreamContext | None] = {
            r: c.jetstream(timeout=ASK_TIMEOUT) if c else None for r, c in conns.items()
        }
        via = next((c for c in conns.values() if c is not None), None)
        for region in mrc.regions:
            if region.remote is not None and via is not None:
                journals[region.name] = via.jetstream(timeout=ASK_TIMEOUT, domain=region.name)
        return await read_lags(regions, journals, ASK_TIMEOUT)
    finally:
        for conn in conns.values():
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()


async def execute(plan: RegionPlan, logger: logging.Logger) -> tuple[list[str], int]:
    """Carry out a plan: its failures (shown in status and an event, never raised), and how many of
    the regions' MemoryClusters it asked for exist now (made here, or by an interrupted pass)."""
    failures = []
    made = 0
    for obj in plan.create:
        kind, meta = obj["kind"], obj["metadata"]
        where = f"{kind} {meta['namespace']}/{meta['name']}"
        try:
            if kind == "MemoryCluster":
                new = await kube.create_memorycluster(obj)
                made += 1
            else:
                new = await kube.create(obj)
            if new:
                logger.info("created %s", where)
        except ApiException as err:
            failures.append(f"creating {where} failed: {err.status} {err.reason}")
    for namespace, name, spec in plan.update:
        try:
            await kube.patch_memorycluster_spec(namespace, name, spec)
            logger.info("updated the spec of MemoryCluster %s/%s", namespace, name)
        except ApiException as err:
            failures.append(f"updating MemoryCluster {namespace}/{name} failed: {err.status} {err.reason}")
    return failures, made


async def reconcile_regions(
    body: Mapping[str, Any],
    status_patch: MutableMapping[str, Any],
    emit: EmitEvent,
    logger: logging.Logger,
    memo: MutableMapping[str, Any],
) -> RegionPlan | None:
    """Bring one MultiRegionCluster one step closer to its spec; None when paused by annotation."""
    meta = body.get("metadata") or {}
    if (meta.get("annotations") or {}).get(labels.RECONCILIATION) == "disabled":
        logger.info("reconciliation disabled by the %s annotation", labels.RECONCILIATION)
        return None
    mrc = MultiRegionSpec.from_body(body)
    previous = body.get("status") or {}
    seen = await observe_regions(mrc, previous)
    plan = decide_regions(mrc, seen)
    failures, made = await execute(plan, logger)
    if not made and not any(c.found for c in seen.clusters.values()):
        # status.layout freezes where the regions run, because each region's spec.region (fixed at
        # creation) names every region's place. While no region's MemoryCluster exists (every
        # create refused: a namespace that does not exist, say) nothing is fixed yet, and recording
        # the layout would refuse the very spec that corrects it. One recorded earlier stays.
        plan.layout = None
    # A lasting state is posted when it appears or changes; actions every time.
    posted = memo.get("posted", frozenset())
    standing = frozenset((e.reason, e.message) for e in plan.events if e.standing)
    for event in plan.events:
        if not event.standing or (event.reason, event.message) not in posted:
            emit(event)
    memo["posted"] = standing
    for failure in failures:
        emit(Event("Warning", "ActionFailed", failure))
    status_patch.update(
        build_multiregion_status(mrc, seen, plan, previous, int(meta.get("generation") or 0), failures)
    )
    return plan


async def delete_regions(body: Mapping[str, Any], logger: logging.Logger) -> int:
    """Delete every local region's MemoryCluster this MultiRegionCluster made; how many remain.

    Those in its own namespace go with it through their owner reference too; those elsewhere only
    through this.
    """
    mrc = MultiRegionSpec.from_body(body)
    remaining = 0
    for region in mrc.local_regions:
        assert region.local is not None
        ns, name = region.local.namespace, region.local.memory_cluster
        found = region_cluster_from_api(await kube.get_memorycluster(ns, name))
        if not found.found:
            continue
        if (found.labels.get(labels.MULTIREGION), found.labels.get(labels.MULTIREGION_NAMESPACE)) != (
            mrc.name, mrc.namespace,
        ):
            continue  # not ours: never deleted
        await kube.delete_memorycluster(ns, name)
        logger.info("deleting region %s: MemoryCluster %s/%s", region.name, ns, name)
        remaining += 1
    return remaining
