"""Replicas that trail their shard's commit: the progress marks that time them, the lagging ones
reported, the stuck ones named for replacement (decisions/pods.py deletes them).

Lag is counted in journal entries: the shard's committed sequence minus the replica's applied one,
as status.shards[].maxReplicaLag counts it.
"""

from __future__ import annotations

from engram_operator.decisions.plan import Event, Lagging, Plan
from engram_operator.observe import Observed
from engram_operator.replica_progress import ProgressMark, whole_seconds

# A replica this many entries behind is lagging. The chart's EngramReplicationLagHigh alert uses the
# same default, so the status and the alert mean the same thing; it is ten times the readiness
# probe's --max-lag (1000), past which a replica already leaves the Services: a burst of writes
# does not reach it, a replica that cannot keep up does.
LAG_WARN_ENTRIES = 10_000
# A replica whose applied sequence has not moved for this long while its shard committed beyond it
# is stuck: a replica applies entries as the journal delivers them, so two minutes in which not one
# is applied while entries wait is not slowness. Long enough to outlast a journal leader election.
STUCK_AFTER = 120.0


def shard_committed(seen: Observed, shard: int) -> int:
    """The shard's committed sequence: the furthest its live nodes report (a replica reports its
    applied sequence as committed, so this is the primary's while it answers)."""
    return max(
        (
            seen.statuses[p.name].committed_seq
            for p in seen.pods
            if p.shard == shard and not p.deleting and p.name in seen.statuses
        ),
        default=0,
    )


def progress_marks(seen: Observed) -> dict[str, ProgressMark]:
    """Each trailing replica's mark after this observation, from the ones remembered.

    A replica behind its shard's commit keeps its mark while it reports the same applied sequence;
    one that applied something, or a new pod of the same name, or one that went backwards (its
    container restarted and replays) gets a new one, starting now. A replica caught up, halted,
    primary or starting has none. A pod that did not answer this time keeps its mark unchanged: a
    probe timeout neither ends nor restarts the clock. A missing mark (a new replica, an operator
    that lost its status) starts the clock: it never makes a replica look stuck sooner.
    """
    out: dict[str, ProgressMark] = {}
    committed = {shard: shard_committed(seen, shard) for shard in {p.shard for p in seen.pods}}
    for pod in seen.pods:
        if pod.deleting:
            continue
        old = seen.progress_marks.get(pod.name)
        if old is not None and old.uid != pod.uid:
            old = None
        status = seen.statuses.get(pod.name)
        if status is None:
            if old is not None:
                out[pod.name] = old
            continue
        if status.role != "replica" or status.halted or status.applied_seq >= committed[pod.shard]:
            continue
        if old is not None and old.applied_seq == status.applied_seq:
            out[pod.name] = old
        else:
            out[pod.name] = ProgressMark(pod.name, pod.uid, status.applied_seq, whole_seconds(seen.now))
    return out


def trailing_replicas(seen: Observed, marks: dict[str, ProgressMark]) -> list[Lagging]:
    """Replicas answering now that are more than LAG_WARN_ENTRIES behind, or stuck (their mark is
    STUCK_AFTER old: behind, and not one entry applied since)."""
    out = []
    for pod in sorted(seen.pods, key=lambda p: (p.shard, p.name)):
        status = seen.statuses.get(pod.name)
        if pod.deleting or status is None or status.role != "replica" or status.halted:
            continue
        lag = shard_committed(seen, pod.shard) - status.applied_seq
        mark = marks.get(pod.name)
        idle = max(0.0, seen.now - mark.since) if mark is not None else 0.0
        stuck = mark is not None and idle >= STUCK_AFTER
        if stuck or lag > LAG_WARN_ENTRIES:
            out.append(Lagging(pod.name, pod.shard, lag, status.applied_seq, stuck, idle))
    return out


def plan_lag(seen: Observed, plan: Plan) -> None:
    """Record the marks and the trailing replicas, and announce each lagging one once.

    A lagging replica that still applies is left alone: it is catching up (a new node replaying
    the journal's tail looks the same for a while). A stuck one is replaced by _reconcile_pods.
    """
    plan.progress = progress_marks(seen)
    plan.lagging = trailing_replicas(seen, plan.progress)
    for lag in plan.lagging:
        if not lag.stuck:
            plan.events.append(
                Event(
                    "Warning",
                    "ReplicaLagging",
                    f"{lag.pod} (shard {lag.shard}) trails its shard's commit by more than "
                    f"{LAG_WARN_ENTRIES} entries; it is left to catch up while it applies, and replaced "
                    f"if it applies nothing for {STUCK_AFTER:g}s",
                    standing=True,
                )
            )
