"""Engine pod placement through the shared zone planner (engram.orchestration.zones)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from engram.orchestration.zones import ZonePlan, ZonePlanError, ZoneSpreadError, plan_zones, replacement_zone
from engram_operator.spec import ClusterSpec

# Empty zone lists and impossible Required layouts both mean "the spec cannot be met here".
SpreadError = ZonePlanError

__all__ = ["SlotPlan", "SpreadError", "ZoneSpreadError", "plan_slots", "planned_primary", "replacement"]


@dataclass(frozen=True)
class SlotPlan:
    """The zone of every (shard, node index); zone None when nodes carry no topology label."""

    plan: ZonePlan | None
    zones: dict[tuple[int, int], str | None]
    note: str = ""


def plan_slots(zones: list[str], cluster: ClusterSpec) -> SlotPlan:
    """Plan over every labelled zone (lost ones too, so a zone outage does not reshuffle the plan)."""
    key = cluster.placement.topology_key
    if not zones:
        if cluster.placement.spreading == "Required":
            raise ZoneSpreadError(
                f"spreading Required but no node carries the label {key}; label the nodes with their "
                "zone, set spec.placement.topologyKey to a label they have, or set spreading to Preferred"
            )
        slots = {(s, i): None for s in range(cluster.shards) for i in range(cluster.nodes_per_shard)}
        return SlotPlan(None, slots, f"no node carries the label {key}: pods are not pinned to zones")
    zone_plan = plan_zones(zones, cluster.shards, cluster.replicas_per_shard, cluster.placement.spreading)
    slots = {(n.shard, n.index): n.zone for n in zone_plan.nodes}
    return SlotPlan(zone_plan, slots, "; ".join(zone_plan.warnings))


def planned_primary(slot_plan: SlotPlan, shard: int, index: int) -> bool:
    """Whether the zone planner chose node ``index`` as its shard's first primary (balanced over zones)."""
    if slot_plan.plan is None:
        # No zones to balance over: node 0 leads, as the planner itself would choose.
        return index == 0
    return slot_plan.plan.node(shard, index).primary


def replacement(
    slot_plan: SlotPlan,
    shard: int,
    index: int,
    actual: Iterable[tuple[int, int, str]],
    healthy: list[str],
) -> str:
    """Zone for a new pod of (shard, index) whose planned zone is lost or taken.

    ``actual`` lists (shard, index, zone) of live pods, which may have moved from the plan before;
    the planner decides against that reality. Raises ZoneSpreadError when Required cannot be kept.
    """
    assert slot_plan.plan is not None
    reality = slot_plan.plan
    for s, i, zone in actual:
        if reality.has(s, i) and zone:
            reality = reality.moved(s, i, zone)
    lost = sorted(set(reality.zones) - set(healthy))
    return replacement_zone(reality, shard, index, lost, healthy)
