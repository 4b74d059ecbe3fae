"""A node's recovery: load the newest snapshot it can trust, then replay only the journal's tail."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Awaitable, Callable

from engram.journal.client import Journal
from engram.journal.errors import StreamMissing
from engram.snapshots.record import Position, SnapshotError, SnapshotRecord
from engram.snapshots.store import SnapshotStore

log = logging.getLogger(__name__)

RESTORE_FILE = "engram-restore.rdb"
LIST_ROUNDS = 3

# Loads an RDB file (a path Valkey can read) into the node's Valkey, replacing its data.
LoadRdb = Callable[[str], Awaitable[None]]


def recovery_candidates(records: list[SnapshotRecord], cluster_id: str, shard: int,
                        first_seq: int) -> list[SnapshotRecord]:
    """Snapshots a node may start from, best first: usable, and with the journal's tail after them
    still held (a snapshot older than the truncation point leaves a gap)."""
    usable = [r for r in records if not r.usable_by(cluster_id, shard) and r.seq + 1 >= first_seq]
    return sorted(usable, key=lambda r: r.seq, reverse=True)


async def recover(store: SnapshotStore | None, journal: Journal, cluster_id: str, valkey_dir: str,
                  load: LoadRdb) -> Position | None:
    """Load the newest usable snapshot into Valkey and return where the journal resumes; None when
    the journal still starts at its genesis and no snapshot is needed (or none exists yet).

    A snapshot whose bytes do not match its record is skipped for an older one; when none is
    left and the journal no longer starts at its genesis entry, the node cannot recover.
    """
    shard = journal.shard
    # Newer snapshots may be taken and older ones pruned while this runs: a candidate found gone
    # is worth one more look at what the store holds now.
    for _ in range(LIST_ROUNDS):
        first = (await journal.state()).first_seq
        records = await store.records(shard) if store is not None else []
        candidates = recovery_candidates(records, cluster_id, shard, first)
        for record in candidates:
            path = os.path.join(valkey_dir, RESTORE_FILE)
            try:
                await store.fetch(record, path)  # type: ignore[union-attr]
            except SnapshotError as exc:
                log.error("snapshot %s skipped: %s", record.object_name, exc)
                continue
            try:
                await load(path)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            log.info("restored shard %d from snapshot at entry %d (%d keys); replaying the tail",
                     shard, record.seq, record.keys)
            return record.position
        if not candidates:
            break
    if first > 1:
        raise SnapshotError(
            f"shard {shard}: the journal starts at entry {first} and no usable snapshot covers the "
            "entries before it"
        )
    return None


async def open_store(journal: Journal, cluster: str, cluster_id: str) -> SnapshotStore | None:
    """The cluster's snapshot store, or None for a cluster provisioned before snapshots existed."""
    try:
        return await SnapshotStore.open(journal.jetstream, cluster, cluster_id)
    except StreamMissing as exc:
        log.info("no snapshot store for cluster %s: %s", cluster, exc)
        return None
