"""Rolling updates: replacing engine pods on an old spec one per reconcile, replicas first, then the
primary after a switchover. The order is the engine's shared plan (engram.orchestration.upgrade);
this module turns its step into pod deletions, switchovers and events."""

from __future__ import annotations

from engram.orchestration import upgrade
from engram_operator import builders
from engram_operator.decisions.plan import Event, Plan, Switchover
from engram_operator.decisions.switchover import upgrade_views
from engram_operator.observe import Observed
from engram_operator.spec import ClusterSpec

# An outdated pod (one the rolling update will replace anyway) that has not been Ready for this
# long is replaced at once instead of holding the roll up: it serves nothing, and it may never
# recover (the old primary, after its switchover, halts on the new engine's journal entries).
ROLL_STUCK_GRACE = 30.0


def _roll_one(cluster: ClusterSpec, seen: Observed, plan: Plan) -> None:
    """Rolling update, one pod per reconcile: replicas first, then a switchover, then the old primary."""
    views = upgrade_views(seen, builders.pod_spec_hash(cluster), stuck_after=ROLL_STUCK_GRACE)
    step = upgrade.next_step(views, cluster.replicas_per_shard, resharding=plan.resharding_active)
    if isinstance(step, upgrade.Done):
        return
    if isinstance(step, upgrade.Wait) and step.why == "resharding":
        plan.waiting.append("rolling update: waits until resharding finishes")
        return
    plan.rolling = True
    if isinstance(step, upgrade.Replace):
        plan.delete_pods.append(step.node)
        plan.events.append(_replace_event(seen, step))
    elif isinstance(step, upgrade.Switch):
        plan.switchovers.append(Switchover(step.primary, step.target))
        plan.events.append(
            Event("Normal", "Switchover", f"handing shard {step.shard} from {step.primary} to {step.target}")
        )
    elif step.why == "not-ready":
        plan.waiting.append(
            f"rolling update paused until every engine pod is ready ({', '.join(step.nodes)} not)"
        )
    else:
        plan.waiting.append(f"waiting for an updated replica of shard {step.shard} to take over")


def _replace_event(seen: Observed, step: upgrade.Replace) -> Event:
    """Why the pod goes: a replica's turn, stuck on the old spec, or a shard without replicas."""
    if step.why == "stuck":
        pod = next(p for p in seen.pods if p.name == step.node)
        return Event(
            "Normal",
            "RollingUpdate",
            f"replacing {step.node} with the new spec: on the old spec and not ready for "
            f"{pod.not_ready_for(seen.now):.0f}s, it would hold the update up",
        )
    if step.why == "no-replica":
        return Event(
            "Warning",
            "RollingUpdate",
            f"replacing {step.node}: shard {step.shard} has no replica, "
            "so it is unavailable until the new pod has replayed the journal",
        )
    return Event("Normal", "RollingUpdate", f"replacing replica {step.node} with the new spec")
