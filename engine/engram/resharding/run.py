"""Change a running cluster's shard count: add shards, move slots in bounded chunks, drain and
remove shards. Resumable: the plan in motion and the progress live in the cluster metadata, so a
rerun after any crash continues where the last one stopped (docs/scaling.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import redis.exceptions

from engram.cluster.metadata import ClusterMetadata
from engram.cluster.topology import NodeRecord, SlotMap
from engram.journal.client import Journal
from engram.journal.errors import JournalError, JournalTimeout, NoQuorum, StreamMissing
from engram.journal.security import PLAIN, JournalSecurity
from engram.resharding import record as phases
from engram.resharding.mover import (
    Moved,
    MoveFailed,
    MoveOptions,
    NotReady,
    SourceMover,
    connect,
    wait_for_epoch,
)
from engram.resharding.plan import Move, apply_moves, chunks, moves_in_motion, plan_moves, start_moves
from engram.resharding.record import ReshardRecord
from engram.snapshots.restore import open_store
from engram.tasks import cancel_and_wait

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_SHARDS = 500
# A journal server killed or cut off at the start of a run costs a Raft election, not the run.
JOURNAL_PATIENCE = 60.0


class ReshardError(RuntimeError):
    """The reshard cannot go on; the message says why and what to do."""


@dataclass
class ReshardOptions:
    """Bounds of one reshard run."""

    move: MoveOptions = field(default_factory=MoveOptions)
    # Slots moved per chunk: each chunk costs two full passes over its source's keys (moving,
    # then checking none is left), and is the unit of progress, of resumption and of the
    # TRYAGAIN window after a failure.
    chunk_slots: int = 4096
    # How long to wait for new shards to elect primaries, and for removed shards' nodes to go.
    wait_primaries: float = 600.0
    wait_removed: float = 600.0
    # A failed chunk is retried this often (primaries failing over, journal elections) before
    # the run gives up; a rerun resumes it.
    attempts: int = 60


def _replicas(urls: list[str]) -> int:
    return min(3, len(urls))


@dataclass
class _Cluster:
    journal: Journal
    meta: ClusterMetadata
    cluster_id: str
    name: str


async def _open(urls: list[str], cluster: str, security: JournalSecurity,
                timeout: float = JOURNAL_PATIENCE) -> _Cluster:
    """The cluster's journal and metadata, waiting out a journal that is briefly unavailable."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await _open_once(urls, cluster, security)
        except (NoQuorum, JournalTimeout, OSError, TimeoutError) as exc:
            if time.monotonic() > deadline:
                raise ReshardError(f"the journal did not answer for {timeout:.0f}s: {exc}") from exc
            log.warning("journal unavailable (%s); retrying", exc)
            await asyncio.sleep(1.0)


async def _patiently(step: Callable[[], Awaitable[T]], what: str, timeout: float = JOURNAL_PATIENCE) -> T:
    """Run an idempotent step, retrying while the journal is in an election or unreachable."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await step()
        except (NoQuorum, JournalTimeout) as exc:
            if time.monotonic() > deadline:
                raise ReshardError(f"{what}: the journal did not answer for {timeout:.0f}s: {exc}") from exc
            log.warning("%s: journal unavailable (%s); retrying", what, exc)
            await asyncio.sleep(1.0)


async def _open_once(urls: list[str], cluster: str, security: JournalSecurity) -> _Cluster:
    journal = await Journal.connect(urls, cluster, 0, _replicas(urls), name="engram-reshard",
                                    security=security)
    try:
        cluster_id = await ClusterMetadata.identify(journal.jetstream, cluster)
        meta = await ClusterMetadata.open(journal.jetstream, cluster, cluster_id)
    except BaseException:
        await journal.close()
        raise
    return _Cluster(journal, meta, cluster_id, cluster)


async def _prepare(c: _Cluster, shards: int) -> SlotMap:
    count = (await c.meta.load_slot_map()).count
    for shard in range(shards):
        stream = c.journal.for_shard(shard)
        if shard >= count:
            try:
                await stream.open_stream(c.cluster_id)
            except StreamMissing:
                # A shard number the cluster had before and removed: its old snapshots must not
                # seed the new shard's nodes (they would load keys long moved away).
                await _forget_snapshots(c, shard)
        await stream.create_stream(c.cluster_id)

    def grow(current: SlotMap) -> SlotMap | None:
        if current.count >= shards:
            return None
        return SlotMap(current.ranges, current.epoch, shards, current.moving)

    return await c.meta.update_slot_map(grow)


async def prepare_shards(urls: list[str], cluster: str, shards: int,
                         security: JournalSecurity = PLAIN) -> None:
    """Create the streams of shards 0..shards-1 that are missing and raise the slot map's shard
    count to `shards` (new shards own nothing yet); idempotent. Start new shards' nodes after it."""
    _check_count(shards)
    c = await _open(urls, cluster, security)
    try:
        await _patiently(lambda: _prepare(c, shards), "adding shards")
    finally:
        await c.journal.close()


async def current_record(urls: list[str], cluster: str,
                         security: JournalSecurity = PLAIN) -> ReshardRecord | None:
    """The cluster's newest reshard record as the metadata holds it (nodes may report an older one)."""
    c = await _open(urls, cluster, security)
    try:
        return _readable(await _patiently(c.meta.load_reshard, "reading the reshard record"))
    finally:
        await c.journal.close()


def _readable(raw: bytes | None) -> ReshardRecord | None:
    """The stored reshard record; None when there is none, or it cannot be read (logged)."""
    if not raw:
        return None
    try:
        return ReshardRecord.loads(raw)
    except (ValueError, TypeError) as exc:
        log.warning("ignoring an unreadable reshard record: %s", exc)
        return None


async def _forget_snapshots(c: _Cluster, shard: int) -> None:
    """Delete every snapshot of a shard that is being removed (or was, and comes back)."""
    store = await open_store(c.journal, c.name, c.cluster_id)
    if store is None:
        return
    for record in await store.records(shard):
        await store.delete(record)


def _check_count(shards: int) -> None:
    if not 1 <= shards <= MAX_SHARDS:
        raise ReshardError(f"the shard count must be between 1 and {MAX_SHARDS}, not {shards}")


async def reshard(
    urls: list[str], cluster: str, shards: int, *, security: JournalSecurity = PLAIN,
    progress: Callable[[ReshardRecord], None] = lambda _: None,
    on_drained: Callable[[list[int]], Awaitable[None]] | None = None,
    options: ReshardOptions | None = None,
) -> ReshardRecord:
    """Move slots until shards 0..shards-1 hold them evenly, then remove the shards above."""
    _check_count(shards)
    c = await _open(urls, cluster, security)
    watch = asyncio.ensure_future(c.meta.watch())
    run = _Run(c, shards, progress, on_drained, options or ReshardOptions())
    try:
        return await run.run()
    except Exception as exc:
        await run.fail(str(exc))
        raise
    finally:
        await cancel_and_wait(watch)
        await c.journal.close()


class _Run:
    def __init__(self, c: _Cluster, shards: int,
                 progress: Callable[[ReshardRecord], None],
                 on_drained: Callable[[list[int]], Awaitable[None]] | None, options: ReshardOptions) -> None:
        self.cluster, self.journal, self.meta, self.shards = c, c.journal, c.meta, shards
        self.progress, self.on_drained, self.options = progress, on_drained, options
        self.record: ReshardRecord | None = None

    async def run(self) -> ReshardRecord:
        slots = await _patiently(self.meta.load_slot_map, "reading the slot map")
        self.record = await _patiently(lambda: self._resume_or_start(slots), "reading the reshard record")
        if self.shards > slots.count:
            await self._phase(phases.ADDING)
            slots = await _patiently(lambda: _prepare(self.cluster, self.shards), "adding shards")
        await self._phase(phases.WAITING)
        await self._wait_primaries(range(max(self.shards, slots.count)))
        await self._phase(phases.MOVING)
        await self._move_all()
        slots = await _patiently(self.meta.load_slot_map, "reading the slot map")
        # Every step below is idempotent: a rerun after a crash in any of them finishes the rest.
        removed = list(range(self.shards, max(slots.count, self.record.from_shards)))
        if removed:
            await _patiently(self._shrink, "lowering the shard count")
            await self._phase(phases.DRAINED)
            if self.on_drained is not None:
                await self.on_drained(removed)  # the platform stopped them: their records are stale
            else:
                await self._wait_gone(removed)
            await self._phase(phases.REMOVING)
            for shard in removed:
                await _patiently(lambda s=shard: self._remove(s), f"removing shard {shard}")
        await self._phase(phases.DONE)
        return self.record

    async def _resume_or_start(self, slots: SlotMap) -> ReshardRecord:
        found = _readable(await self.meta.load_reshard())
        if found is not None:
            if not found.finished and found.to_shards != self.shards:
                raise ReshardError(
                    f"a reshard to {found.to_shards} shards is in progress ({found.phase}); finish it "
                    f"first (engram reshard --shards {found.to_shards}), then change the count again")
            if not found.finished or (found.phase == phases.FAILED and found.to_shards == self.shards):
                found.error = ""
                return found
        # Shards that own slots: a scale-out's new shards may already exist, empty (prepare_shards).
        owning = len({shard for _, _, shard in slots.ranges})
        record = ReshardRecord(from_shards=owning, to_shards=self.shards)
        record.slots_total = sum(m.slots for m in plan_moves(slots, self.shards))
        return record

    async def fail(self, error: str) -> None:
        if self.record is None:
            return
        self.record.phase, self.record.error = phases.FAILED, error
        with contextlib.suppress(JournalError):
            await self._store()

    async def _phase(self, phase: str) -> None:
        assert self.record is not None
        if self.record.phase != phase:
            self.record.phase = phase
            log.info("reshard %s: %s", self.record.id, self.record.summary())
        await _patiently(lambda: self._store(), "recording the reshard's progress")

    async def _store(self) -> None:
        assert self.record is not None
        self.record.updated = time.time()
        await self.meta.store_reshard(self.record.dumps())
        self.progress(self.record)

    async def _wait_primaries(self, shards: range) -> None:
        deadline = time.monotonic() + self.options.wait_primaries
        while True:
            missing = [s for s in shards if not self._primary(s)]
            if not missing:
                return
            if time.monotonic() > deadline:
                raise ReshardError(
                    f"shard(s) {', '.join(map(str, missing))} have no primary after "
                    f"{self.options.wait_primaries:.0f}s: are their nodes running?")
            await asyncio.sleep(0.2)

    def _primary(self, shard: int) -> str:
        """The shard's primary's address, if its node is alive and says it is primary."""
        node = self._primary_node(shard)
        return self.meta.view.leaders[shard].address if node is not None else ""

    def _migrate_address(self, shard: int) -> str:
        """Where a source's MIGRATE reaches the shard's primary: its Valkey's own port when the node
        terminates client TLS in front of it, else its address; "" when it has no live primary."""
        node = self._primary_node(shard)
        return (node.migrate or self.meta.view.leaders[shard].address) if node is not None else ""

    def _primary_node(self, shard: int) -> NodeRecord | None:
        """The record of the shard's leader, if its node is alive and says it is primary."""
        view = self.meta.view
        leader = view.leaders.get(shard)
        if leader is None:
            return None
        live = {n.node: n for n in view.live_nodes(shard)}
        node = live.get(leader.node)
        return node if node is not None and node.role == "primary" else None

    async def _move_all(self) -> None:
        storer = asyncio.ensure_future(self._store_while_moving())
        try:
            await self._move_chunks()
        finally:
            await cancel_and_wait(storer)

    async def _move_chunks(self) -> None:
        """Chunk after chunk until nothing is planned; a journal election only delays a step (each
        step reads the slot map again, and its compare-and-set is a no-op if it landed before)."""
        failures = 0
        while True:
            try:
                if not await self._next_chunk():
                    return
                failures = 0
            except (NoQuorum, JournalTimeout) as exc:
                failures += 1
                if failures > self.options.attempts:
                    raise ReshardError(f"the cluster metadata kept failing: {exc}. Run the same command "
                                       "again to resume.") from exc
                log.warning("cluster metadata unavailable (%s); retrying", exc)
                await asyncio.sleep(min(5.0, 0.25 * failures))

    async def _next_chunk(self) -> bool:
        """Move one chunk (the one in motion, or the next planned); False when none is left."""
        assert self.record is not None
        slots = await self.meta.load_slot_map()
        in_motion = moves_in_motion(slots)
        if not in_motion:
            planned = plan_moves(slots, self.shards)
            if not planned:
                return False
            in_motion = chunks(planned, self.options.chunk_slots)[0]
            # A shard that owns no slot is missing from CLUSTER SLOTS, and some clients (redis-py)
            # cannot follow an ASK to a node they have not seen: give it one slot first, so it
            # is listed before the large chunks come.
            unseen = next((m for m in planned if slots.slot_count(m.target) == 0), None)
            if unseen is not None:
                in_motion = [Move(unseen.first, unseen.first, unseen.source, unseen.target)]
            slots = await self.meta.update_slot_map(
                lambda current, m=in_motion: None if current.moving else start_moves(current, m))
            in_motion = moves_in_motion(slots)
        await self._move_chunk(slots, in_motion)
        after = await self.meta.update_slot_map(
            lambda current, m=in_motion: apply_moves(current, m) if current.moving else None)
        # Counted from the map, so a step retried after its hand-over landed is not counted twice.
        left = sum(m.slots for m in plan_moves(after, self.shards))
        self.record.slots_total = max(self.record.slots_total, self.record.slots_moved + left)
        self.record.slots_moved = self.record.slots_total - left
        await self._store()
        return True

    async def _move_chunk(self, slots: SlotMap, moves: list[Move]) -> None:
        """Drain each source of the chunk, retrying through failovers and elections."""
        for source in sorted({m.source for m in moves}):
            for attempt in range(1, self.options.attempts + 1):
                try:
                    await self._drain(slots, source, sorted({m.target for m in moves if m.source == source}))
                    break
                except (MoveFailed, NotReady, redis.exceptions.RedisError, OSError) as exc:
                    if attempt == self.options.attempts:
                        raise ReshardError(f"moving slots off shard {source} failed {attempt} times; last: "
                                           f"{exc}. Run the same command again to resume.") from exc
                    log.warning("moving slots off shard %d: %s; retrying (%d)", source, exc, attempt)
                    await asyncio.sleep(min(5.0, 0.25 * attempt))

    async def _drain(self, slots: SlotMap, source: int, targets: list[int]) -> None:
        addresses = {t: self._primary(t) for t in targets}
        source_address = self._primary(source)
        if not source_address or not all(addresses.values()):
            raise NotReady(f"waiting for the primaries of shards {[source, *targets]}")
        # The module on the source checks MIGRATE's destination against the same records.
        migrate_to = {t: self._migrate_address(t) for t in targets}
        conns = {t: connect(a, self.options.move) for t, a in addresses.items()}
        source_conn = connect(source_address, self.options.move)
        try:
            for target, conn in conns.items():
                await wait_for_epoch(conn, slots.epoch, f"shard {target}'s primary")
            mover = SourceMover(source_conn, slots, source, migrate_to, self.options.move, self._moved)
            await mover.drain()
        finally:
            for conn in (source_conn, *conns.values()):
                await conn.aclose()

    def _moved(self, moved: Moved) -> None:
        assert self.record is not None
        self.record.keys_moved += moved.keys
        self.record.bytes_moved += moved.bytes
        self.progress(self.record)

    async def _store_while_moving(self) -> None:
        """Keep the recorded progress (what ENGRAM.STATUS shows) at most a second old."""
        while True:
            await asyncio.sleep(1.0)
            with contextlib.suppress(JournalError):
                await self._store()

    async def _remove(self, shard: int) -> None:
        await _forget_snapshots(self.cluster, shard)
        await self.journal.for_shard(shard).delete_stream()
        await self.meta.forget_shard(shard)

    async def _shrink(self) -> None:
        def lower(current: SlotMap) -> SlotMap | None:
            if current.count <= self.shards:
                return None
            if current.moving or any(shard >= self.shards for _, _, shard in current.ranges):
                raise ReshardError("shards to remove still own slots; run the same command again")
            return SlotMap(current.ranges, current.epoch, self.shards)

        await self.meta.update_slot_map(lower)

    async def _wait_gone(self, removed: list[int]) -> None:
        deadline = time.monotonic() + self.options.wait_removed
        while True:
            alive = [s for s in removed if self.meta.view.live_nodes(s)]
            if not alive:
                return
            if time.monotonic() > deadline:
                raise ReshardError(f"the nodes of removed shard(s) {alive} still run; stop them, then run "
                                   "the same command again")
            await asyncio.sleep(0.5)

