"""Replica scaling on pods: the slots (shard, node index) each shard keeps, gains and gives up under
spec.replicasPerShard, as the shared decision (engram.orchestration.replicas) picks them for
`engram local scale --replicas` too. The slots removed are not always the highest, so a shard's
indices can have gaps; the slot plan this returns holds exactly the indices that stay or come."""

from __future__ import annotations

from engram.orchestration.replicas import PRIMARY, ReplicaNode, ReplicaPlan, ReplicaScaleError, plan_replicas
from engram.orchestration.zones import NodePlacement, Spreading, ZonePlan
from engram_operator import labels, placement
from engram_operator.decisions.plan import Event, Plan
from engram_operator.observe import Observed
from engram_operator.spec import ClusterSpec


def replica_views(cluster: ClusterSpec, seen: Observed, slots: placement.SlotPlan) -> list[ReplicaNode]:
    """Each slot of a planned shard as the shared decision sees it; a shard without pods as planned.

    A slot is one node even while two pods hold it (a replacement under way). Its role is what a pod
    of it answered, or its role label when none answered: a primary whose probe failed is still
    never taken for a spare replica."""
    planned = {shard for shard, _ in slots.zones}
    roles: dict[tuple[int, int], str] = {}
    halted: dict[tuple[int, int], bool] = {}
    zones: dict[tuple[int, int], str] = {}
    for pod in seen.pods:
        if pod.deleting or pod.shard not in planned:
            continue
        key = (pod.shard, pod.index)
        status = seen.statuses.get(pod.name)
        role = status.role if status is not None else ("primary" if pod.role_label == PRIMARY else "")
        if roles.get(key) != PRIMARY:
            roles[key] = role
        halted[key] = halted.get(key, False) or bool(status is not None and status.halted)
        zones.setdefault(key, pod.zone or "")
    occupied = {shard for shard, _ in zones}
    # A shard with no pod yet (a new cluster or shard) starts on the planned layout, whose first
    # primaries the zone planner balanced; it already has its nodes, so the decision adds none.
    for (shard, index), zone in slots.zones.items():
        if shard not in occupied:
            zones[(shard, index)] = zone or ""
    return [
        ReplicaNode(labels.engine_pod_base_name(cluster.name, shard, index), shard, index, zone,
                    roles.get((shard, index), ""), halted.get((shard, index), False))
        for (shard, index), zone in sorted(zones.items())
    ]


def replica_slots(
    cluster: ClusterSpec, seen: Observed, slots: placement.SlotPlan, plan: Plan
) -> placement.SlotPlan:
    """The slots every planned shard keeps or gains; the decision's waits and warnings go on ``plan``.

    Slots the decision removes are absent, so _reconcile_pods deletes their pods; added ones carry
    the decision's zone. When the decision cannot be met the shards keep the slots they have."""
    views = replica_views(cluster, seen, slots)
    # Without zone labels every node is in the one unnamed zone (plan_slots allows only Preferred then).
    zones = list(slots.plan.zones) if slots.plan is not None else [""]
    spreading = cluster.placement.spreading if slots.plan is not None else Spreading.PREFERRED
    try:
        decision = plan_replicas(views, zones, cluster.replicas_per_shard, spreading,
                                 lambda shard, index: labels.engine_pod_base_name(cluster.name, shard, index))
    except ReplicaScaleError as err:
        plan.waiting.append(f"replicas per shard: {err}")
        plan.events.append(Event("Warning", "ReplicaScaling", str(err), standing=True))
        decision = ReplicaPlan(cluster.replicas_per_shard)
    plan.waiting.extend(f"scaling replicas down: {why}; waiting for it" for why in decision.waiting)
    removed = set(decision.remove)
    layout = {(n.shard, n.index): n.zone for n in views if n.id not in removed}
    layout.update({(n.shard, n.index): n.zone for n in decision.add})
    return _slot_plan(slots, layout)


def _slot_plan(slots: placement.SlotPlan, layout: dict[tuple[int, int], str]) -> placement.SlotPlan:
    """slots with exactly layout's slots; a slot the zone planner made keeps its first-primary flag."""
    if slots.plan is None:
        return placement.SlotPlan(None, dict.fromkeys(layout), slots.note)
    old = slots.plan
    shards = tuple(
        tuple(NodePlacement(s, i, zone, old.has(s, i) and old.node(s, i).primary)
              for (s2, i), zone in sorted(layout.items()) if s2 == s)
        for s in range(len(old.shards))
    )
    zone_plan = ZonePlan(zones=old.zones, spreading=old.spreading, replicas=old.replicas, shards=shards,
                          warnings=old.warnings)
    return placement.SlotPlan(zone_plan, {key: zone or None for key, zone in layout.items()}, slots.note)
