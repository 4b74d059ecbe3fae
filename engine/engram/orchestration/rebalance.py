"""Primary rebalancing: planned switchovers that spread primaries evenly over zones again.

Start-up races, failovers and a zone's return leave primaries bunched in some zones (seen: a
3-shard cluster with primaries in zones a, a, b). A zone holding two primaries loses two shards'
leaders at once when it fails. Both platforms ask this module what to move and act on it: the
local supervisor with its processes, the operator with its pods (docs/failover.md).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from engram.orchestration.successor import caught_up_rank


@dataclass(frozen=True)
class NodeView:
    """One node as the platform sees it now."""

    id: str
    shard: int
    zone: str
    role: str  # "primary", "replica", or anything else while starting or unknown
    healthy: bool  # answers, serves its role, not halted
    applied_seq: int = 0


@dataclass(frozen=True)
class Move:
    """Hand ``shard``'s leadership from ``primary`` to ``target`` (in a zone with fewer primaries)."""

    shard: int
    primary: str
    target: str
    from_zone: str
    to_zone: str


def primaries_per_zone(nodes: Sequence[NodeView]) -> Counter[str]:
    """Primaries in each zone that holds a healthy node (zones with none count 0)."""
    counts: Counter[str] = Counter({n.zone: 0 for n in nodes if n.healthy})
    counts.update(n.zone for n in nodes if n.role == "primary" and n.healthy)
    return counts


def settled(nodes: Sequence[NodeView]) -> bool:
    """Every node answers and every shard has exactly one primary: the only time to move anything."""
    shards = {n.shard for n in nodes}
    primaries = Counter(n.shard for n in nodes if n.role == "primary")
    return all(n.healthy and n.role in ("primary", "replica") for n in nodes) and all(
        primaries[s] == 1 for s in shards
    )


def rebalance(nodes: Sequence[NodeView]) -> Move | None:
    """The one switchover that most evens out primaries over zones, or None when they are even.

    Even means no zone has two primaries more than another zone that could host one. One move at
    a time: the caller waits for the cluster to settle again before asking for the next.
    """
    if not settled(nodes):
        return None
    counts = primaries_per_zone(nodes)
    best: tuple[tuple[int, bool, int, str], Move] | None = None
    for primary in sorted((n for n in nodes if n.role == "primary"), key=lambda n: (n.shard, n.id)):
        for replica in (n for n in nodes if n.shard == primary.shard and n.role == "replica"):
            gain = counts[primary.zone] - counts[replica.zone]
            if gain < 2:
                continue  # moving would only swap which zone has one more
            # The biggest gap first, then the most caught-up replica, then by name for a stable choice.
            rank = (-gain, *caught_up_rank(replica.applied_seq, replica.id))
            move = Move(primary.shard, primary.id, replica.id, primary.zone, replica.zone)
            if best is None or rank < best[0]:
                best = (rank, move)
    return best[1] if best else None
