"""Handing a shard's leadership to a replica: which replica takes it, and handing it over before a
cordoned node is drained."""

from __future__ import annotations

from engram_operator import placement
from engram_operator.decisions.plan import Event, Plan, Switchover
from engram_operator.observe import Observed


def _switchover_target(
    seen: Observed,
    shard: int,
    exclude: str,
    keep: dict[tuple[int, int], str | None],
    current_hash: str = "",
    allow_cordoned: bool = True,
) -> str | None:
    """The most caught-up ready replica of the shard that stays (and runs the current spec, when
    given). Never one on a lost node; one on a cordoned node only as a last resort, when allowed."""
    best: tuple[bool, int, str] | None = None
    for pod in seen.pods:
        if pod.shard != shard or pod.name == exclude or pod.deleting or not pod.ready:
            continue
        if (pod.shard, pod.index) not in keep or seen.role(pod) != "replica":
            continue
        if current_hash and pod.spec_hash != current_hash:
            continue
        cordoned = seen.pod_cordoned(pod)
        if seen.pod_lost(pod) or (cordoned and not allow_cordoned):
            continue
        status = seen.statuses.get(pod.name)
        if status is not None and status.halted:
            continue
        applied = status.applied_seq if status else 0
        rank = (not cordoned, applied, pod.name)
        if best is None or rank[:2] > best[:2]:
            best = rank
    return best[2] if best else None


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
