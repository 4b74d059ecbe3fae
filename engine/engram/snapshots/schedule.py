"""When a shard is due a snapshot, and which node takes it: decisions only, no I/O."""

from __future__ import annotations

from dataclasses import dataclass

from engram.cluster.topology import NodeRecord
from engram.snapshots.record import SnapshotRecord


@dataclass(frozen=True)
class SnapshotPolicy:
    """`interval`: seconds between snapshots (0: no schedule); `tail_entries`: journal entries
    since the newest snapshot that make one due at once (0: no threshold); `keep`: verified
    snapshots kept per shard (the journal is kept from the oldest)."""

    interval: float = 3600.0
    tail_entries: int = 100_000
    keep: int = 2

    def __post_init__(self) -> None:
        if self.interval < 0 or self.tail_entries < 0:
            raise ValueError("snapshot interval and tail threshold must not be negative (0 turns one off)")
        if self.keep < 1:
            raise ValueError(f"snapshot keep must be at least 1, got {self.keep}")

    @property
    def enabled(self) -> bool:
        return bool(self.interval or self.tail_entries)


def snapshot_due(policy: SnapshotPolicy, newest: SnapshotRecord | None, last_seq: int, now: float,
                 since: float) -> str:
    """Why a snapshot is due now ("" when it is not). `since`: when the schedule started counting
    for a shard without any snapshot (the node's start)."""
    tail = last_seq - (newest.seq if newest is not None else 0)
    if tail <= 1:
        return ""  # nothing but the genesis entry, or nothing since the newest snapshot
    if policy.tail_entries and tail >= policy.tail_entries:
        return f"{tail} journal entries since the newest snapshot (threshold {policy.tail_entries})"
    started = newest.created_at if newest is not None else since
    if policy.interval and now - started >= policy.interval:
        return f"scheduled every {policy.interval:g}s"
    return ""


def snapshot_taker(shard: int, nodes: list[NodeRecord], leader: str) -> str:
    """The node that takes the shard's snapshots: the live replica with the lowest id, so that the
    primary never spends memory or CPU on one. "" while the shard has no live replica."""
    replicas = sorted(n.node for n in nodes if n.shard == shard and n.node != leader and n.role == "replica")
    return replicas[0] if replicas else ""
