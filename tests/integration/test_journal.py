"""The journal on a real 3-server JetStream cluster: conditional appends, retries, tail, truncate,
and a replica that refuses entries it must not apply."""

from __future__ import annotations

import asyncio
import zlib

import pytest

from engram.journal.client import Journal
from engram.journal.entries import Entry, EntryType
from engram.journal.errors import Fenced
from engram.replication.applier import Applier, ApplyHalted
from engram.valkey.connection import ValkeyConnection, encode
from engram.valkey.process import start_valkey

pytestmark = pytest.mark.integration


def _run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def _data(payload: bytes, epoch: int = 1) -> Entry:
    return Entry(EntryType.DATA, epoch, "n1", payload)


def _set(key: str, value: str) -> bytes:
    return encode(["SET", key, value])


def test_conditional_append_fences_a_writer_with_a_stale_view(nats_journal) -> None:
    async def scenario() -> None:
        journal = await Journal.connect(nats_journal.urls, "jt", 0, replicas=3)
        await journal.ensure_stream()
        assert await journal.append(Entry(EntryType.LEADER, 1, "a", address="x:1"), 0, "m1") == 1
        assert await journal.append(_data(b"one"), 1, "m2") == 2
        with pytest.raises(Fenced) as fenced:
            await journal.append(_data(b"stale"), 1, "m3")
        assert fenced.value.expected == 1 and fenced.value.actual == 2
        assert (await journal.state()).last_seq == 2
        await journal.close()

    _run(scenario())


def test_a_retried_append_whose_first_try_landed_returns_the_original_sequence(nats_journal) -> None:
    async def scenario() -> None:
        journal = await Journal.connect(nats_journal.urls, "jt", 1, replicas=3)
        await journal.ensure_stream()
        seq = await journal.append(_data(b"once"), 0, "same-id")
        # The ack was "lost": the writer retries with the same id and the same expectation.
        assert await journal.append(_data(b"once"), 0, "same-id") == seq
        assert (await journal.state()).messages == 1
        await journal.close()

    _run(scenario())


def test_pipelined_appends_keep_their_order(nats_journal) -> None:
    async def scenario() -> None:
        journal = await Journal.connect(nats_journal.urls, "jt", 2, replicas=3)
        await journal.ensure_stream()
        pending = [await journal.append_pipelined(_data(b"%d" % i), i, f"p{i}") for i in range(200)]
        assert [await p for p in pending] == list(range(1, 201))
        seen = []
        async for entry in journal.tail(150):
            seen.append(entry.payload)
            if entry.seq == 200:
                break
        assert seen == [b"%d" % i for i in range(149, 200)]
        await journal.close()

    _run(scenario())


def test_truncate_keeps_the_tail_and_conditional_appends_still_work(nats_journal) -> None:
    async def scenario() -> None:
        journal = await Journal.connect(nats_journal.urls, "jt", 3, replicas=3)
        await journal.ensure_stream()
        for i in range(10):
            await journal.append(_data(b"%d" % i), i, f"t{i}")
        await journal.truncate(8)
        state = await journal.state()
        assert (state.first_seq, state.last_seq, state.messages) == (8, 10, 3)
        assert await journal.get(3) is None
        assert (await journal.get(9)).payload == b"8"
        assert await journal.append(_data(b"after"), 10, "t10") == 11
        await journal.close()

    _run(scenario())


def test_journal_survives_the_loss_of_one_server(nats_journal) -> None:
    async def scenario() -> None:
        journal = await Journal.connect(nats_journal.urls, "jt", 4, replicas=3)
        await journal.ensure_stream()
        await journal.append(_data(b"before"), 0, "s1")
        nats_journal.kill("a")
        deadline = asyncio.get_running_loop().time() + 30
        while True:
            try:
                assert await journal.append(_data(b"after"), 1, "s2") == 2
                break
            except Exception:
                assert asyncio.get_running_loop().time() < deadline, "no quorum with 2 of 3 servers"
                await asyncio.sleep(0.2)
        await journal.close()

    _run(scenario())


async def _applier_against(nats_urls: list[str], shard: int, tmp: str) -> tuple[Journal, Applier, object]:
    journal = await Journal.connect(nats_urls, "ap", shard, replicas=3)
    await journal.ensure_stream()
    socket = f"{tmp}/v.sock"
    proc = await start_valkey(socket, tmp, [])
    applier = Applier(journal, socket, lambda entry: True)
    return journal, applier, proc


def test_replica_applies_data_and_halts_on_an_entry_from_a_newer_engine(nats_journal, short_tmp) -> None:
    async def scenario() -> None:
        journal, applier, proc = await _applier_against(nats_journal.urls, 0, str(short_tmp))
        try:
            await journal.append(_data(_set("a", "1")), 0, "e1")
            newer = _data(_set("b", "2"))
            newer.version = (99, 0, 0)
            await journal.append(newer, 1, "e2")
            with pytest.raises(ApplyHalted, match="newer than this node"):
                await applier.run()
            assert applier.applied_seq == 1
            assert "99.0.0" in applier.halted
            conn = await ValkeyConnection.open(f"{short_tmp}/v.sock")
            assert await conn.execute("GET", "a") == b"1"
            assert await conn.execute("GET", "b") is None
            conn.close()
        finally:
            proc.kill()
            await journal.close()

    _run(scenario())


def test_replica_halts_when_the_running_checksum_disagrees(nats_journal, short_tmp) -> None:
    async def scenario() -> None:
        journal, applier, proc = await _applier_against(nats_journal.urls, 1, str(short_tmp))
        try:
            payload = _set("k", "v")
            await journal.append(_data(payload), 0, "c1")
            good = zlib.crc32(payload)
            await journal.append(Entry(EntryType.CHECKSUM, 1, "n1", checksum=good), 1, "c2")
            await journal.append(_data(_set("k", "w")), 2, "c3")
            await journal.append(Entry(EntryType.CHECKSUM, 1, "n1", checksum=good), 3, "c4")
            with pytest.raises(ApplyHalted, match="checksum mismatch at entry 4"):
                await applier.run()
            assert applier.applied_seq == 3
        finally:
            proc.kill()
            await journal.close()

    _run(scenario())
