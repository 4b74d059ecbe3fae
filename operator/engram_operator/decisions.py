"""Reconcile decisions as pure functions: desired spec + observed state in, a Plan of actions out."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from engram_operator import builders, labels, placement
from engram_operator.builders.journal import JournalSpreadError, plan_journal
from engram_operator.observe import Observed, PodInfo
from engram_operator.spec import ClusterSpec


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
    switchovers: list[Switchover] = field(default_factory=list)
    role_labels: dict[str, str] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)
    degraded: Problem | None = None
    spread: Problem | None = None
    rolling: bool = False

    @property
    def changes(self) -> bool:
        """Whether anything running or existing is touched (labels excluded)."""
        return bool(self.create or self.delete_pods or self.switchovers)


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
        _recover_existing(cluster, seen, plan)
        return plan
    if slots.note:
        plan.spread = Problem("PreferredSpreadDegraded", slots.note)

    _create_missing_children(cluster, seen, journal, plan)
    _reconcile_pods(cluster, seen, slots, plan)
    if not plan.changes:
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


def _slot_pods(seen: Observed) -> dict[tuple[int, int], list[PodInfo]]:
    by_slot: dict[tuple[int, int], list[PodInfo]] = defaultdict(list)
    for pod in seen.pods:
        by_slot[(pod.shard, pod.index)].append(pod)
    return by_slot


def _reconcile_pods(cluster: ClusterSpec, seen: Observed, slots: placement.SlotPlan, plan: Plan) -> None:
    healthy = seen.healthy_zones()
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
            elif slots.plan is not None and pod.zone not in healthy:
                plan.delete_pods.append(pod.name)
                plan.events.append(
                    Event("Warning", "ZoneLost", f"zone {pod.zone} has no ready node; replacing {pod.name}")
                )
            else:
                live.append(pod)
        if live:
            actual.extend((p.shard, p.index, p.zone) for p in live)
        else:
            missing.append((shard, index))

    for shard, index in missing:
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
        plan.create.append(builders.build_engine_pod(cluster, name=name, shard=shard, index=index, zone=zone))
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


def _recover_existing(cluster: ClusterSpec, seen: Observed, plan: Plan) -> None:
    """Degraded: recreate only pods that vanished, in their own zone while it is healthy."""
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
        plan.create.append(builders.build_engine_pod(cluster, name=name, shard=shard, index=index, zone=zone))


def _switchover_target(
    seen: Observed, shard: int, exclude: str, keep: dict[tuple[int, int], str | None], current_hash: str = ""
) -> str | None:
    """A ready, caught-up replica of the shard that stays (and runs the current spec, when given)."""
    best: tuple[int, str] | None = None
    for pod in seen.pods:
        if pod.shard != shard or pod.name == exclude or pod.deleting or not pod.ready:
            continue
        if (pod.shard, pod.index) not in keep or seen.role(pod) != "replica":
            continue
        if current_hash and pod.spec_hash != current_hash:
            continue
        status = seen.statuses.get(pod.name)
        applied = status.applied_seq if status else 0
        if best is None or applied > best[0]:
            best = (applied, pod.name)
    return best[1] if best else None


def _roll_one(cluster: ClusterSpec, seen: Observed, plan: Plan) -> None:
    """Rolling update, one pod per reconcile: replicas first, then a switchover, then the old primary."""
    current = builders.pod_spec_hash(cluster)
    live = [p for p in seen.pods if not p.deleting]
    outdated = [p for p in live if p.spec_hash != current]
    if not outdated:
        return
    plan.rolling = True
    if not all(p.ready for p in live):
        plan.waiting.append("rolling update paused until every engine pod is ready")
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


def _wait_reasons(cluster: ClusterSpec, seen: Observed, plan: Plan) -> None:
    if seen.journal_ready < cluster.journal.replicas:
        plan.waiting.append(f"journal servers ready: {seen.journal_ready}/{cluster.journal.replicas}")
    want = cluster.shards * cluster.nodes_per_shard
    ready = sum(1 for p in seen.pods if p.ready and not p.deleting)
    if ready < want:
        plan.waiting.append(f"engine pods ready: {ready}/{want}")
