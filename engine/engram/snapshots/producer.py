"""Taking a snapshot away from the primary: the newest verified snapshot plus the journal, replayed
in a private Valkey up to a target sequence, saved, stored, then rehearsed before it is trusted."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from engram import ENGINE_VERSION
from engram.journal.client import Journal
from engram.journal.entries import Entry, format_version
from engram.replication.applier import Applier, ApplyHalted
from engram.snapshots.record import Position, SnapshotError, SnapshotRecord
from engram.snapshots.rehearsal import rehearse
from engram.snapshots.restore import recovery_candidates
from engram.snapshots.scratch import ScratchValkey
from engram.snapshots.store import SnapshotStore

log = logging.getLogger(__name__)

Progress = Callable[[str], None]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# Entries a second a replay is given time for beyond its fixed timeout: well below what it does
# (about 20,000 a second here, pipelined), so only a stuck replay runs out of time.
REPLAY_FLOOR_RATE = 2_000


async def replay(journal: Journal, scratch: ScratchValkey, cluster_id: str, base: Position | None,
                 target: int, timeout: float) -> Position:
    """Apply the journal after base (or from its genesis) into scratch, up to target or just past it
    where a batch ends; the running checksum is checked on the way as on every replica."""
    applier = Applier(journal, scratch.socket, lambda entry: not _reached(applier, entry, target), cluster_id,
                      pipelined=True)
    if base is not None:
        applier.restore(base)
    try:
        async with asyncio.timeout(timeout):
            await applier.run()
    except ApplyHalted as exc:
        raise SnapshotError(f"replaying shard {journal.shard} for a snapshot stopped: {exc}") from exc
    except TimeoutError:
        raise SnapshotError(
            f"replaying shard {journal.shard} did not reach entry {target} within {timeout:g}s "
            f"(applied up to {applier.applied_seq})"
        ) from None
    return applier.position()


def _reached(applier: Applier, entry: Entry, target: int) -> bool:
    return entry.seq >= target and not applier.mid_batch


async def take_snapshot(
    journal: Journal,
    store: SnapshotStore,
    cluster_id: str,
    *,
    target_seq: int | None = None,
    workdir: str | None = None,
    replay_timeout: float = 600.0,
    progress: Progress | None = None,
) -> SnapshotRecord:
    """Take, store and verify a snapshot of journal's shard at target_seq (default: its last entry).

    Returns the newest verified snapshot, which is the base itself when nothing was written since.
    """
    say = progress or (lambda _: None)
    shard = journal.shard
    state = await journal.state()
    # The same choice as a recovering node's: the newest usable snapshot whose tail is still held.
    candidates = recovery_candidates(await store.records(shard), cluster_id, shard, state.first_seq)
    base = candidates[0] if candidates else None
    target = target_seq if target_seq is not None else state.last_seq
    if base is not None and base.seq >= target:
        say(f"shard {shard}: snapshot at entry {base.seq} already covers entry {target}")
        return base
    start = base.seq + 1 if base is not None else 1
    if state.first_seq > start:
        raise SnapshotError(
            f"shard {shard}: the journal starts at entry {state.first_seq}, and no usable snapshot "
            f"covers entries {start}..{state.first_seq - 1}"
        )
    with tempfile.TemporaryDirectory(prefix="eg-snap-", dir=workdir) as tmp:
        scratch = ScratchValkey(tmp)
        if base is not None:
            say(f"shard {shard}: loading snapshot at entry {base.seq} ({base.keys} keys)")
            await store.fetch(base, str(scratch.rdb_path))
        await scratch.start()
        try:
            say(f"shard {shard}: replaying entries {start}..{target}")
            # A long tail (a first snapshot after a large restore) gets time for its length too.
            allowed = replay_timeout + (target - start) / REPLAY_FLOOR_RATE
            position = await replay(journal, scratch, cluster_id, base.position if base else None,
                                    target, allowed)
            await scratch.freeze()
            digest, keys = await scratch.digest(), await scratch.keys()
            valkey_version = await scratch.version()
            rdb = await scratch.save()
        finally:
            await scratch.stop()
        record = SnapshotRecord(
            cluster_id=cluster_id, shard=shard, position=position, digest=digest,
            sha256=await asyncio.to_thread(file_sha256, rdb), size=rdb.stat().st_size, keys=keys,
            engine_version=format_version(ENGINE_VERSION), valkey_version=valkey_version,
            created_at=time.time(),
        )
        say(f"shard {shard}: storing snapshot at entry {position.seq} ({keys} keys, {record.size} bytes)")
        await store.put(record, str(rdb))
    say(f"shard {shard}: rehearsing the restore of entry {position.seq}")
    await rehearse(store, record, workdir)
    verified = await store.mark_verified(record)
    log.info("snapshot of shard %d at entry %d verified (%d keys)", shard, verified.seq, verified.keys)
    return verified
