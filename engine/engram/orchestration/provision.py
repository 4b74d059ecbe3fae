"""Provisioning: the one place that creates a cluster's journal streams, metadata and snapshot bucket.

It runs when a cluster is created (by `engram local up` or the operator's provisioning Job),
never from a node: a node that cannot find its stream may be talking to a journal server that
has not loaded it yet, and creating it then starts a second history (docs/durability.md).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from engram.cluster.metadata import ClusterMetadata
from engram.journal.client import Journal
from engram.journal.errors import IdentityMismatch, JournalError
from engram.snapshots.record import SnapshotError
from engram.snapshots.seed import SEED_NODE, seed_from_rdb
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

    def __post_init__(self) -> None:
        if not self.cluster_id:
            raise ValueError("a cluster id is required (see new_cluster_id)")
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
) -> None:
    """Create what the request names, or find it already there; idempotent for one cluster id."""
    deadline = asyncio.get_running_loop().time() + timeout
    journal = await _retry(lambda: Journal.connect(urls, request.cluster, 0, request.replicas,
                                                   name="engram-provision"), deadline)
    try:
        await _retry(lambda: ClusterMetadata.provision(
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
        if request.restore_from:
            await _seed(journal, request, progress)
    finally:
        await journal.close()


async def _seed(journal: Journal, request: ProvisionRequest, progress: Callable[[str], None]) -> None:
    """Seed the shards from the request's RDB files, once: a re-run finds them seeded already."""
    try:
        second = await journal.get(2)
        if second is not None and second.node == SEED_NODE:
            progress("restore: the journals were seeded by an earlier run")
            return
        await seed_from_rdb(journal, request.cluster_id, request.shards, list(request.restore_from),
                            progress=progress)
    except (SnapshotError, JournalError) as exc:
        raise ProvisionError(f"restore failed: {exc}", permanent=True) from exc


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
