"""Snapshot decisions: on-demand snapshot requests and their outcome, and failed scheduled
snapshots reported as events."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from engram_operator.decisions.plan import Event
from engram_operator.observe import Observed, PodInfo
from engram_operator.spec import ClusterSpec

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
