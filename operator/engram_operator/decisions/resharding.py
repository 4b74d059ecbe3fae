"""Online resharding (spec.shards changed): which shards keep pods, when the reshard Job runs, when
the pods of drained shards go, and what status.resharding and the Resharding condition say.

Growing from A to B shards: the Job is created first, then (once it exists) the pods of shards
A..B-1, placed as any shard's; the Job adds the new shards, waits for their primaries and moves
slots to them. Shrinking: the Job moves the slots of shards B..A-1 away while every pod stays; once
the engine reports those shards drained, their pods go, and the Job finishes by itself.

The slot map's shard count is never guessed from pods alone: it is the engine's report of the
latest plan when one is done, else the newest succeeded reshard Job, else status.resharding as last
written, else the provisioning Job's count. A pod of a shard beyond spec.shards is deleted only
when the engine (or the Job's success) says that shard is drained, and no node of it still
reports a slot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from engram_operator import builders, labels
from engram_operator.conditions import Condition
from engram_operator.decisions.plan import Event, Plan
from engram_operator.observe import JobInfo, Observed, ReshardProgress
from engram_operator.spec import ClusterSpec

PENDING = "pending"  # the Job is created; the engine has not reported its plan yet
REASONS = {
    PENDING: "Pending",
    "adding": "Adding",
    "waiting": "Waiting",
    "moving": "Moving",
    "drained": "Drained",
    "removing": "Removing",
    "done": "Done",
    "failed": "Failed",
}


@dataclass(frozen=True)
class Resharding:
    """What the rest of the decision needs to know about resharding."""

    # Shards whose pods are kept (created when missing, replaced when lost): spec.shards, or more
    # while shards being drained still hold slots, or fewer until the Job that adds shards exists.
    kept: int
    # A reshard Job runs or is being created: no rolling update, rebalancing or switchover.
    active: bool


def latest_progress(seen: Observed) -> ReshardProgress | None:
    """The freshest reshard report among the nodes that answered (a lagging node tells an older one)."""
    reports = [s.reshard for s in seen.statuses.values() if s.reshard is not None]
    return max(reports, key=lambda r: (r.updated, r.started), default=None)


def live_shards(seen: Observed) -> int:
    """One more than the highest shard that has a pod not being deleted (0: none)."""
    return max((p.shard + 1 for p in seen.pods if not p.deleting), default=0)


def _provisioned(cluster: ClusterSpec, seen: Observed) -> JobInfo | None:
    job = seen.provisioning
    if job is None or not job.succeeded or job.cluster_id != seen.cluster_id or job.owner_uid != cluster.uid:
        return None
    return job


def slot_map_shards(cluster: ClusterSpec, seen: Observed, jobs: list[JobInfo]) -> int | None:
    """The slot map's shard count as far as it is known; None while a reshard is under way or failed
    (a Job then finishes or resumes it) or nothing says."""
    progress = latest_progress(seen)
    if progress is not None:
        return progress.to_shards if progress.phase == "done" else None
    if any(j.active or j.failed for j in jobs):
        return None
    succeeded = [j for j in jobs if j.succeeded and j.shards]
    if succeeded:
        return max(succeeded, key=lambda j: j.created).shards
    record = seen.resharding_record
    if record.get("phase"):
        done = record["phase"] == "done"
        return (int(record.get("toShards") or 0) or None) if done else None
    provision = _provisioned(cluster, seen)
    if provision is None:
        return None
    # A Job that says no count (not made by this operator): its pods, made only after it, tell it.
    return provision.shards or live_shards(seen) or cluster.shards


def eta_seconds(progress: ReshardProgress | None) -> int | None:
    """Seconds until every slot has moved at the rate slots moved so far; None when not known."""
    if progress is None or progress.phase != "moving" or progress.slots_total <= 0:
        return None
    left = progress.slots_total - progress.slots_moved
    elapsed = progress.updated - progress.started
    if left <= 0:
        return 0
    if progress.slots_moved <= 0 or elapsed <= 0:
        return None
    return math.ceil(left * elapsed / progress.slots_moved)


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _record(
    seen: Observed, phase: str, from_shards: int, to_shards: int, progress: ReshardProgress | None
) -> dict[str, Any]:
    """status.resharding; counts from the engine's report of this plan, else kept from the last record
    of the same plan (a finished plan whose nodes no longer answer), else 0."""
    before = seen.resharding_record
    same = (
        int(before.get("toShards") or -1) == to_shards and int(before.get("fromShards") or -1) == from_shards
    )
    old = before if same else {}
    record: dict[str, Any] = {"phase": phase, "fromShards": from_shards, "toShards": to_shards}
    if progress is not None:
        record.update(
            slotsTotal=progress.slots_total,
            slotsMoved=progress.slots_moved,
            keysMoved=progress.keys_moved,
            bytesMoved=progress.bytes_moved,
        )
    else:
        for key in ("slotsTotal", "slotsMoved", "keysMoved", "bytesMoved"):
            record[key] = int(old.get(key) or 0)
    if progress is not None and progress.started > 0:
        record["startedAt"] = _iso(progress.started)
    else:
        record["startedAt"] = str(old.get("startedAt") or _iso(seen.now))
    eta = eta_seconds(progress) if phase == "moving" else None
    if eta is not None:
        record["eta"] = eta
    return record


def _moved(record: dict[str, Any]) -> str:
    text = f"{record['slotsMoved']}/{record['slotsTotal']} slots, {record['keysMoved']} keys moved"
    return text + (f"; about {record['eta']}s left" if "eta" in record else "")


def _drained_pods(seen: Observed, plan: Plan, shards: int) -> list[str]:
    """Pods of shards ``shards`` and above to delete now; a node still reporting slots keeps its
    shard's pods (the slot map it sees has not moved on yet) and is waited for."""
    beyond = [p for p in seen.pods if p.shard >= shards and not p.deleting]
    holding = sorted({p.shard for p in beyond if (s := seen.statuses.get(p.name)) is not None and s.slots})
    if holding:
        plan.waiting.append(
            "resharding: shard(s) " + ", ".join(map(str, holding)) + " still report slots; their pods "
            "stay until they hold none"
        )
    return sorted(p.name for p in beyond if p.shard not in holding)


def _remove_drained(seen: Observed, plan: Plan, act: bool, shards: int) -> None:
    """Delete the pods of shards ``shards`` and above: the reshard to ``shards`` drained them, and
    `engram reshard` waits for their nodes to be gone before it removes their streams."""
    names = _drained_pods(seen, plan, shards)
    if not names or not act:
        return
    plan.delete_pods += names
    plan.events.append(
        Event(
            "Normal",
            "RemovingDrainedShards",
            f"shards {shards}..{live_shards(seen) - 1} hold no slot any more: deleting {', '.join(names)}",
        )
    )


def _running(seen: Observed, plan: Plan, act: bool, shards: int, progress: ReshardProgress | None) -> int:
    """A reshard Job to ``shards`` runs (``progress``: the engine's report of its plan): the shards
    whose pods are kept. Growing, the new shards' pods start now that the Job exists; shrinking,
    every pod stays until the engine reports the shards above ``shards`` drained."""
    keep_all = max(shards, live_shards(seen))
    if progress is not None and progress.drained and shards < keep_all:
        _remove_drained(seen, plan, act, shards)
        return shards
    return keep_all


def _announce_end(seen: Observed, record: dict[str, Any], plan: Plan, message: str) -> None:
    """A Normal event when the reshard is first seen done, a Warning when first seen failed."""
    before = seen.resharding_record
    if before.get("phase") == record["phase"] and before.get("toShards") == record["toShards"]:
        return
    if record["phase"] == "done":
        plan.events.append(Event("Normal", "Resharded", message))
    elif record["phase"] == "failed":
        plan.events.append(Event("Warning", "ReshardingFailed", message))


def plan_resharding(cluster: ClusterSpec, seen: Observed, plan: Plan, act: bool) -> Resharding:
    """Decide resharding for this reconcile; ``act`` False (not provisioned, or the spec cannot be
    met) only reports and keeps every pod."""
    target = cluster.shards
    live = live_shards(seen)
    keep_all = max(target, live)
    if _provisioned(cluster, seen) is None:
        # Provisioning creates the shards spec.shards says; nothing to reshard before it has.
        plan.resharding_condition = (
            Condition(
                "Resharding", "Unknown", "WaitingForProvisioning", "the provisioning job has not succeeded"
            )
            if seen.resharding_record
            else _settled_condition(seen, target)
        )
        return Resharding(kept=target, active=False)

    jobs = []
    for job in seen.reshard_jobs:
        if job.cluster_id != seen.cluster_id or job.owner_uid != cluster.uid:
            # Left by an earlier MemoryCluster of this name: it says nothing about this journal.
            if act and not job.deleting:
                plan.delete_jobs.append(job.name)
                plan.events.append(
                    Event(
                        "Warning",
                        "StaleReshardJob",
                        f"job {job.name} belongs to another cluster id; deleting it",
                    )
                )
            continue
        jobs.append(job)
    name = labels.reshard_job_name(cluster.name, target)
    mine = next((j for j in jobs if j.name == name), None)
    busy = next((j for j in jobs if j is not mine and j.active), None)
    progress = latest_progress(seen)

    if (
        mine is not None
        and mine.succeeded
        and progress is not None
        and progress.to_shards != target
        and progress.started > mine.created
    ):
        # A success from an earlier reshard to this count: the engine has begun another plan since.
        if act:
            plan.delete_jobs.append(mine.name)
        jobs.remove(mine)
        mine = None

    if mine is not None and (mine.active or mine.deleting or busy is None):
        return _follow(cluster, seen, plan, act, mine, progress, keep_all)
    if busy is not None:
        plan.waiting.append(
            f"resharding: job {busy.name} (to {busy.shards} shards) runs first; spec.shards {target} "
            "follows once it finishes"
        )
        ours = progress if progress is not None and progress.to_shards == busy.shards else None
        record = _record(seen, ours.phase if ours else PENDING, busy.from_shards, busy.shards, ours)
        plan.resharding = record
        plan.resharding_condition = _running_condition(record, ours, busy.error)
        return Resharding(kept=_running(seen, plan, act, busy.shards, ours), active=True)

    if progress is not None and not progress.finished and progress.to_shards != target:
        # `engram reshard` refuses another count while a plan is unfinished (its Job was deleted
        # part-way): finish that plan first, then spec.shards follows.
        return _resume_interrupted(cluster, seen, plan, act, jobs, progress)

    in_service = slot_map_shards(cluster, seen, jobs)
    if in_service == target:
        _remove_drained(seen, plan, act, target)
        _settle_record(seen, plan, target, progress)
        plan.resharding_condition = _settled_condition(seen, target)
        return Resharding(kept=target, active=False)
    # The slot map has another count (or a plan stopped part-way): a Job for spec.shards settles it.
    # Unknown while a plan stopped part-way: the shards that have pods are the nearest truth.
    from_shards = in_service or live or (progress.from_shards if progress is not None else 0)
    kept = max(live, in_service or 0) or target
    if not act:
        plan.resharding_condition = Condition(
            "Resharding",
            "False",
            "Blocked",
            f"spec.shards is {target} but the slot map has {in_service or 'another count'}; resharding "
            "starts once the rest of the spec can be met",
        )
        return Resharding(kept=kept, active=False)
    plan.create.append(builders.build_reshard_job(cluster, seen.cluster_id, from_shards))
    # One reshard Job at a time, and no old success mistaken for this one later.
    plan.delete_jobs += [j.name for j in jobs if not j.active and not j.deleting]
    if target > from_shards:
        then = f"the pods of shards {from_shards}..{target - 1} follow once it exists"
    elif target < from_shards:
        then = f"shards {target}..{from_shards - 1} keep their pods until their slots have moved"
    else:
        then = "it settles a reshard that stopped part-way"
    plan.events.append(
        Event(
            "Normal",
            "Resharding",
            f"resharding from {from_shards} to {target} shards: creating job {name}; {then}",
        )
    )
    record = _record(seen, PENDING, from_shards, target, None)
    plan.resharding = record
    plan.resharding_condition = _running_condition(record, None)
    return Resharding(kept=kept, active=True)


def _follow(
    cluster: ClusterSpec,
    seen: Observed,
    plan: Plan,
    act: bool,
    job: JobInfo,
    progress: ReshardProgress | None,
    keep_all: int,
) -> Resharding:
    """The Job for spec.shards exists: follow it to its end."""
    target = cluster.shards
    ours = progress if progress is not None and progress.to_shards == target else None
    from_shards = job.from_shards or (ours.from_shards if ours else 0)
    if job.deleting:
        plan.waiting.append(f"resharding: job {job.name} is being deleted; a new one follows")
        record = _record(seen, ours.phase if ours else PENDING, from_shards, target, ours)
        plan.resharding = record
        plan.resharding_condition = _running_condition(record, ours)
        return Resharding(kept=keep_all, active=True)
    if job.succeeded:
        _remove_drained(seen, plan, act, target)
        record = _record(seen, "done", from_shards, target, ours)
        plan.resharding = record
        message = (
            f"the cluster has {target} shards: resharding from {from_shards} finished ({_moved(record)})"
        )
        plan.resharding_condition = Condition("Resharding", "False", "Done", message)
        _announce_end(seen, record, plan, message)
        return Resharding(kept=target, active=False)
    if job.failed:
        error = job.error or (ours.error if ours else "") or "no reason given"
        why = "it cannot run as given" if job.permanent else "it gave up"
        message = (
            f"resharding from {from_shards} to {target} shards failed ({why}): {error}. Every shard keeps "
            f"its pods and serves. Fix the cause, then delete job {job.name} to resume the same plan "
            f"(kubectl delete job {job.name}), or set spec.shards to another count"
        )
        record = _record(seen, "failed", from_shards, target, ours)
        plan.resharding = record
        plan.resharding_condition = Condition("Resharding", "False", "Failed", message)
        _announce_end(seen, record, plan, message)
        return Resharding(kept=keep_all, active=False)
    record = _record(seen, ours.phase if ours else PENDING, from_shards, target, ours)
    plan.resharding = record
    plan.resharding_condition = _running_condition(record, ours, job.error)
    return Resharding(kept=_running(seen, plan, act, target, ours), active=True)


def _resume_interrupted(
    cluster: ClusterSpec,
    seen: Observed,
    plan: Plan,
    act: bool,
    jobs: list[JobInfo],
    progress: ReshardProgress,
) -> Resharding:
    """A Job for the unfinished plan's own count, which resumes it."""
    shards = progress.to_shards
    name = labels.reshard_job_name(cluster.name, shards)
    plan.waiting.append(
        f"resharding: the reshard to {shards} shards stopped unfinished ({progress.phase}); it is finished "
        f"first, then spec.shards {cluster.shards} follows"
    )
    finished = [j.name for j in jobs if j.name == name and not j.deleting]
    if act and finished:
        # A finished Job of that name would hold the name: the new one comes next reconcile.
        plan.delete_jobs += finished
    elif act and not any(j.name == name for j in jobs):
        plan.create.append(
            builders.build_reshard_job(replace(cluster, shards=shards), seen.cluster_id, progress.from_shards)
        )
        plan.events.append(
            Event(
                "Normal",
                "Resharding",
                f"resuming the unfinished reshard from {progress.from_shards} to {shards} shards: creating "
                f"job {name}; spec.shards {cluster.shards} follows once it finishes",
            )
        )
    record = _record(seen, progress.phase, progress.from_shards, shards, progress)
    plan.resharding = record
    plan.resharding_condition = _running_condition(record, progress)
    return Resharding(kept=max(shards, live_shards(seen)), active=True)


def _running_condition(
    record: dict[str, Any], progress: ReshardProgress | None, attempt_error: str = ""
) -> Condition:
    phase = record["phase"]
    what = f"resharding from {record['fromShards']} to {record['toShards']} shards"
    if phase == "failed":
        # The engine's plan stopped, but the Job is still running: its next attempt resumes it.
        error = (progress.error if progress else "") or attempt_error or "no reason given"
        return Condition(
            "Resharding", "True", "Retrying", f"{what}: the last attempt failed ({error}); retrying"
        )
    if phase == PENDING:
        tail = f"; last attempt failed: {attempt_error}" if attempt_error else ""
        return Condition(
            "Resharding", "True", "Pending", f"{what}: waiting for the reshard job to start{tail}"
        )
    return Condition(
        "Resharding", "True", REASONS.get(phase, "InProgress"), f"{what} ({phase}): {_moved(record)}"
    )


def _settle_record(seen: Observed, plan: Plan, target: int, progress: ReshardProgress | None) -> None:
    """The slot map has spec.shards: a last record of a plan to it still in progress (its Job was
    deleted before the operator saw it succeed) is marked done."""
    before = seen.resharding_record
    if not before.get("phase") or before["phase"] == "done" or int(before.get("toShards") or 0) != target:
        return
    ours = progress if progress is not None and progress.to_shards == target else None
    from_shards = int(before.get("fromShards") or 0)
    record = _record(seen, "done", from_shards, target, ours)
    plan.resharding = record
    _announce_end(
        seen, record, plan, f"the cluster has {target} shards: resharding from {from_shards} finished"
    )


def _settled_condition(seen: Observed, target: int) -> Condition:
    if seen.resharding_record.get("phase"):
        return Condition(
            "Resharding", "False", "Done", f"the slot map has {target} shards, as spec.shards says"
        )
    return Condition(
        "Resharding", "False", "NotResharded", "spec.shards has not changed since the cluster was provisioned"
    )
