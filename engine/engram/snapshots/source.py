"""Another cluster as a source of data: the newest verified snapshot of each of its shards, found
through its own metadata and fetched (SHA-256 checked) from its snapshot bucket, to seed a new
cluster or to export as RDB files."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from engram import ENGINE_VERSION
from engram.cluster.metadata import ClusterMetadata
from engram.journal.client import Journal
from engram.journal.entries import format_version, parse_version
from engram.journal.errors import IdentityMismatch, NoQuorum, StreamMissing
from engram.journal.security import PLAIN, JournalSecurity
from engram.snapshots.record import SnapshotCorrupt, SnapshotError, SnapshotRecord
from engram.snapshots.store import SnapshotStore, bucket_name

log = logging.getLogger(__name__)

# How many times a fetch follows a snapshot that retention replaced while it was being fetched.
REPLACED_RETRIES = 3
# The journal client keeps trying servers that do not answer: bound one attempt, so a caller's
# retries (and their deadline) decide when a wrong or unreachable source journal is given up on.
CONNECT_TIMEOUT = 10.0


class SourceError(SnapshotError):
    """The source cluster cannot give what a restore or export needs; the message says what to do."""


def take_one_hint(cluster: str) -> str:
    """How to get a verified snapshot of a cluster that has none."""
    return (f"take one first with `engram local snapshot {cluster}` (on Kubernetes: set "
            f"spec.snapshots.request of MemoryCluster {cluster})")


def export_name(cluster: str, record: SnapshotRecord) -> str:
    """The file an exported snapshot is written to: cluster, shard and journal position."""
    return f"{cluster}-shard{record.shard}-seq{record.seq}.rdb"


def pick_newest(cluster: str, newest: Mapping[int, SnapshotRecord | None]) -> list[SnapshotRecord]:
    """The records to restore, in shard order; SourceError naming every shard that has none usable."""
    missing = [shard for shard, record in sorted(newest.items()) if record is None]
    if missing:
        shards = ", ".join(str(s) for s in missing)
        raise SourceError(
            f"cluster {cluster} has no verified snapshot of shard{'s' if len(missing) > 1 else ''} "
            f"{shards}: {take_one_hint(cluster)}"
        )
    records = [r for _, r in sorted(newest.items()) if r is not None]
    for record in records:
        if parse_version(record.engine_version) > ENGINE_VERSION:
            raise SourceError(
                f"the newest snapshot of shard {record.shard} of cluster {cluster} was taken by engine "
                f"{record.engine_version}, newer than this one's {format_version(ENGINE_VERSION)}: "
                "restore with that engine version or newer"
            )
    return records


@dataclass
class SourceCluster:
    """An open handle on another cluster's metadata and snapshot bucket; close() when done."""

    name: str
    cluster_id: str
    shards: list[int]
    journal: Journal
    store: SnapshotStore

    @classmethod
    async def open(cls, urls: list[str], cluster: str, security: JournalSecurity = PLAIN) -> SourceCluster:
        """Find the cluster by name on the journal at urls. SourceError when it or its snapshot bucket
        is not there; JournalError (worth a retry) when the journal does not answer."""
        where = ", ".join(urls)
        try:
            journal = await asyncio.wait_for(
                Journal.connect(urls, cluster, 0, name=f"engram-source-{cluster}", security=security),
                CONNECT_TIMEOUT)
        except TimeoutError:
            raise NoQuorum(f"no journal server of cluster {cluster} answered at {where} within "
                           f"{CONNECT_TIMEOUT:.0f}s") from None
        try:
            try:
                cluster_id = await ClusterMetadata.identify(journal.jetstream, cluster)
                meta = await ClusterMetadata.open(journal.jetstream, cluster, cluster_id)
                slots = await meta.load_slot_map()
            except StreamMissing as exc:
                raise SourceError(
                    f"no cluster {cluster} on the journal at {where} ({exc}): check the source cluster's "
                    "name and the journal servers given for it"
                ) from exc
            try:
                store = await SnapshotStore.open(journal.jetstream, cluster, cluster_id)
            except StreamMissing as exc:
                raise SourceError(
                    f"cluster {cluster} has no snapshot bucket {bucket_name(cluster)} (it was provisioned "
                    "before snapshots existed): restore from an RDB file its Valkey saved instead"
                ) from exc
            except IdentityMismatch as exc:
                raise SourceError(f"cluster {cluster}'s snapshots cannot be trusted: {exc}") from exc
        except BaseException:
            await journal.close()
            raise
        return cls(cluster, cluster_id, slots.shards(), journal, store)

    async def close(self) -> None:
        await self.journal.close()

    async def newest(self, shards: list[int] | None = None) -> list[SnapshotRecord]:
        """The newest verified snapshot of every shard (or of the given ones)."""
        wanted = self.shards if shards is None else shards
        unknown = [s for s in wanted if s not in self.shards]
        if unknown:
            raise SourceError(f"cluster {self.name} has no shard {unknown[0]} "
                              f"(its shards: {', '.join(map(str, self.shards))})")
        return pick_newest(self.name, {s: await self.store.newest_verified(s) for s in wanted})

    async def fetch(self, records: list[SnapshotRecord], directory: str | Path,
                    progress: Callable[[str], None] | None = None) -> list[tuple[SnapshotRecord, Path]]:
        """Download each record's RDB into directory (named by export_name), SHA-256 checked;
        returns the records actually fetched (a newer one when retention replaced one meanwhile)."""
        say = progress or (lambda _: None)
        fetched = []
        for record in records:
            got = await self._fetch_one(record, Path(directory))
            say(f"shard {got[0].shard} of {self.name}: snapshot at entry {got[0].seq} fetched "
                f"({got[0].keys} keys, {got[0].size} bytes, sha256 {got[0].sha256})")
            fetched.append(got)
        return fetched

    async def _fetch_one(self, record: SnapshotRecord, directory: Path) -> tuple[SnapshotRecord, Path]:
        for _ in range(REPLACED_RETRIES):
            dest = directory / export_name(self.name, record)
            try:
                await self.store.fetch(record, str(dest))
                return record, dest
            except SnapshotCorrupt:
                # Pruned by the source's retention after newer ones were taken: follow the newest.
                # A newest that is itself corrupt fails the restore rather than quietly going older.
                newest = await self.store.newest_verified(record.shard)
                if newest is None or newest.seq <= record.seq:
                    raise
                log.info("%s was replaced by a newer snapshot while fetched; fetching %s",
                         record.object_name, newest.object_name)
                record = newest
        raise SourceError(f"the snapshots of shard {record.shard} of cluster {self.name} kept being "
                          "replaced while fetched: try again")
