"""Seeding a new cluster from RDB files: every key is committed to the journal of the shard that
owns its slot, so a restore works into any shard count and replicas apply it like any write."""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from engram.cluster.slots import key_hash_slot
from engram.cluster.topology import SlotMap
from engram.journal.client import Appended, Journal
from engram.journal.entries import Entry, EntryType
from engram.snapshots.record import SnapshotError
from engram.snapshots.scratch import ScratchValkey
from engram.valkey.connection import ValkeyConnection, encode

log = logging.getLogger(__name__)

# The node name seeded entries carry; their epoch is 0, before any leader's.
SEED_NODE = "restore"
SCAN_COUNT = 1000
MAX_ENTRY_BYTES = 512 * 1024
# Seeded appends in flight per shard: a restore is bounded by the journal's throughput, not its latency.
WINDOW = 256
# A long restore says how far it got this often (keys).
PROGRESS_EVERY = 250_000


def restore_command(key: bytes, payload: bytes, expire_at_ms: int) -> bytes:
    """RESTORE as the replication stream would carry it; expire_at_ms <= 0: no expiry."""
    if expire_at_ms > 0:
        return encode([b"RESTORE", key, str(expire_at_ms).encode(), payload, b"REPLACE", b"ABSTTL"])
    return encode([b"RESTORE", key, b"0", payload, b"REPLACE"])


@dataclass
class _ShardWriter:
    """One shard's seeded entries: appends after the genesis entry, one chain of term places at
    epoch 0 (replicas apply them as a term before the first leader's), kept WINDOW in flight, and
    sealed by a CHECKSUM entry that replicas verify and that marks the seeding complete."""

    journal: Journal
    cluster_id: str
    max_bytes: int
    max_keys: int = 0
    expected: int = 1
    place: int = 0
    keys: int = 0
    db: int = 0
    checksum: int = 0
    buffer: list[bytes] = field(default_factory=list)
    size: int = 0
    inflight: deque[asyncio.Task[Appended]] = field(default_factory=deque)

    async def add(self, db: int, command: bytes) -> None:
        if db != self.db:
            await self.flush()
            self.db = db
        self.buffer.append(command)
        self.size += len(command)
        self.keys += 1
        if self.size >= self.max_bytes or (self.max_keys and len(self.buffer) >= self.max_keys):
            await self.flush()

    async def flush(self) -> None:
        if not self.buffer:
            return
        payload = b"".join(self.buffer)
        self.buffer, self.size = [], 0
        await self._send(Entry(EntryType.DATA, 0, SEED_NODE, payload, db=self.db, term_seq=self.place + 1))
        self.checksum = zlib.crc32(payload, self.checksum)

    async def seal(self) -> int:
        """Flush, wait for every append, then append the CHECKSUM entry; returns the last seq."""
        await self.flush()
        await self._send(Entry(EntryType.CHECKSUM, 0, SEED_NODE, checksum=self.checksum,
                               term_seq=self.place + 1))
        while self.inflight:
            await self._settle()
        return self.expected

    def abandon(self) -> None:
        for task in self.inflight:
            task.cancel()
        self.inflight.clear()

    async def _send(self, entry: Entry) -> None:
        self.place += 1
        msg_id = f"{SEED_NODE}.{self.cluster_id}.{self.journal.shard}.{self.place}"
        # Nothing else writes a new cluster's journal, so each append lands right after the last.
        self.inflight.append(await self.journal.append_pipelined(entry, self.expected, msg_id))
        self.expected += 1
        while len(self.inflight) >= WINDOW:
            await self._settle()

    async def _settle(self) -> None:
        await self.inflight.popleft()


def seeding_state(last: Entry | None) -> str:
    """"none", "interrupted" or "complete", from the last entry of a shard's journal: seeding ends with
    its CHECKSUM entry, and nodes only ever start (and append) once it has."""
    if last is None or last.type is EntryType.GENESIS:
        return "none"
    if last.node == SEED_NODE and last.type is not EntryType.CHECKSUM:
        return "interrupted"
    return "complete"


async def _databases(conn: ValkeyConnection) -> list[int]:
    info = await conn.execute("INFO", "keyspace")
    text = info.decode() if isinstance(info, bytes) else str(info)
    return [int(line.split(":", 1)[0][2:]) for line in text.splitlines() if line.startswith("db")]


async def _copy_keys(conn: ValkeyConnection, slots: SlotMap, writers: list[_ShardWriter],
                     say: Callable[[str], None]) -> None:
    """Every key of every database, with its value and absolute expiry, to its shard's writer."""
    reported = sum(w.keys for w in writers) // PROGRESS_EVERY
    for db in await _databases(conn):
        await conn.execute("SELECT", db)
        cursor = b"0"
        while True:
            reply = await conn.execute("SCAN", cursor, "COUNT", SCAN_COUNT)
            assert isinstance(reply, list)
            cursor, keys = reply[0], reply[1]
            for key in keys:
                conn.write(encode([b"DUMP", key]) + encode([b"PEXPIRETIME", key]))
            for key in keys:
                payload, expire_at = await conn.read_reply(), await conn.read_reply()
                if not isinstance(payload, bytes):
                    continue  # expired or deleted since the scan saw it
                shard = slots.owner(key_hash_slot(key))
                assert shard is not None, "an even slot map owns every slot"
                await writers[shard].add(db, restore_command(key, payload, int(expire_at)))  # type: ignore[arg-type]
            seeded = sum(w.keys for w in writers)
            if seeded // PROGRESS_EVERY > reported:
                reported = seeded // PROGRESS_EVERY
                say(f"restore: {seeded:,} keys seeded so far")
            if cursor == b"0":
                break


async def seed_from_rdb(journal: Journal, cluster_id: str, shards: int, files: list[str], *,
                        workdir: str | None = None, progress: Callable[[str], None] | None = None,
                        max_entry_bytes: int = MAX_ENTRY_BYTES, max_entry_keys: int = 0) -> list[int]:
    """Write the keys of the RDB files into the journals of a new cluster's shards; returns the
    keys seeded per shard. Refuses a cluster whose journals already hold more than their genesis.
    max_entry_keys > 0 caps the keys per journal entry (1: an entry per key, a long journal)."""
    say = progress or (lambda _: None)
    writers = []
    for shard in range(shards):
        shard_journal = journal.for_shard(shard)
        state = await shard_journal.state()
        if state.last_seq != 1:
            raise SnapshotError(
                f"shard {shard}'s journal holds {state.last_seq} entries: a restore only seeds a new "
                "cluster, whose journals hold their genesis entry alone"
            )
        writers.append(_ShardWriter(shard_journal, cluster_id, max_entry_bytes, max_entry_keys))
    slots = SlotMap.even(shards)
    try:
        for path in files:
            await _seed_file(path, slots, writers, workdir, say)
        for writer in writers:
            await writer.seal()
    except BaseException:
        for writer in writers:
            writer.abandon()
        raise
    counts = [w.keys for w in writers]
    say(f"restore: {sum(counts)} keys seeded ({', '.join(f'shard {i}: {n}' for i, n in enumerate(counts))})")
    return counts


async def _seed_file(path: str, slots: SlotMap, writers: list[_ShardWriter], workdir: str | None,
                     say: Callable[[str], None]) -> None:
    with tempfile.TemporaryDirectory(prefix="eg-seed-", dir=workdir) as tmp:
        scratch = ScratchValkey(tmp)
        try:
            shutil.copyfile(path, scratch.rdb_path)
        except OSError as exc:
            raise SnapshotError(f"cannot read the RDB file {path}: {exc.strerror or exc}") from exc
        say(f"restore: loading {path}")
        try:
            await scratch.start()
        except Exception as exc:
            raise SnapshotError(f"{path} does not load as an RDB file: {exc}") from exc
        try:
            await _copy_keys(scratch.conn, slots, writers, say)
        finally:
            await scratch.stop()
