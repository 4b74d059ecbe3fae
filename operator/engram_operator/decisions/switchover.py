"""Handing a shard's leadership to a replica: which replica takes it, and handing it over before a
cordoned node is drained."""

from __future__ import annotations

from collections.abc import Container

from engram.orchestration.upgrade import UpgradeNode, switchover_target
from engram_operator import placement
from engram_operator.decisions.plan import Event, Plan, Switchover
from engram_operator.observe import Observed


def upgrade_views(seen: Observed, current_hash: str = "", keep: Container[tuple[int, int]] | None = None,
               stuck_after: float | None = None) -> list[UpgradeNode]:
    """Each live engine pod as the shared upgrade plan sees it (engram.orchestration.upgrade).

    Up to date: on current_hash (every pod when none is given). Staying: in keep (every pod when
    none is given). Stuck: not Ready for stuck_after seconds or more."""
    views = []
    for pod in seen.pods:
        if pod.deleting:
            continue
        status = seen.statuses.get(pod.name)
        views.append(UpgradeNode(
            id=pod.name, shard=pod.shard, index=pod.index, zone=pod.zone or "",
            role=seen.role(pod), ready=pod.ready,
            up_to_date=not current_hash or pod.spec_hash == current_hash,
            answering=status is not None,
            halted=bool(status is not None and status.halted),
            applied_seq=status.applied_seq if status is not None else 0,
            stuck=stuck_after is not None and pod.not_ready_for(seen.now) >= stuck_after,
            staying=keep is None or (pod.shard, pod.index) in keep,
            lost=seen.pod_lost(pod), cordoned=seen.pod_cordoned(pod),
        ))
    return views


def _switchover_target(
    seen: Observed,
    shard: int,
    exclude: str,
    keep: Container[tuple[int, int]],
    current_hash: str = "",
    allow_cordoned: bool = True,
) -> str | None:
    """The most caught-up ready replica of the shard that stays (and runs the current spec, when
    given), as the shared plan picks it: never on a lost node, on a cordoned one only as a last resort."""
    views = upgrade_views(seen, current_hash, keep)
    return switchover_target(views, shard, exclude, up_to_date_only=bool(current_hash),
                             allow_cordoned=allow_cordoned)


def _shards_switching(seen: Observed, plan: Plan) -> set[int]:
    shard_of = {p.name: p.shard for p in seen.pods}
    return {shard_of[s.pod] for s in plan.switchovers if s.pod in shard_of}


def _move_primaries_off_cordoned_nodes(seen: Observed, slots: placement.SlotPlan, plan: Plan) -> None:
    """A cordon comes before a drain: hand a primary's shard over while it is still calm.

    Nothing is deleted; the drain then evicts a replica (through the PodDisruptionBudget), not the
    shard's leader. Only primaries that answer as such, one switchover per shard per reconcile, and
    none while a reshard runs (an eviction still hands over, as the node does on SIGTERM).
    """
    if plan.resharding_active:
        return
    busy = _shards_switching(seen, plan)
    for pod in sorted(seen.pods, key=lambda p: (p.shard, p.index)):
        status = seen.statuses.get(pod.name)
        if pod.deleting or pod.shard in busy or pod.name in plan.delete_pods:
            continue
        if status is None or status.role != "primary" or not seen.pod_cordoned(pod):
            continue
        target = _switchover_target(seen, pod.shard, pod.name, slots.zones, allow_cordoned=False)
        if target:
            busy.add(pod.shard)
            plan.switchovers.append(Switchover(pod.name, target))
            plan.events.append(
                Event(
                    "Normal",
                    "NodeCordoned",
                    f"node {pod.node} is cordoned: handing shard {pod.shard} from {pod.name} to {target} "
                    "before a drain evicts it",
                )
            )
        else:
            plan.events.append(
                Event(
                    "Normal",
                    "NodeCordoned",
                    f"node {pod.node} is cordoned and shard {pod.shard} has no ready replica on another "
                    f"node: {pod.name} stays primary (its eviction hands over, or fails over)",
                    standing=True,
                )
            )
