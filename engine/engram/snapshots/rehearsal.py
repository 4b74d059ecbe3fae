"""Verification before trust: restore a stored snapshot into a scratch Valkey and compare digests."""

from __future__ import annotations

import tempfile

from engram.snapshots.record import SnapshotCorrupt, SnapshotRecord
from engram.snapshots.scratch import ScratchValkey
from engram.snapshots.store import SnapshotStore
from engram.valkey.process import ValkeyStartError


async def rehearse(store: SnapshotStore, record: SnapshotRecord, workdir: str | None = None) -> None:
    """Raise SnapshotCorrupt unless the stored bytes load and hold exactly the recorded data.

    The digest recorded is the one of the Valkey that replayed the journal up to the snapshot's
    entry, so a match also ties the stored snapshot to the journal.
    """
    with tempfile.TemporaryDirectory(prefix="eg-rehearse-", dir=workdir) as tmp:
        scratch = ScratchValkey(tmp, frozen=True)
        await store.fetch(record, str(scratch.rdb_path))
        try:
            await scratch.start()
        except ValkeyStartError as exc:
            raise SnapshotCorrupt(f"snapshot {record.object_name} does not load: {exc}") from exc
        try:
            digest, keys = await scratch.digest(), await scratch.keys()
        finally:
            await scratch.stop()
    if digest != record.digest or keys != record.keys:
        raise SnapshotCorrupt(
            f"snapshot {record.object_name} restored to digest {digest} with {keys} keys; "
            f"it was recorded with digest {record.digest} and {record.keys} keys"
        )
