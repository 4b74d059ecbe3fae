"""Provisioning: the one place that creates a cluster's journal streams, metadata and snapshot bucket.

It runs when a cluster is created (by `engram local up` or the operator's provisioning Job),
never from a node: a node that cannot find its stream may be talking to a journal server that
has not loaded it yet, and creating it then starts a second history (docs/durability.md).
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from engram.cluster.metadata import ClusterMetadata
from engram.journal.client import Journal
from engram.journal.errors import IdentityMismatch, JournalError
from engram.journal.security import PLAIN, JournalSecurity
from engram.snapshots.cycle import DEFAULT_KEEP, snapshot_shard
from engram.snapshots.record import SnapshotError
from engram.snapshots.seed import SEED_NODE, seed_from_rdb, seeding_state
from engram.snapshots.source import SourceCluster
from engram.snapshots.store import SnapshotStore

log = logging.getLogger(__name__)
T = TypeVar("T")


class ProvisionError(RuntimeError):
    """Provisioning could not finish; the message says what is missing or who holds the name."""

    def __init__(self, message: str, permanent: bool = False) -> None:
        super().__init__(message)
        # True when retrying cannot help: the name is held by another cluster's id.
        self.permanent = permanent


@dataclass(frozen=True)
class ProvisionRequest:
    """What to create: a named cluster with its unique id, its shards and the stream replicas."""

    cluster: str
    cluster_id: str
    shards: int
    replicas: int = 3
    # RDB files whose keys seed the new cluster, each to the shard owning its slot (docs/snapshots.md).
    restore_from: tuple[str, ...] = ()
    # Or another cluster whose shards' newest verified snapshots seed it, and that cluster's journal
    # servers (empty: the new cluster's own).
    restore_cluster: str = ""
    restore_journal: tuple[str, ...] = ()
    # Keys per seeded journal entry (0: as many as fit); 1 builds a long journal for benchmarks.
    restore_entry_keys: int = 0

    @property
    def source(self) -> str:
        """What the restore seeds from, as status and the metadata record it."""
        return f"cluster {self.restore_cluster}" if self.restore_cluster else ", ".join(self.restore_from)

    def __post_init__(self) -> None:
        if not self.cluster_id:
            raise ValueError("a cluster id is required (see new_cluster_id)")
        if self.restore_from and self.restore_cluster:
            raise ValueError("restore either from RDB files or from another cluster's snapshots, not both")
        if self.restore_journal and not self.restore_cluster:
            raise ValueError("a restore journal names where the source cluster lives: give that cluster too")
        if self.shards < 1:
            raise ValueError(f"shards must be at least 1, got {self.shards}")
        if not 1 <= self.replicas <= 5:
            raise ValueError(f"journal replicas must be 1 to 5, got {self.replicas}")


def new_cluster_id() -> str:
    """A fresh, unique cluster id, chosen once when a cluster is created."""
    return uuid.uuid4().hex


async def provision(
    urls: list[str], request: ProvisionRequest, timeout: float = 60.0,
    progress: Callable[[str], None] = lambda _: None,
    security: JournalSecurity = PLAIN, restore_security: JournalSecurity | None = None,
) -> None:
    """Create what the request names, or find it already there; idempotent for one cluster id."""
    if request.restore_cluster and _same_cluster(request, urls):
        raise ProvisionError(
            f"cluster {request.cluster} cannot be restored from itself: name another cluster to restore "
            "from, or that cluster's journal servers if it lives elsewhere under the same name",
            permanent=True,
        )
    deadline = asyncio.get_running_loop().time() + timeout
    journal = await _retry(lambda: Journal.connect(urls, request.cluster, 0, request.replicas,
                                                   name="engram-provision", security=security), deadline)
    try:
        meta = await _retry(lambda: ClusterMetadata.provision(
            journal.jetstream, request.cluster, request.cluster_id, request.replicas, request.shards
        ), deadline)
        progress(f"cluster metadata of {request.cluster} recorded (id {request.cluster_id})")
        for shard in range(request.shards):
            await _retry(lambda s=shard: journal.for_shard(s).create_stream(request.cluster_id), deadline)
            progress(f"shard {shard}: stream {journal.for_shard(shard).stream} ready")
        snapshots = await _retry(lambda: SnapshotStore.create(
            journal.jetstream, request.cluster, request.cluster_id, request.replicas
        ), deadline)
        progress(f"snapshot bucket {snapshots.bucket} ready")
        if request.restore_from or request.restore_cluster:
            if await _retry(meta.restored, deadline) is None:
                source_security = restore_security if restore_security is not None else security
                await _seed(journal, urls, request, deadline, progress, source_security)
                await _retry(lambda: meta.mark_restored(request.source), deadline)
            else:
                progress("restore: the journals were seeded by an earlier run")
            await _first_snapshots(journal, snapshots, request, progress)
    finally:
        await journal.close()


async def _first_snapshots(journal: Journal, store: SnapshotStore, request: ProvisionRequest,
                           progress: Callable[[str], None]) -> None:
    """Snapshot every restored shard before any node starts, so nodes load the restored data instead
    of each replaying it entry by entry, and the seeded entries can go. Best effort: without it,
    nodes replay the seeded journal (slower, same result)."""
    for shard in range(request.shards):
        try:
            result = await snapshot_shard(journal.for_shard(shard), store, request.cluster_id,
                                          keep=DEFAULT_KEEP, progress=progress)
        except (SnapshotError, JournalError) as exc:
            progress(f"restore: no first snapshot of shard {shard} ({exc}); its nodes replay the journal")
            continue
        progress(f"restore: shard {shard} snapshot at entry {result.record.seq}, {result.record.keys} keys")


def _same_cluster(request: ProvisionRequest, urls: list[str]) -> bool:
    """The restore's source is the cluster being created: same name on the same journal servers."""
    source_urls = set(request.restore_journal) or set(urls)
    return request.restore_cluster == request.cluster and source_urls == set(urls)


async def _seed(journal: Journal, urls: list[str], request: ProvisionRequest, deadline: float,
                progress: Callable[[str], None], source_security: JournalSecurity = PLAIN) -> None:
    """Seed the shards from RDB files or another cluster's snapshots, once: a re-run finds them
    seeded already."""
    try:
        if await _seeded_before(journal, request.shards):
            progress("restore: the journals were seeded by an earlier run")
            return
        if request.restore_cluster:
            await _seed_from_cluster(journal, urls, request, deadline, progress, source_security)
        else:
            await seed_from_rdb(journal, request.cluster_id, request.shards, list(request.restore_from),
                                progress=progress, max_entry_keys=request.restore_entry_keys)
    except (SnapshotError, JournalError) as exc:
        raise ProvisionError(f"restore failed: {exc}", permanent=True) from exc


async def _seeded_before(journal: Journal, shards: int) -> bool:
    """Whether an earlier run seeded every shard; SnapshotError when that seeding was cut short
    (a shard without its seal, or shards seeded beside shards still new), which no re-run can finish."""
    seeded, fresh = 0, []
    for shard in range(shards):
        shard_journal = journal.for_shard(shard)
        state = await shard_journal.state()
        if state.last_seq <= 1:
            fresh.append(shard)
            continue
        last, second = await shard_journal.get(state.last_seq), await shard_journal.get(2)
        if seeding_state(last) == "interrupted":
            raise SnapshotError(_cut_short(shard))
        if second is not None and second.node == SEED_NODE:
            seeded += 1
    if seeded and fresh:
        raise SnapshotError(_cut_short(fresh[0]))
    # Anything else (a journal that moved on without a seeding) is refused by seed_from_rdb.
    return seeded == shards


def _cut_short(shard: int) -> str:
    return (f"an earlier restore of this cluster was cut short (shard {shard} holds part of it or none): "
            "delete the cluster and create it again to restore")


async def _seed_from_cluster(journal: Journal, urls: list[str], request: ProvisionRequest, deadline: float,
                             progress: Callable[[str], None], security: JournalSecurity = PLAIN) -> None:
    """Fetch the newest verified snapshot of every shard of the source cluster, then seed from them.

    Everything is fetched before the first seeded entry is written, so a source that does not
    answer in time leaves the new journals untouched and provisioning can be retried."""
    source_urls = list(request.restore_journal) or urls
    source = await _retry(
        lambda: SourceCluster.open(source_urls, request.restore_cluster, security), deadline
    )
    try:
        if source.cluster_id == request.cluster_id:
            raise ProvisionError(f"cluster {request.cluster} cannot be restored from itself "
                                 f"(cluster id {source.cluster_id})", permanent=True)
        records = await _retry(source.newest, deadline)
        progress(f"restore: from cluster {source.name} (id {source.cluster_id}), "
                 + ", ".join(f"shard {r.shard} at entry {r.seq}" for r in records))
        with tempfile.TemporaryDirectory(prefix="eg-restore-") as tmp:
            fetched = await _retry(lambda: source.fetch(records, tmp, progress), deadline)
            await seed_from_rdb(journal, request.cluster_id, request.shards,
                                [str(path) for _, path in fetched], progress=progress)
    finally:
        await source.close()


async def _retry(attempt: Callable[[], Awaitable[T]], deadline: float) -> T:
    """Retry while the journal has no quorum; an identity clash is final."""
    delay = 0.1
    while True:
        try:
            return await attempt()
        except IdentityMismatch as exc:
            raise ProvisionError(str(exc), permanent=True) from exc
        except JournalError as exc:
            if asyncio.get_running_loop().time() + delay > deadline:
                raise ProvisionError(f"the journal did not become available in time: {exc}") from exc
            log.info("provisioning waits for the journal: %s", exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
