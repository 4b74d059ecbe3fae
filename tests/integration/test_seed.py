"""Seeding a new cluster's journals from an RDB file: pipelined appends, sealed by a CHECKSUM entry
that a replica replaying them verifies, and an interrupted seeding told apart from a finished one."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from engram.journal.client import Journal
from engram.journal.entries import Entry, EntryType
from engram.snapshots.producer import replay
from engram.snapshots.scratch import ScratchValkey
from engram.snapshots.seed import SEED_NODE, seed_from_rdb, seeding_state

pytestmark = pytest.mark.integration

CLUSTER_ID = "seed-test-id"


async def _rdb(directory: Path, keys: int) -> Path:
    scratch = ScratchValkey(str(directory))
    await scratch.start()
    try:
        await scratch.conn.execute("DEBUG", "POPULATE", keys, "key", 20)
        await scratch.conn.execute("SET", "with-ttl", "v", "PX", 3_600_000)
        return await scratch.save()
    finally:
        await scratch.stop()


def test_an_entry_per_key_seeds_every_key_and_replay_checks_the_seal(nats_journal, short_tmp: Path) -> None:
    async def main() -> None:
        (short_tmp / "rdb").mkdir()
        rdb = await _rdb(short_tmp / "rdb", 300)
        journal = await Journal.connect(nats_journal.urls, "seeded", 0)
        try:
            for shard in (0, 1):
                await journal.for_shard(shard).create_stream(CLUSTER_ID)
            counts = await seed_from_rdb(journal, CLUSTER_ID, 2, [str(rdb)], max_entry_keys=1)
            assert sum(counts) == 301 and all(counts)
            for shard in (0, 1):
                stream = journal.for_shard(shard)
                state = await stream.state()
                # The genesis entry, one entry per key, and the seal.
                assert state.last_seq == counts[shard] + 2
                seal = await stream.get(state.last_seq)
                assert seal is not None and seal.type is EntryType.CHECKSUM and seal.node == SEED_NODE
                assert seeding_state(seal) == "complete"
                (short_tmp / f"replay{shard}").mkdir()
                scratch = ScratchValkey(str(short_tmp / f"replay{shard}"))
                await scratch.start()
                try:
                    position = await replay(stream, scratch, CLUSTER_ID, None, state.last_seq, 60)
                    assert position.seq == state.last_seq and position.checksum == seal.checksum
                    assert await scratch.conn.execute("DBSIZE") == counts[shard]
                finally:
                    await scratch.stop()
            assert 0 < await _ttl_anywhere(journal) <= 3_600_000
        finally:
            await journal.close()

    asyncio.run(asyncio.wait_for(main(), 120))


async def _ttl_anywhere(journal: Journal) -> int:
    """The seeded key with a TTL kept its absolute expiry (RESTORE ... ABSTTL) in whichever shard."""
    for shard in (0, 1):
        stream = journal.for_shard(shard)
        for seq in range(2, (await stream.state()).last_seq):
            entry = await stream.get(seq)
            if entry is not None and b"with-ttl" in entry.payload:
                return 3_600_000 if b"ABSTTL" in entry.payload else -1
    return -1


def test_a_seeding_cut_short_is_told_apart_from_a_finished_one() -> None:
    data = Entry(EntryType.DATA, 0, SEED_NODE, b"*1\r\n$4\r\nPING\r\n", term_seq=3)
    seal = Entry(EntryType.CHECKSUM, 0, SEED_NODE, checksum=7, term_seq=4)
    lease = Entry(EntryType.LEASE, 1, "node-a", term_seq=1)
    genesis = Entry(EntryType.GENESIS, 0, "provision")
    assert [seeding_state(e) for e in (None, genesis, data, seal, lease)] == [
        "none", "none", "interrupted", "complete", "complete"]
