"""Primaries back to an even spread over zones, with the engine's own decision
(engram.orchestration.rebalance) over the pods the operator sees (docs/failover.md)."""

from __future__ import annotations

from engram.orchestration.rebalance import NodeView, primaries_per_zone, rebalance
from engram_operator.decisions.plan import Event, Plan, Switchover
from engram_operator.observe import Observed


def node_views(seen: Observed) -> list[NodeView]:
    """Each engine pod as the rebalancer needs it: healthy means ready, answering, not halted, and
    on a node that is neither lost nor cordoned (a primary moved there would only move again)."""
    views = []
    for pod in seen.pods:
        if pod.deleting:
            continue
        status = seen.statuses.get(pod.name)
        healthy = bool(pod.ready and status is not None and not status.halted
                       and not seen.pod_lost(pod) and not seen.pod_cordoned(pod))
        role, applied = (status.role, status.applied_seq) if status is not None else ("unknown", 0)
        views.append(NodeView(pod.name, pod.shard, pod.zone, role, healthy, applied))
    return views


def rebalance_primaries(seen: Observed, plan: Plan) -> None:
    """One planned switchover per reconcile, only in a calm cluster: nothing else changing, no reshard
    running, and every role label already matching what its node says (roles held for a reconcile
    since the last move)."""
    if plan.changes or plan.rolling or plan.role_labels or plan.degraded is not None:
        return
    if plan.resharding_active:
        return
    views = node_views(seen)
    move = rebalance(views)
    if move is None:
        return
    counts = primaries_per_zone(views)
    plan.switchovers.append(Switchover(move.primary, move.target))
    plan.events.append(Event(
        "Normal", "RebalancingPrimaries",
        f"zone {move.from_zone} holds {counts[move.from_zone]} primaries and zone {move.to_zone} "
        f"{counts[move.to_zone]}: handing shard {move.shard} from {move.primary} to {move.target}",
    ))
