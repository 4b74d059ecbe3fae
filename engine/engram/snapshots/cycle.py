"""One snapshot cycle of a shard: take and verify a snapshot, keep the newest few, truncate the journal."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from engram.journal.client import Journal
from engram.multiregion.holdback import Copied, hold_back
from engram.snapshots.producer import Progress, take_snapshot
from engram.snapshots.record import SnapshotRecord
from engram.snapshots.store import SnapshotStore

log = logging.getLogger(__name__)

DEFAULT_KEEP = 2


@dataclass(frozen=True)
class CycleResult:
    record: SnapshotRecord
    pruned: list[SnapshotRecord]
    truncated_below: int | None
    # Why truncation stopped short of what the snapshots allow: linked regions that lack entries.
    held: str = ""


def truncation_point(records: list[SnapshotRecord], keep: int) -> int | None:
    """The first entry the journal must still hold: the one after the oldest snapshot kept, so
    that every kept snapshot can be recovered from (a newest that fails falls back to an older
    one). None while no snapshot is verified: nothing may go."""
    verified = sorted((r for r in records if r.verified), key=lambda r: r.seq, reverse=True)[: max(1, keep)]
    if not verified:
        return None
    return min(r.seq for r in verified) + 1


# What the linked regions of a multi-region cluster have copied of the shard being truncated.
LinkedCopies = Callable[[], Awaitable[Sequence[Copied]]]


async def _held(journal: Journal, below: int | None, linked: LinkedCopies | None) -> tuple[int | None, str]:
    """`below`, lowered to what every linked region has copied, and why when it was."""
    if linked is None:
        return below, ""
    hold = hold_back(below, await linked())
    if not hold.held_by:
        return hold.keep_from, ""
    log.info("shard %d: %s", journal.shard, hold.reason)
    return hold.keep_from, hold.reason


async def truncate(journal: Journal, below: int | None, linked: LinkedCopies | None = None) -> int | None:
    """Drop the journal's entries before `below`, held back to what every linked region has copied;
    return the first entry kept (None: nothing was allowed to go)."""
    below, _ = await _held(journal, below, linked)
    if below is not None and below > (await journal.state()).first_seq:
        await journal.truncate(below)
        log.info("shard %d: journal truncated below entry %d", journal.shard, below)
    return below


async def snapshot_shard(journal: Journal, store: SnapshotStore, cluster_id: str, *, keep: int = DEFAULT_KEEP,
                         workdir: str | None = None, progress: Progress | None = None,
                         linked: LinkedCopies | None = None) -> CycleResult:
    record = await take_snapshot(journal, store, cluster_id, workdir=workdir, progress=progress)
    pruned = await store.prune(journal.shard, keep)
    point, held = await _held(journal, truncation_point(await store.records(journal.shard), keep), linked)
    below = await truncate(journal, point)
    return CycleResult(record, pruned, below, held)
