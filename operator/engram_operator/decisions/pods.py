"""Reconcile decisions as pure functions: desired spec + observed state in, a Plan of actions out."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from engram_operator import availability, builders, labels, placement
from engram_operator.builders.journal import JournalPlacement, JournalSpreadError, plan_journal
from engram_operator.builders.provision import source_journal_urls
from engram_operator.conditions import Condition
from engram_operator.observe import JobInfo, Observed, PodInfo, SourceCluster
from engram_operator.spec import ClusterSpec, restore_problems

# An outdated pod (one the rolling update will replace anyway) that has not been Ready for this
# long is replaced at once instead of holding the roll up: it serves nothing, and it may never
# recover (the old primary, after its switchover, halts on the new engine's journal entries).
ROLL_STUCK_GRACE = 30.0
# A halted pod already on the current spec is replaced only once it is this old: its replacement
# replays the same journal and may halt the same way, and replaying is not free.
HALTED_RETRY_AFTER = 300.0


@dataclass(frozen=True)
class Problem:
    """Why the spec cannot be (fully) satisfied: a condition reason and a human message."""

    reason: str
    message: str


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str
    # A state that lasts (a wait, a halted node kept for now) rather than an action taken: posted
    # when it first appears, not again on every reconcile that still sees it (announce.py).
    standing: bool = False


@dataclass(frozen=True)
class Halted:
    """An engine node that stopped applying the journal (ENGRAM.STATUS ``halted``), and why."""

    pod: str
    shard: int
    reason: str


@dataclass(frozen=True)
class Switchover:
    """Ask a shard's primary (``pod``) to hand leadership to ``target`` (an engine node id)."""

    pod: str
    target: str


@dataclass
class Plan:
    """What one reconcile does. Empty lists mean nothing changes."""

    create: list[dict[str, Any]] = field(default_factory=list)
    delete_pods: list[str] = field(default_factory=list)
    delete_jobs: list[str] = field(default_factory=list)
    switchovers: list[Switchover] = field(default_factory=list)
    role_labels: dict[str, str] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)
    degraded: Problem | None = None
    spread: Problem | None = None
    rolling: bool = False
    provisioned: Condition | None = None
    halted: list[Halted] = field(default_factory=list)
    # What the provisioning Job that succeeded seeded the cluster from (status.restoredFrom).
    restored_from: dict[str, Any] | None = None

    @property
    def changes(self) -> bool:
        """Whether anything running or existing is touched (labels excluded)."""
        return bool(self.create or self.delete_pods or self.delete_jobs or self.switchovers)


def decide(cluster: ClusterSpec, seen: Observed) -> Plan:
    """The whole reconcile decision; handlers only carry it out."""
    plan = Plan()
    plan.role_labels = role_label_changes(seen)
    zones = seen.known_zones()

    try:
        journal = plan_journal(zones, cluster.journal.replicas, cluster.placement.spreading)
        slots = placement.plan_slots(zones, cluster)
    except (JournalSpreadError, placement.SpreadError) as err:
        # The spec cannot be met: say so, and touch nothing beyond keeping existing pods alive.
        plan.degraded = Problem("UnsatisfiableSpread", str(err))
        plan.events.append(Event("Warning", "UnsatisfiableSpread", str(err)))
        _recover_existing(cluster, seen, plan, _provision(cluster, seen, plan))
        return plan
    if slots.note:
        plan.spread = Problem("PreferredSpreadDegraded", slots.note)

    _create_missing_children(cluster, seen, journal, plan)
    provisioned = _provision(cluster, seen, plan)
    _reconcile_pods(cluster, seen, slots, plan, provisioned, journal_zones(cluster, journal))
    _move_primaries_off_cordoned_nodes(seen, slots, plan)
    # A replaced pod could not come back before provisioning has finished: roll only after.
    if not plan.changes and provisioned:
        _roll_one(cluster, seen, plan)
    _wait_reasons(cluster, seen, plan)
    return plan


def role_label_changes(seen: Observed) -> dict[str, str]:
    """Pods whose engram.io/role label differs from what the node itself reported."""
    out = {}
    for pod in seen.pods:
        status = seen.statuses.get(pod.name)
        if status and not pod.deleting and status.role != pod.role_label:
            out[pod.name] = status.role
    return out


def _create_missing_children(cluster: ClusterSpec, seen: Observed, journal: list, plan: Plan) -> None:
    wanted = [
        builders.build_headless_service(cluster),
        builders.build_endpoint_service(cluster),
        builders.build_journal_service(cluster),
        builders.build_journal_configmap(cluster, journal),
        *(builders.build_journal_statefulset(cluster, p) for p in journal),
        builders.build_journal_pdb(cluster),
        *(builders.build_shard_pdb(cluster, s) for s in range(cluster.shards)),
    ]
    for obj in wanted:
        if (obj["kind"], obj["metadata"]["name"]) not in seen.children:
            plan.create.append(obj)


def _provision(cluster: ClusterSpec, seen: Observed, plan: Plan) -> bool:
    """Whether new engine pods may start: the provisioning Job succeeded for this cluster's id.

    Nodes never create their stream or the slot map; the Job does, once the journal is ready.
    """
    name = labels.provision_job_name(cluster.name)
    job = seen.provisioning

    def pending(reason: str, message: str) -> bool:
        plan.provisioned = Condition("Provisioned", "False", reason, message)
        plan.waiting.append(f"provisioning: {message}")
        return False

    if job is not None and job.deleting:
        return pending("Provisioning", f"job {name} is being deleted; a new one follows")
    if job is not None and (job.cluster_id != seen.cluster_id or job.owner_uid != cluster.uid):
        # Left by an earlier MemoryCluster of this name that the garbage collector has not removed
        # yet: its success says nothing about this cluster's journal.
        plan.delete_jobs.append(job.name)
        message = f"job {name} belongs to cluster id {job.cluster_id or '(none)'}, not {seen.cluster_id}"
        plan.events.append(Event("Warning", "StaleProvisionJob", f"{message}; replacing it"))
        return pending("StaleJob", f"{message}; replacing it")
    if job is not None and job.succeeded:
        seeded = f" and seeded it from {_restored_text(job.restore)}" if job.restore else ""
        plan.provisioned = Condition(
            "Provisioned",
            "True",
            "Restored" if job.restore else "Provisioned",
            f"job {name} created the journal streams and slot map of cluster id {seen.cluster_id}{seeded}",
        )
        plan.restored_from = dict(job.restore) if job.restore else None
        return True
    if job is not None and job.failed and job.permanent:
        return _provisioning_refused(cluster, job, plan)
    if job is not None and job.failed:
        # Retry with a fresh Job: the journal may have been slow, or an attempt was killed.
        plan.delete_jobs.append(job.name)
        message = f"job {name} failed ({job.error or 'no reason given'}); retrying with a new job"
        plan.events.append(Event("Warning", "ProvisioningFailed", message))
        return pending("ProvisioningFailed", message)
    if job is not None:
        tail = f"; last attempt failed: {job.error}" if job.error else ""
        return pending("Provisioning", f"job {name} is running{tail}")
    if not seen.cluster_id:
        plan.provisioned = Condition("Provisioned", "Unknown", "NoClusterId", "the cluster id is not decided")
        plan.waiting.append("provisioning: the cluster id is not decided")
        return False
    want = cluster.journal.replicas
    if seen.journal_ready < want:
        # _wait_reasons already reports the journal; the condition says what comes after it.
        plan.provisioned = Condition(
            "Provisioned",
            "False",
            "WaitingForJournal",
            f"job {name} starts once every journal server is ready ({seen.journal_ready}/{want})",
        )
        return False
    problems = restore_problems(cluster)
    if problems:
        message = (
            "; ".join(problems) + ". Restoring happens only when a cluster is created: fix it by "
            "deleting this MemoryCluster and creating it again with a valid spec.restoreFrom"
        )
        plan.degraded = plan.degraded or Problem("InvalidRestore", message)
        plan.events.append(Event("Warning", "InvalidRestore", message, standing=True))
        plan.provisioned = Condition("Provisioned", "False", "InvalidRestore", message)
        return False
    source_journal: list[str] = []
    source_id = ""
    if cluster.restore is not None and cluster.restore.cluster is not None:
        source = seen.restore_source
        wait = _restore_source_wait(cluster, source)
        if wait or source is None:
            return pending("WaitingForRestoreSource", wait)
        source_journal = source_journal_urls(cluster, source.name, source.journal_replicas)
        source_id = source.cluster_id
    plan.create.append(builders.build_provision_job(cluster, seen.cluster_id, source_journal, source_id))
    seeding = f", seeding it from {cluster.restore.describe()}" if cluster.restore else ""
    plan.events.append(
        Event("Normal", "Provisioning", f"creating job {name} for cluster id {seen.cluster_id}{seeding}")
    )
    return pending("Provisioning", f"creating job {name}{seeding}")


def _provisioning_refused(cluster: ClusterSpec, job: JobInfo, plan: Plan) -> bool:
    """A Job that failed for good (`engram provision` exit 2 or 3) stays, and is not retried.

    Another attempt would fail the same way (a file that is not an RDB, a source without snapshots,
    a name held by another cluster id), so the operator keeps the failed Job and its pods for their
    logs and says how to go on. Deleting the Job is the way to ask for a new attempt.
    """
    what = f"restoring from {cluster.restore.describe()}" if cluster.restore else "provisioning"
    reason = "RestoreFailed" if cluster.restore else "ProvisioningFailed"
    message = (
        f"{what} failed and retrying cannot help: {job.error or 'no reason given'}. Fix the cause, then "
        f"delete job {job.name} to try again (kubectl delete job {job.name}), or delete this MemoryCluster"
    )
    plan.degraded = plan.degraded or Problem(reason, message)
    plan.events.append(Event("Warning", reason, message, standing=True))
    plan.provisioned = Condition("Provisioned", "False", reason, message)
    return False


def _restore_source_wait(cluster: ClusterSpec, source: SourceCluster | None) -> str:
    """Why a restore from another cluster cannot start yet ("" when it can).

    The Job would fail for good on a source that is missing or has a shard without a verified
    snapshot, so it is not created before the source can give what it needs.
    """
    name = cluster.restore.cluster.name if cluster.restore and cluster.restore.cluster else ""
    if source is None or not source.found:
        return (
            f"MemoryCluster {name} (spec.restoreFrom.cluster) does not exist in namespace "
            f"{cluster.namespace}; provisioning waits for it"
        )
    if source.deleting:
        return f"MemoryCluster {name} (spec.restoreFrom.cluster) is being deleted: restore from another one"
    if not source.snapshots_since:
        return (
            f"MemoryCluster {name} (spec.restoreFrom.cluster) does not have a verified snapshot of every "
            f"shard yet (its status.snapshots.allShardsSince); set its spec.snapshots.request to take one now"
        )
    return ""


def _restored_text(restore: dict[str, Any]) -> str:
    """status.restoredFrom (the Job's record of its source) in words."""
    if "cluster" in restore:
        return f"the snapshots of MemoryCluster {restore['cluster'].get('name', '')}"
    rdb = restore.get("rdb") or {}
    return f"{', '.join(rdb.get('paths') or [])} in PersistentVolumeClaim {rdb.get('claimName', '')}"


def _slot_pods(seen: Observed) -> dict[tuple[int, int], list[PodInfo]]:
    by_slot: dict[tuple[int, int], list[PodInfo]] = defaultdict(list)
    for pod in seen.pods:
        by_slot[(pod.shard, pod.index)].append(pod)
    return by_slot


def journal_zones(cluster: ClusterSpec, journal: list[JournalPlacement]) -> dict[str, str]:
    """Journal server name -> its zone tag, for servers whose tag is their real zone: what a primary
    needs to keep its stream's leader out of its own zone (docs/failover.md). Servers given made-up
    tags (fewer zones than stream copies) are left out, so no leader is moved on their account."""
    return {labels.journal_pod_name(cluster.name, p.server): p.tag_zone
            for p in journal if p.zone is not None and p.tag_zone == p.zone.lower()}


def _reconcile_pods(
    cluster: ClusterSpec, seen: Observed, slots: placement.SlotPlan, plan: Plan, provisioned: bool,
    journal: Mapping[str, str],
) -> None:
    healthy = seen.healthy_zones()
    current = builders.pod_spec_hash(cluster)
    by_slot = _slot_pods(seen)
    taken = {p.name for p in seen.pods}
    # (shard, index, zone) of pods that stay, kept current as decisions are made.
    actual: list[tuple[int, int, str]] = []
    missing: list[tuple[int, int]] = []

    for (shard, index), _zone in sorted(slots.zones.items()):
        live = []
        for pod in by_slot.get((shard, index), []):
            if pod.deleting:
                continue
            if pod.finished:
                plan.delete_pods.append(pod.name)
                plan.events.append(
                    Event("Normal", "ReplacingPod", f"pod {pod.name} ended ({pod.phase}); replacing it")
                )
            elif seen.pod_lost(pod):
                # Cordoned or briefly NotReady nodes never get here (availability.py).
                if _lost_pod_stays(seen, pod, slots, plan):
                    live.append(pod)
            elif not _replace_halted(seen, pod, current, plan):
                live.append(pod)
        if live:
            actual.extend((p.shard, p.index, p.zone) for p in live)
        else:
            missing.append((shard, index))

    # Until provisioning has made the shard's stream and the slot map, a new node would only halt.
    for shard, index in missing if provisioned else []:
        zone = slots.zones[(shard, index)]
        if zone is not None:
            used = [z for s, _, z in actual if s == shard]
            if zone not in healthy or zone in used:
                try:
                    zone = placement.replacement(slots, shard, index, actual, healthy)
                except placement.SpreadError as err:
                    plan.degraded = plan.degraded or Problem("ZoneLost", str(err))
                    plan.events.append(Event("Warning", "ZoneLost", str(err)))
                    continue
            actual.append((shard, index, zone))
        name = labels.engine_pod_name(cluster.name, shard, index, taken)
        taken.add(name)
        plan.create.append(
            builders.build_engine_pod(
                cluster,
                name=name,
                shard=shard,
                index=index,
                zone=zone,
                cluster_id=seen.cluster_id,
                preferred_primary=placement.planned_primary(slots, shard, index),
                journal_zones=journal,
            )
        )
        plan.events.append(
            Event("Normal", "CreatingPod", f"creating {name} (shard {shard}) in zone {zone or '-'}")
        )

    # Nodes beyond the spec (replicas scaled down): replicas go at once, a primary hands over first.
    for (shard, index), pods in sorted(by_slot.items()):
        if (shard, index) in slots.zones:
            continue
        for pod in pods:
            if pod.deleting:
                continue
            if seen.role(pod) == "primary":
                target = _switchover_target(seen, shard, exclude=pod.name, keep=slots.zones)
                if target:
                    plan.switchovers.append(Switchover(pod.name, target))
                else:
                    plan.waiting.append(
                        f"{pod.name} is primary; waiting for a ready replica before removing it"
                    )
            else:
                plan.delete_pods.append(pod.name)
                plan.events.append(
                    Event("Normal", "ScalingDown", f"removing {pod.name}: replicasPerShard lowered")
                )


def _lost_pod_stays(seen: Observed, pod: PodInfo, slots: placement.SlotPlan, plan: Plan) -> bool:
    """Replace a pod of a lost zone or node; True when it stays for now.

    A pod that still answers as primary (its kubelet is gone, not its network) keeps serving the
    shard: it hands over to a replica elsewhere first and is replaced on a later reconcile, when it
    no longer leads. One that does not answer has lost its lease or will: it goes at once.
    """
    if pod.zone in seen.lost_zones():
        reason, where = "ZoneLost", f"zone {pod.zone} is lost (no node left in it, or none Ready)"
    else:
        reason, where = "NodeLost", f"node {pod.node} is lost (not Ready)"
    status = seen.statuses.get(pod.name)
    if status is None or status.role != "primary":
        plan.delete_pods.append(pod.name)
        plan.events.append(Event("Warning", reason, f"{where}; replacing {pod.name}"))
        return False
    target = _switchover_target(seen, pod.shard, pod.name, slots.zones, allow_cordoned=True)
    if target and pod.shard not in _shards_switching(seen, plan):
        plan.switchovers.append(Switchover(pod.name, target))
        plan.events.append(
            Event(
                "Warning",
                reason,
                f"{where}, but {pod.name} still leads shard {pod.shard}: handing it to {target} "
                "before replacing it",
            )
        )
    else:
        plan.waiting.append(
            f"{pod.name} leads shard {pod.shard} from a lost zone or node; waiting for a ready "
            "replica elsewhere to take over before replacing it"
        )
    return True


def _replace_halted(seen: Observed, pod: PodInfo, current_hash: str, plan: Plan) -> bool:
    """Record a halted node and delete it when a replacement can help; True when deleted.

    A halted node serves nothing and never recovers by itself, so deleting it costs nothing. One on
    an old spec comes back on the new one (the old primary that halts on the new engine's entries
    during an upgrade). One already on the current spec may halt again the same way, so it is
    replaced at most every HALTED_RETRY_AFTER seconds, which bounds the journal replays it causes.
    """
    status = seen.statuses.get(pod.name)
    if status is None or not status.halted:
        return False
    plan.halted.append(Halted(pod.name, pod.shard, status.halted))
    what = f"{pod.name} (shard {pod.shard}) halted: {status.halted}"
    if pod.spec_hash != current_hash:
        why = "replacing it with a pod of the current spec"
    elif seen.now - pod.created >= HALTED_RETRY_AFTER:
        why = "replacing it: a new node replays the journal from the start"
    else:
        plan.events.append(
            Event(
                "Warning",
                "NodeHalted",
                f"{what}; it is replaced once {HALTED_RETRY_AFTER:g}s old (a replacement replays the "
                "same journal and may halt the same way)",
                standing=True,
            )
        )
        return False
    plan.delete_pods.append(pod.name)
    plan.events.append(Event("Warning", "NodeHalted", f"{what}; {why}"))
    return True


def _shards_switching(seen: Observed, plan: Plan) -> set[int]:
    shard_of = {p.name: p.shard for p in seen.pods}
    return {shard_of[s.pod] for s in plan.switchovers if s.pod in shard_of}


def _move_primaries_off_cordoned_nodes(seen: Observed, slots: placement.SlotPlan, plan: Plan) -> None:
    """A cordon comes before a drain: hand a primary's shard over while it is still calm.

    Nothing is deleted; the drain then evicts a replica (through the PodDisruptionBudget), not the
    shard's leader. Only primaries that answer as such, one switchover per shard per reconcile.
    """
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


def _recover_existing(cluster: ClusterSpec, seen: Observed, plan: Plan, provisioned: bool) -> None:
    """Degraded: recreate only pods that vanished, in their own zone while it is healthy."""
    if not provisioned:
        return
    healthy = set(seen.healthy_zones())
    taken = {p.name for p in seen.pods}
    for (shard, index), pods in sorted(_slot_pods(seen).items()):
        if any(not p.deleting and not p.finished for p in pods):
            continue
        zone = pods[0].zone or None
        if zone is not None and zone not in healthy:
            continue
        name = labels.engine_pod_name(cluster.name, shard, index, taken)
        taken.add(name)
        # No zone plan to consult here; the planner always names node 0 as a shard's first primary.
        plan.create.append(
            builders.build_engine_pod(
                cluster,
                name=name,
                shard=shard,
                index=index,
                zone=zone,
                cluster_id=seen.cluster_id,
                preferred_primary=index == 0,
            )
        )


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


def _roll_one(cluster: ClusterSpec, seen: Observed, plan: Plan) -> None:
    """Rolling update, one pod per reconcile: replicas first, then a switchover, then the old primary."""
    current = builders.pod_spec_hash(cluster)
    live = [p for p in seen.pods if not p.deleting]
    outdated = [p for p in live if p.spec_hash != current]
    if not outdated:
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


def _wait_reasons(cluster: ClusterSpec, seen: Observed, plan: Plan) -> None:
    if seen.journal_ready < cluster.journal.replicas:
        plan.waiting.append(f"journal servers ready: {seen.journal_ready}/{cluster.journal.replicas}")
    want = cluster.shards * cluster.nodes_per_shard
    ready = sum(1 for p in seen.pods if p.ready and not p.deleting)
    if ready < want:
        plan.waiting.append(f"engine pods ready: {ready}/{want}")
    # Said without a running count, so that the wait is announced once, not on every reconcile.
    grace = f"{availability.NODE_LOSS_GRACE:g}s"
    ours = {p.zone for p in seen.pods if not p.deleting}
    for zone in sorted(seen.blinking_zones() & ours):
        plan.waiting.append(f"zone {zone} has no Ready node: its pods stay unless it lasts {grace}")
    for node in sorted({n.name for n in seen.nodes if n.blinking(seen.now)}):
        hosted = [p for p in seen.pods if p.node == node and not p.deleting]
        if hosted and not any(p.zone in seen.blinking_zones() for p in hosted):
            plan.waiting.append(f"node {node} is not Ready: its pods stay unless it lasts {grace}")


# On-demand snapshots (spec.snapshots.request): which replica each shard's is asked of, whether a
# request is still to be carried out, and what its outcome says. The asking is probe.take_snapshots.


@dataclass(frozen=True)
class SnapshotTarget:
    """Where one shard's on-demand snapshot is asked for: a replica pod, or why there is none."""

    shard: int
    pod: str = ""
    problem: str = ""


@dataclass(frozen=True)
class SnapshotResult:
    """One shard's answer to a snapshot request: the node's reply, or why there is none."""

    shard: int
    pod: str
    succeeded: bool
    message: str


def pending_snapshot_request(cluster: ClusterSpec, handled: Iterable[str]) -> str:
    """The spec's snapshot request when it is still to be carried out, else "".

    ``handled``: the requests already answered (status.snapshots.lastRequest, and the one this
    operator recorded last, which a body read before that status write does not show yet). A
    request is carried out once, whether every shard succeeded or not: a failed one is not retried
    until the user sets a new value.
    """
    request = cluster.snapshots.request
    return request if request and request not in set(handled) else ""


def snapshot_replica(seen: Observed, shard: int) -> PodInfo | None:
    """The replica that takes the shard's on-demand snapshot: ready (so caught up), answering as a
    replica that has not halted, on a node that is not lost, not being deleted; the lowest pod name
    of those, the node the engine's own schedule picks too (engram.snapshots.schedule.snapshot_taker),
    so requested and scheduled snapshots queue on one node instead of running side by side."""
    eligible = []
    for pod in seen.pods:
        status = seen.statuses.get(pod.name)
        if pod.shard != shard or pod.deleting or not pod.ready or not pod.ip or status is None:
            continue
        if status.role != "replica" or status.halted or seen.pod_lost(pod):
            continue
        eligible.append(pod)
    return min(eligible, key=lambda p: p.name, default=None)


def snapshot_targets(cluster: ClusterSpec, seen: Observed) -> list[SnapshotTarget]:
    """One target per shard: the replica to ask (snapshot_replica), or why the shard has none."""
    out = []
    for shard in range(cluster.shards):
        pod = snapshot_replica(seen, shard)
        if pod is not None:
            out.append(SnapshotTarget(shard, pod.name))
        elif cluster.replicas_per_shard == 0:
            out.append(
                SnapshotTarget(
                    shard,
                    problem=f"shard {shard} has no replica (replicasPerShard is 0): snapshots are taken "
                    "by a replica, never by the primary",
                )
            )
        else:
            out.append(
                SnapshotTarget(
                    shard,
                    problem=f"shard {shard} has no ready replica applying the journal (starting, halted, "
                    "lost or being replaced): snapshots are taken by a replica, never by the primary; "
                    "set spec.snapshots.request again once one is ready",
                )
            )
    return out


def snapshot_request_event(request: str, targets: Sequence[SnapshotTarget]) -> Event:
    """The action: which replica each shard's snapshot is asked of (and which shards have none)."""
    asked = ", ".join(f"shard {t.shard} on {t.pod}" for t in targets if t.pod)
    message = f"snapshot request {request!r}: " + (f"taking a snapshot of {asked}" if asked else "no shard")
    missing = [t.problem for t in targets if not t.pod]
    if missing:
        message += "; " + "; ".join(missing)
    return Event("Normal", "SnapshotRequested", message)


def snapshot_outcome_event(request: str, results: Sequence[SnapshotResult]) -> Event:
    """Normal when every shard's snapshot is verified, else a Warning naming each failure."""
    failed = [r for r in results if not r.succeeded]
    said = "; ".join(r.message for r in sorted(results, key=lambda r: (r.succeeded, r.shard)))
    if not failed:
        return Event("Normal", "SnapshotTaken", f"snapshot request {request!r}: {said}")
    return Event(
        "Warning",
        "SnapshotFailed",
        f"snapshot request {request!r}: {len(failed)} of {len(results)} shard(s) failed: {said}. "
        "Not retried: set spec.snapshots.request to a new value to try again",
    )


# Scheduled snapshots that fail on a node (ENGRAM.STATUS snapshot_failures, snapshot_error): a
# Warning event each time a node's count of failures in a row rises. Reported per attempt, like any
# action, so a node failing every 30 s posts an event per attempt; the count says how long it lasts.


def snapshot_failure_counts(seen: Observed, before: Mapping[str, int]) -> dict[str, int]:
    """Each engine pod's failed snapshot attempts in a row, as far as known: its answer this
    reconcile, else the count remembered ``before`` (a node that did not answer once is not news
    when it answers again). Pods that are gone, and zeros, are left out."""
    pods = {p.name for p in seen.pods}
    counts = {pod: n for pod, n in before.items() if pod in pods and pod not in seen.statuses}
    counts.update({pod: s.snapshot_failures for pod, s in seen.statuses.items()})
    return {pod: n for pod, n in counts.items() if n > 0}


def snapshot_failure_events(seen: Observed, before: Mapping[str, int]) -> list[Event]:
    """A Warning per node with a new failed attempt since ``before``, naming shard, node and reason.

    New: a count above the one remembered, or any non-zero count below it (a success reset it to 0
    between two observations, and it has failed again since).
    """
    shard_of = {p.name: p.shard for p in seen.pods}
    events = []
    for pod, status in sorted(seen.statuses.items()):
        if status.snapshot_failures in (0, before.get(pod, 0)) or pod not in shard_of:
            continue
        n = status.snapshot_failures
        events.append(
            Event(
                "Warning",
                "SnapshotFailed",
                f"shard {shard_of[pod]}: snapshot on {pod} failed ({n} attempt{'s' if n > 1 else ''} in a "
                f"row): {status.snapshot_error or 'no reason given'}. The node tries again; the journal "
                "is not truncated until one succeeds",
            )
        )
    return events


def remembered_snapshot_failures(status: Mapping[str, Any] | None) -> dict[str, int]:
    """The counts the last written status shows (status.shards[]), for the first reconcile after an
    operator restart: a failure already announced is not announced again."""
    out = {}
    for shard in (status or {}).get("shards") or []:
        pod, n = shard.get("snapshotErrorPod"), int(shard.get("snapshotFailures") or 0)
        if pod and n:
            out[str(pod)] = n
    return out
