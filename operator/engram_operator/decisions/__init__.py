"""Reconcile decisions as pure functions: desired spec + observed state in, a Plan of actions out.

``decide`` is the whole decision; each concern it draws on has a module of its own: ``plan`` (what a
decision holds), ``provisioning`` (children, the provisioning Job, restores), ``pods`` (engine pods),
``lag`` (replicas trailing their shard's commit: lagging, stuck),
``switchover`` (handing leadership over, cordoned nodes), ``rolling`` (rolling updates), ``waiting``
(what a reconcile waits for), ``snapshots`` (on-demand requests, failed snapshots), ``users``
(the users file rendered from spec.users), ``network`` (the NetworkPolicies) and ``resharding``
(a changed spec.shards: the reshard Job, and the pods of added and drained shards) and ``replicas``
(the slots each shard keeps under spec.replicasPerShard). The names
other modules use are re-exported here, so ``from engram_operator.decisions import X`` is the way in.
"""

from __future__ import annotations

from dataclasses import replace

from engram_operator import placement
from engram_operator.builders.journal import JournalSpreadError, plan_journal
from engram_operator.decisions.lag import LAG_WARN_ENTRIES, STUCK_AFTER, plan_lag
from engram_operator.decisions.network import plan_network_policies
from engram_operator.decisions.plan import Event, Halted, Lagging, Plan, Problem, Switchover
from engram_operator.decisions.pods import (
    HALTED_RETRY_AFTER,
    _reconcile_pods,
    _recover_existing,
    journal_zones,
    role_label_changes,
)
from engram_operator.decisions.provisioning import _create_missing_children, _provision
from engram_operator.decisions.rebalance import rebalance_primaries
from engram_operator.decisions.region import refuse_invalid_region
from engram_operator.decisions.replicas import replica_slots
from engram_operator.decisions.resharding import Resharding, plan_resharding
from engram_operator.decisions.rolling import ROLL_STUCK_GRACE, _roll_one
from engram_operator.decisions.snapshots import (
    SnapshotResult,
    SnapshotTarget,
    pending_snapshot_request,
    remembered_snapshot_failures,
    snapshot_failure_counts,
    snapshot_failure_events,
    snapshot_outcome_event,
    snapshot_replica,
    snapshot_request_event,
    snapshot_targets,
)
from engram_operator.decisions.switchover import _move_primaries_off_cordoned_nodes
from engram_operator.decisions.users import plan_users
from engram_operator.decisions.waiting import _wait_reasons
from engram_operator.observe import Observed
from engram_operator.spec import ClusterSpec

__all__ = [
    "HALTED_RETRY_AFTER",
    "LAG_WARN_ENTRIES",
    "ROLL_STUCK_GRACE",
    "STUCK_AFTER",
    "Event",
    "Halted",
    "Lagging",
    "Plan",
    "Problem",
    "Resharding",
    "SnapshotResult",
    "SnapshotTarget",
    "Switchover",
    "decide",
    "journal_zones",
    "pending_snapshot_request",
    "plan_network_policies",
    "plan_resharding",
    "remembered_snapshot_failures",
    "role_label_changes",
    "snapshot_failure_counts",
    "snapshot_failure_events",
    "snapshot_outcome_event",
    "snapshot_replica",
    "snapshot_request_event",
    "snapshot_targets",
]


def decide(cluster: ClusterSpec, seen: Observed) -> Plan:
    """The whole reconcile decision; handlers only carry it out."""
    plan = Plan()
    plan.role_labels = role_label_changes(seen)
    # Before the pods are decided: a stuck replica found here is replaced by _reconcile_pods.
    plan_lag(seen, plan)
    zones = seen.known_zones()
    if refuse_invalid_region(cluster, plan):
        return plan

    try:
        journal = plan_journal(zones, cluster.journal.replicas, cluster.placement.spreading)
        slots = placement.plan_slots(zones, cluster)
    except (JournalSpreadError, placement.SpreadError) as err:
        # The spec cannot be met: say so, and touch nothing beyond keeping existing pods alive.
        plan.degraded = Problem("UnsatisfiableSpread", str(err))
        # The spread asked for is not met either: ZoneSpreadSatisfied must not say it is.
        plan.spread = Problem("UnsatisfiableSpread", str(err))
        plan.events.append(Event("Warning", "UnsatisfiableSpread", str(err)))
        provisioned = _provision(cluster, seen, plan)
        users_file = plan_users(cluster, seen, plan)
        plan.resharding_active = plan_resharding(cluster, seen, plan, act=False).active
        _recover_existing(cluster, seen, plan, provisioned and users_file)
        return plan
    if slots.note:
        plan.spread = Problem("PreferredSpreadDegraded", slots.note)

    _create_missing_children(cluster, seen, journal, plan)
    plan_network_policies(cluster, seen, plan)
    provisioned = _provision(cluster, seen, plan)
    users_file = plan_users(cluster, seen, plan)
    resharding = plan_resharding(cluster, seen, plan, act=provisioned)
    plan.resharding_active = resharding.active
    if resharding.kept != cluster.shards:
        # Shards being drained keep their pods; new shards get theirs once the reshard Job exists.
        # A shard's zones depend only on its number, so the other shards' plan is the same.
        slots = placement.plan_slots(zones, replace(cluster, shards=resharding.kept))
    # Which slots each shard keeps, gains and gives up: the decision `engram local scale --replicas` makes.
    slots = replica_slots(cluster, seen, slots, plan)
    # New engine pods need the journal provisioned and their users file (they mount it).
    startable = provisioned and users_file
    _reconcile_pods(cluster, seen, slots, plan, startable, journal_zones(cluster, journal))
    _move_primaries_off_cordoned_nodes(seen, slots, plan)
    # A replaced pod could not come back before then: roll only after.
    if not plan.changes and startable:
        _roll_one(cluster, seen, plan)
    if startable:
        rebalance_primaries(seen, plan)
    _wait_reasons(cluster, seen, plan)
    return plan
