"""Engine pods: creating the missing ones, replacing the finished, lost, halted and stuck, removing
those beyond the spec, and keeping their role labels current."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping

from engram_operator import builders, labels, placement
from engram_operator.builders.journal import JournalPlacement
from engram_operator.decisions.lag import STUCK_AFTER
from engram_operator.decisions.plan import Event, Halted, Plan, Problem, Switchover
from engram_operator.decisions.switchover import _shards_switching, _switchover_target
from engram_operator.observe import Observed, PodInfo
from engram_operator.spec import ClusterSpec

# A halted pod already on the current spec is replaced only once it is this old: its replacement
# replays the same journal and may halt the same way, and replaying is not free.
HALTED_RETRY_AFTER = 300.0


def role_label_changes(seen: Observed) -> dict[str, str]:
    """Pods whose engram.io/role label differs from what the node itself reported."""
    out = {}
    for pod in seen.pods:
        status = seen.statuses.get(pod.name)
        if status and not pod.deleting and status.role != pod.role_label:
            out[pod.name] = status.role
    return out


def _slot_pods(seen: Observed) -> dict[tuple[int, int], list[PodInfo]]:
    by_slot: dict[tuple[int, int], list[PodInfo]] = defaultdict(list)
    for pod in seen.pods:
        by_slot[(pod.shard, pod.index)].append(pod)
    return by_slot


def _create_pod(
    cluster: ClusterSpec, seen: Observed, plan: Plan, taken: set[str], shard: int, index: int,
    zone: str | None, preferred_primary: bool, journal: Mapping[str, str] | None = None,
) -> str:
    """Plan a new engine pod for (shard, index) under a name no pod holds yet; returns the name."""
    name = labels.engine_pod_name(cluster.name, shard, index, taken)
    taken.add(name)
    plan.create.append(
        builders.build_engine_pod(
            cluster, name=name, shard=shard, index=index, zone=zone, cluster_id=seen.cluster_id,
            preferred_primary=preferred_primary, journal_zones=journal,
        )
    )
    return name


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
                plan.replacements[pod.name] = "finished"
                plan.events.append(
                    Event("Normal", "ReplacingPod", f"pod {pod.name} ended ({pod.phase}); replacing it")
                )
            elif seen.pod_lost(pod):
                # Cordoned or briefly NotReady nodes never get here (availability.py).
                if _lost_pod_stays(seen, pod, slots, plan):
                    live.append(pod)
            elif not (_replace_halted(seen, pod, current, plan) or _replace_stuck(seen, pod, current, plan)):
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
        name = _create_pod(cluster, seen, plan, taken, shard, index, zone,
                           placement.planned_primary(slots, shard, index), journal)
        plan.events.append(
            Event("Normal", "CreatingPod", f"creating {name} (shard {shard}) in zone {zone or '-'}")
        )

    # Slots the shared replica decision gave up (decisions/replicas.py): it never picks a primary, but a
    # replica may have won leadership since it answered, so a primary still hands over before it goes.
    planned_shards = {shard for shard, _ in slots.zones}
    for (shard, index), pods in sorted(by_slot.items()):
        if (shard, index) in slots.zones:
            continue
        if shard not in planned_shards:
            # A whole shard beyond spec.shards: decisions/resharding.py deletes it once drained.
            continue
        for pod in pods:
            if pod.deleting:
                continue
            if seen.role(pod) == "primary" and plan.resharding_active:
                plan.waiting.append(f"{pod.name} is primary; removing it waits until resharding finishes")
            elif seen.role(pod) == "primary":
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
        plan.replacements[pod.name] = "lost"
        plan.events.append(Event("Warning", reason, f"{where}; replacing {pod.name}"))
        return False
    target = _switchover_target(seen, pod.shard, pod.name, slots.zones, allow_cordoned=True)
    if plan.resharding_active:
        # A hand-over would move the primary under the reshard's MIGRATE; the pod still serves.
        plan.waiting.append(
            f"{pod.name} leads shard {pod.shard} from a lost zone or node; it is replaced once resharding "
            "finishes"
        )
    elif target and pod.shard not in _shards_switching(seen, plan):
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
    plan.replacements[pod.name] = "halted"
    plan.events.append(Event("Warning", "NodeHalted", f"{what}; {why}"))
    return True


def _replace_stuck(seen: Observed, pod: PodInfo, current_hash: str, plan: Plan) -> bool:
    """Delete a stuck replica (decisions/lag.py) when its shard can spare it; True when deleted.

    Only a replica is ever stuck, never a primary. It still counts towards the shard's copies, so it
    goes only while every other node of its shard is Ready and staying, one per shard at a time (a
    rolling update's deletion, a lost or halted node, an earlier stuck one all make it wait). Like a
    halted one, a stuck pod on the current spec goes at most every HALTED_RETRY_AFTER seconds: its
    replacement replays the same journal and may stick at the same entry.
    """
    lag = next((x for x in plan.lagging if x.pod == pod.name and x.stuck), None)
    if lag is None:
        return False
    what = (
        f"{pod.name} (shard {pod.shard}) is stuck: it has applied nothing past entry {lag.applied_seq} "
        f"for {STUCK_AFTER:g}s or more while its shard committed beyond it"
    )
    others = [p for p in seen.pods if p.shard == pod.shard and p.name != pod.name]
    busy = any(
        p.deleting or p.finished or not p.ready or p.name in plan.delete_pods or seen.pod_lost(p)
        or bool((status := seen.statuses.get(p.name)) and status.halted)
        for p in others
    )
    if busy:
        wait = "it is replaced once every other node of the shard is Ready"
    elif pod.spec_hash == current_hash and seen.now - pod.created < HALTED_RETRY_AFTER:
        wait = f"it is replaced once {HALTED_RETRY_AFTER:g}s old (a replacement replays the same journal)"
    else:
        plan.delete_pods.append(pod.name)
        plan.replacements[pod.name] = "stuck"
        plan.events.append(
            Event(
                "Warning",
                "ReplicaStuck",
                f"{what} (up to entry {lag.applied_seq + lag.lag}, {lag.idle_for:.0f}s); replacing it: a "
                "new node replays the journal from the newest snapshot",
            )
        )
        return True
    plan.events.append(Event("Warning", "ReplicaStuck", f"{what}; {wait}", standing=True))
    return False


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
        # No zone plan to consult here; the planner always names node 0 as a shard's first primary.
        _create_pod(cluster, seen, plan, taken, shard, index, zone, index == 0)
