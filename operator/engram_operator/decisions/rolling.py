"""Rolling updates: replacing engine pods on an old spec one per reconcile, replicas first, then the
primary after a switchover."""

from __future__ import annotations

from engram_operator import builders
from engram_operator.decisions.plan import Event, Plan, Switchover
from engram_operator.decisions.switchover import _switchover_target
from engram_operator.observe import Observed, PodInfo
from engram_operator.spec import ClusterSpec

# An outdated pod (one the rolling update will replace anyway) that has not been Ready for this
# long is replaced at once instead of holding the roll up: it serves nothing, and it may never
# recover (the old primary, after its switchover, halts on the new engine's journal entries).
ROLL_STUCK_GRACE = 30.0


def _roll_one(cluster: ClusterSpec, seen: Observed, plan: Plan) -> None:
    """Rolling update, one pod per reconcile: replicas first, then a switchover, then the old primary."""
    current = builders.pod_spec_hash(cluster)
    live = [p for p in seen.pods if not p.deleting]
    outdated = [p for p in live if p.spec_hash != current]
    if not outdated:
        return
    if plan.resharding_active:
        # Replacing a pod or moving a primary under a running reshard would fail its MIGRATEs.
        plan.waiting.append("rolling update: waits until resharding finishes")
        return
    plan.rolling = True
    stuck = [
        p
        for p in outdated
        if p.not_ready_for(seen.now) >= ROLL_STUCK_GRACE and _answers_as(seen, p) != "primary"
    ]
    if stuck:
        pod = min(stuck, key=lambda p: (p.shard, p.index))
        plan.delete_pods.append(pod.name)
        plan.events.append(
            Event(
                "Normal",
                "RollingUpdate",
                f"replacing {pod.name} with the new spec: on the old spec and not ready for "
                f"{pod.not_ready_for(seen.now):.0f}s, it would hold the update up",
            )
        )
        return
    not_ready = sorted(p.name for p in live if not p.ready)
    if not_ready:
        plan.waiting.append(
            f"rolling update paused until every engine pod is ready ({', '.join(not_ready)} not)"
        )
        return
    keep = {(p.shard, p.index): p.zone for p in live}
    replicas = sorted((p for p in outdated if seen.role(p) != "primary"), key=lambda p: (p.shard, p.index))
    if replicas:
        pod = replicas[0]
        plan.delete_pods.append(pod.name)
        plan.events.append(
            Event("Normal", "RollingUpdate", f"replacing replica {pod.name} with the new spec")
        )
        return
    primary = sorted(outdated, key=lambda p: (p.shard, p.index))[0]
    target = _switchover_target(seen, primary.shard, primary.name, keep, current)
    if target:
        plan.switchovers.append(Switchover(primary.name, target))
        plan.events.append(
            Event("Normal", "Switchover", f"handing shard {primary.shard} from {primary.name} to {target}")
        )
    elif cluster.replicas_per_shard == 0:
        plan.delete_pods.append(primary.name)
        plan.events.append(
            Event(
                "Warning",
                "RollingUpdate",
                f"replacing {primary.name}: shard {primary.shard} has no replica, "
                "so it is unavailable until the new pod has replayed the journal",
            )
        )
    else:
        plan.waiting.append(f"waiting for an updated replica of shard {primary.shard} to take over")


def _answers_as(seen: Observed, pod: PodInfo) -> str:
    """The role the node itself reported this reconcile ("" when it did not answer)."""
    status = seen.statuses.get(pod.name)
    return status.role if status else ""
