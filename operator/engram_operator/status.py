"""The MemoryCluster status a human reads: per-shard primaries and zones, readiness, conditions."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from engram_operator import constants, labels
from engram_operator.conditions import Condition, build_conditions
from engram_operator.decisions import (
    HALTED_RETRY_AFTER,
    LAG_WARN_ENTRIES,
    STUCK_AFTER,
    Plan,
    Problem,
    SnapshotResult,
)
from engram_operator.observe import Observed
from engram_operator.spec import ClusterSpec


def shard_status(cluster: ClusterSpec, seen: Observed, plan: Plan | None = None) -> list[dict[str, Any]]:
    """One entry per shard: its primary pod and zone, node count, and how far replicas trail.

    ``plan`` adds its lagging replicas and the progress marks to remember (decisions/lag.py).
    """
    out = []
    # Shards being drained by a reshard are still listed until their pods are gone.
    highest = max((p.shard + 1 for p in seen.pods if not p.deleting), default=0)
    for shard in range(max(cluster.shards, highest)):
        pods = sorted((p for p in seen.pods if p.shard == shard and not p.deleting), key=lambda p: p.index)
        primary = next((p for p in pods if seen.role(p) == "primary"), None)
        statuses = [seen.statuses[p.name] for p in pods if p.name in seen.statuses]
        committed = max((s.committed_seq for s in statuses), default=0)
        lag = max((committed - s.applied_seq for s in statuses if s.role == "replica"), default=0)
        # Every node reads the shard's newest verified snapshot now and then: the furthest one wins.
        snapshot_seq = max((s.snapshot_seq for s in statuses), default=0)
        ages = [
            s.snapshot_age for s in statuses if s.snapshot_seq == snapshot_seq and s.snapshot_age is not None
        ]
        entry: dict[str, Any] = {
            "id": shard,
            "primary": primary.name if primary else "",
            "primaryZone": primary.zone if primary else "",
            "readyNodes": sum(1 for p in pods if p.ready),
            "nodes": len(pods),
            "committedSeq": committed,
            "maxReplicaLag": max(lag, 0),
            "zones": [p.zone for p in pods],
            "halted": sorted(
                p.name for p in pods if p.name in seen.statuses and seen.statuses[p.name].halted
            ),
            "lagging": sorted(x.pod for x in (plan.lagging if plan else []) if x.shard == shard),
            # 0 (and no age) while no node of the shard knows a verified snapshot.
            "snapshotSeq": snapshot_seq,
        }
        if snapshot_seq and ages:
            entry["snapshotAgeSeconds"] = min(ages)
        # The operator's memory for telling stuck replicas (replica_progress.py); the next reconcile
        # reads it back from the body. The list is rewritten whole, so a mark not written is gone.
        marks = [plan.progress[p.name].as_status() for p in pods if plan and p.name in plan.progress]
        if marks:
            entry["replicaProgress"] = marks
        # Failed snapshot attempts in a row, from the node reporting the most (normally the one
        # replica taking the shard's snapshots); 0 while none fails.
        failing = max(
            ((seen.statuses[p.name].snapshot_failures, p.name) for p in pods if p.name in seen.statuses),
            default=(0, ""),
        )
        entry["snapshotFailures"] = failing[0]
        if failing[0]:
            entry["snapshotErrorPod"] = failing[1]
            entry["snapshotError"] = seen.statuses[failing[1]].snapshot_error or "no reason given"
        out.append(entry)
    return out


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def snapshot_request_record(previous: Mapping[str, Any] | None) -> dict[str, Any]:
    """status.snapshots' record of on-demand requests as last written (empty on a new cluster)."""
    old = (previous or {}).get("snapshots") or {}
    record: dict[str, Any] = {
        "lastRequest": str(old.get("lastRequest") or ""),
        "inProgress": str(old.get("inProgress") or ""),
        "results": [dict(r) for r in old.get("results") or []],
    }
    if old.get("completedAt"):
        record["completedAt"] = str(old["completedAt"])
    return record


def snapshot_request_done(request: str, results: Sequence[SnapshotResult], now: float) -> dict[str, Any]:
    """The record once every shard has answered ``request``: it is not carried out again."""
    return {
        "lastRequest": request,
        "inProgress": "",
        "completedAt": _iso(now),
        "results": [
            {"shard": r.shard, "pod": r.pod, "succeeded": r.succeeded, "message": r.message}
            for r in sorted(results, key=lambda r: r.shard)
        ],
    }


def snapshots_status(
    shards: Sequence[Mapping[str, Any]],
    record: Mapping[str, Any],
    previous: Mapping[str, Any] | None,
    now: float,
) -> dict[str, Any]:
    """status.snapshots: the request record, and since when every shard has a verified snapshot.

    ``allShardsSince`` is when the stalest shard's newest verified snapshot was taken: every shard
    has one at least that recent. It only moves forward (retention deletes a snapshot only once a
    newer one is verified), so while some shard's nodes do not answer the last value stays true
    and is kept; it is absent until every shard has had a snapshot.
    """
    out = dict(record)
    ages = [int(s["snapshotAgeSeconds"]) for s in shards if s.get("snapshotAgeSeconds") is not None]
    if shards and len(ages) == len(shards):
        out["allShardsSince"] = _iso(now - max(ages))
    else:
        before = ((previous or {}).get("snapshots") or {}).get("allShardsSince")
        if before:
            out["allShardsSince"] = before
    return out


def primary_zones(shards: list[dict[str, Any]]) -> str:
    """Compact "zone=count" list for the printer column, e.g. ``a=1,b=1,c=1``."""
    counts = Counter(s["primaryZone"] for s in shards if s["primaryZone"])
    return ",".join(f"{zone}={n}" for zone, n in sorted(counts.items()))


def nodes_healthy(plan: Plan) -> Condition:
    """False while a node has halted, a replica is stuck, or one lags far behind; each is named.

    The reason is the worst of them: NodeHalted, then ReplicaStuck, then ReplicaLagging. Ready does
    not look at it (a replica past the readiness probe's lag already counts as not Ready); halted
    and stuck nodes are replaced, a lagging one that still applies is left to catch up.
    """
    said = []
    reason = ""
    if plan.halted:
        reason = "NodeHalted"
        halted = "; ".join(f"{h.pod} (shard {h.shard}): {h.reason}" for h in plan.halted)
        said.append(
            f"{halted}. A halted node is replaced: at once on an old spec, else once it is "
            f"{HALTED_RETRY_AFTER:g}s old (a replacement replays the same journal)"
        )
    stuck = [x for x in plan.lagging if x.stuck]
    if stuck:
        reason = reason or "ReplicaStuck"
        names = "; ".join(f"{x.pod} (shard {x.shard}): {x.lag} entries behind, none applied for "
                          f"{x.idle_for:.0f}s" for x in stuck)
        said.append(f"{names}. A replica that applies nothing for {STUCK_AFTER:g}s while its shard "
                    "commits is replaced, one per shard at a time")
    lagging = [x for x in plan.lagging if not x.stuck]
    if lagging:
        reason = reason or "ReplicaLagging"
        names = "; ".join(f"{x.pod} (shard {x.shard}): {x.lag} entries behind" for x in lagging)
        said.append(f"{names}. More than {LAG_WARN_ENTRIES} entries behind: left to catch up while it "
                    "applies")
    if not said:
        return Condition(
            "NodesHealthy",
            "True",
            "Applying",
            f"no engine node has halted, and no replica is stuck or more than {LAG_WARN_ENTRIES} "
            "entries behind",
        )
    return Condition("NodesHealthy", "False", reason, ". ".join(said))


def snapshots_healthy(shards: Sequence[Mapping[str, Any]]) -> Condition:
    """False while a node of some shard reports failed snapshot attempts in a row.

    A shard whose snapshots keep failing still serves, but its journal is no longer truncated and
    its recovery replays an ever longer tail: a human should look (the node's log has the detail).
    """
    failing = [s for s in shards if s.get("snapshotFailures")]
    if not failing:
        return Condition("SnapshotsHealthy", "True", "NoFailures", "no engine node reports a failed snapshot")
    said = "; ".join(
        f"shard {s['id']}: {s['snapshotFailures']} failed attempt(s) in a row on {s['snapshotErrorPod']}: "
        f"{s['snapshotError']}"
        for s in failing
    )
    return Condition(
        "SnapshotsHealthy",
        "False",
        "SnapshotFailing",
        f"{said}. Until a snapshot succeeds the journal is not truncated and recovery replays a longer tail",
    )


def build_status(
    cluster: ClusterSpec,
    seen: Observed,
    plan: Plan,
    previous: Mapping[str, Any] | None,
    generation: int,
    now: str | None = None,
    failures: Sequence[Problem] = (),
    snapshot_requests: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The full status patch for one reconcile; ``failures`` are the actions that failed in it.

    ``snapshot_requests``: status.snapshots' request record as this reconcile leaves it
    (reconcile.snapshot_requests); the previous one is carried over when not given.
    """
    shards = shard_status(cluster, seen, plan)
    want = cluster.shards * cluster.nodes_per_shard
    ready = sum(1 for p in seen.pods if p.ready and not p.deleting)
    journal_ok = seen.journal_ready >= cluster.journal.replicas
    all_primaries = all(s["primary"] for s in shards)
    is_ready = journal_ok and ready >= want and all_primaries and plan.degraded is None

    conds = [
        Condition("Ready", "True", "ClusterReady", "every shard has a primary and all nodes are ready")
        if is_ready
        else Condition("Ready", "False", "NotReady", "; ".join(plan.waiting) or "waiting for primaries"),
        Condition(
            "Progressing",
            "True",
            failures[0].reason,
            "; ".join(f.message for f in failures) + "; retrying on the next reconcile",
        )
        if failures
        else Condition("Progressing", "True", "RollingUpdate", "replacing pods with the new spec")
        if plan.rolling
        else Condition(
            "Progressing",
            "True",
            "Resharding",
            plan.resharding_condition.message if plan.resharding_condition else "a reshard job runs",
        )
        if plan.resharding_active
        else Condition("Progressing", "True", "Reconciling", "; ".join(plan.waiting))
        if plan.changes or plan.waiting
        else Condition("Progressing", "False", "Settled", "nothing to do"),
        Condition("Degraded", "True", plan.degraded.reason, plan.degraded.message)
        if plan.degraded
        else Condition("Degraded", "False", "AsSpecified", "the spec can be satisfied"),
        Condition(
            "JournalReady",
            "True" if journal_ok else "False",
            "QuorumReady" if journal_ok else "ServersNotReady",
            f"{seen.journal_ready}/{cluster.journal.replicas} journal servers ready",
        ),
        # decide always sets it; a plan made elsewhere leaves it to build_conditions' Unknown.
        *([plan.provisioned] if plan.provisioned else []),
        Condition("ZoneSpreadSatisfied", "False", plan.spread.reason, plan.spread.message)
        if plan.spread
        else Condition(
            "ZoneSpreadSatisfied", "True", "DistinctZones", "each shard's nodes are in distinct zones"
        ),
        nodes_healthy(plan),
        snapshots_healthy(shards),
        # decide always sets it, as it does Provisioned.
        *([plan.users] if plan.users else []),
        *([plan.resharding_condition] if plan.resharding_condition else []),
    ]
    if plan.degraded:
        phase = "Degraded"
    elif is_ready:
        phase = "Updating" if plan.rolling else "Ready"
    else:
        phase = "Updating" if plan.rolling else "Reconciling"
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "phase": phase,
        "readyNodes": f"{ready}/{want}",
        "primaryZones": primary_zones(shards),
        "configurationEndpoint": (
            f"{labels.endpoint_service_name(cluster.name)}.{cluster.namespace}.svc:{constants.CLIENT_PORT}"
        ),
        "zones": seen.healthy_zones(),
        "journal": {"replicas": cluster.journal.replicas, "ready": seen.journal_ready},
        "shards": shards,
        "snapshots": snapshots_status(
            shards,
            snapshot_requests if snapshot_requests is not None else snapshot_request_record(previous),
            previous,
            seen.now,
        ),
        "conditions": build_conditions((previous or {}).get("conditions"), conds, generation, now),
    }
    if seen.cluster_id:
        # The record every later reconcile reads first: once written, the id never changes.
        status["clusterId"] = seen.cluster_id
    # The last reshard, kept once written: its Job is deleted when the next one starts.
    resharding = plan.resharding or (previous or {}).get("resharding")
    if resharding:
        status["resharding"] = dict(resharding)
    # Kept once written: the Job that recorded it may be deleted later.
    restored = plan.restored_from or (previous or {}).get("restoredFrom")
    if restored:
        status["restoredFrom"] = dict(restored)
    return status
