"""The one idempotent reconcile: observe, decide (pure), act, write status. Called by every handler."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

from engram_operator import identity, kube, labels, metrics, probe
from engram_operator.decisions import Event, Plan, decide
from engram_operator.observe import JobInfo, Observed, job_from_api, node_from_api, pod_from_api
from engram_operator.spec import ClusterSpec
from engram_operator.status import build_status

EmitEvent = Callable[[Event], None]


async def observe(cluster: ClusterSpec, status: Mapping[str, Any]) -> Observed:
    """Everything decide needs; ``status`` is the last written status (it records the cluster id)."""
    nodes, pods, (children, journal_ready), job = await asyncio.gather(
        kube.list_nodes(),
        kube.list_engine_pods(cluster.namespace, cluster.name),
        kube.list_children(cluster.namespace, cluster.name),
        provisioning_job(cluster),
    )
    pod_infos = [p for p in (pod_from_api(p) for p in pods) if p is not None]
    return Observed(
        nodes=[node_from_api(n, cluster.placement.topology_key) for n in nodes],
        pods=pod_infos,
        children=children,
        journal_ready=journal_ready,
        statuses=await probe.all_statuses(pod_infos),
        cluster_id=identity.cluster_id(status, pod_infos, cluster.uid),
        provisioning=job,
        # Wall clock: grace periods are measured against the API's own timestamps.
        now=time.time(),
    )


async def provisioning_job(cluster: ClusterSpec) -> JobInfo | None:
    """The provisioning Job; its pods are read only while it runs, for a failed attempt's error."""
    name = labels.provision_job_name(cluster.name)
    job = next(
        (j for j in await kube.list_jobs(cluster.namespace, cluster.name) if j["metadata"]["name"] == name),
        None,
    )
    if job is None:
        return None
    info = job_from_api(job)
    if info.succeeded or info.failed:
        return info
    return job_from_api(job, await kube.list_pods(cluster.namespace, cluster.name, labels.PROVISION))


async def execute(cluster: ClusterSpec, plan: Plan, seen: Observed, logger: logging.Logger) -> None:
    """Carry out a plan. Creates tolerate AlreadyExists, deletes tolerate NotFound: safe to repeat."""
    # Services, config and the journal before pods, so a new pod's DNS and journal already exist
    # (pods also wait for the provisioning Job, which decide plans in an earlier reconcile).
    for obj in sorted(plan.create, key=lambda o: o["kind"] == "Pod"):
        if await kube.create(obj):
            logger.info("created %s %s", obj["kind"], obj["metadata"]["name"])
            if obj["kind"] == "Pod":
                metrics.POD_ACTIONS.labels("create").inc()
    for name in plan.delete_pods:
        await kube.delete_pod(cluster.namespace, name)
        metrics.POD_ACTIONS.labels("delete").inc()
        logger.info("deleted pod %s", name)
    for name in plan.delete_jobs:
        await kube.delete_job(cluster.namespace, name)
        logger.info("deleted job %s", name)
    ips = {p.name: p.ip for p in seen.pods}
    # By pod IP on the control port (probe.switchover): no Service lists that port, none needs to.
    for switch in plan.switchovers:
        logger.info("switchover: %s hands its shard to %s", switch.pod, switch.target)
        await probe.switchover(ips[switch.pod], switch.target)
    for pod, role in plan.role_labels.items():
        await kube.set_pod_label(cluster.namespace, pod, labels.ROLE, role)


def _degraded_reason(status: Mapping[str, Any]) -> str:
    """The reason of a Degraded=True condition in the last written status, or ""."""
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Degraded" and cond.get("status") == "True":
            return str(cond.get("reason") or "")
    return ""


async def reconcile(
    body: Mapping[str, Any],
    status_patch: MutableMapping[str, Any],
    emit: EmitEvent,
    logger: logging.Logger,
) -> Plan | None:
    """Bring one MemoryCluster one step closer to its spec; returns the plan (None when paused)."""
    meta = body.get("metadata") or {}
    if (meta.get("annotations") or {}).get(labels.RECONCILIATION) == "disabled":
        logger.info("reconciliation disabled by the %s annotation", labels.RECONCILIATION)
        return None
    cluster = ClusterSpec.from_body(body)
    previous = body.get("status") or {}
    seen = await observe(cluster, previous)
    plan = decide(cluster, seen)
    await execute(cluster, plan, seen, logger)
    already = _degraded_reason(previous)
    for event in plan.events:
        # An unsatisfiable spec is re-decided on every timer tick; announce it once, when it starts.
        if event.type == "Warning" and already and plan.degraded and event.reason == plan.degraded.reason:
            continue
        emit(event)
    status = build_status(cluster, seen, plan, previous, int(meta.get("generation") or 0))
    status_patch.update(status)
    outcome = "degraded" if plan.degraded else "waiting" if plan.waiting else "settled"
    metrics.RECONCILES.labels(cluster.namespace, cluster.name, outcome).inc()
    metrics.READY_NODES.labels(cluster.namespace, cluster.name).set(int(status["readyNodes"].split("/")[0]))
    return plan
