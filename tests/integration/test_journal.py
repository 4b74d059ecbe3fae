"""The journal on a real 3-server JetStream cluster: provisioning and identity, conditional appends,
retries, tail, truncate, and a replica that refuses entries it must not apply."""

from __future__ import annotations

import asyncio
import zlib

import pytest

from engram import binaries
from engram.journal.client import Journal
from engram.journal.entries import Entry, EntryType
from engram.journal.errors import Fenced, IdentityMismatch, StreamMissing
from engram.replication.applier import Applier, ApplyHalted
from engram.valkey.connection import ValkeyConnection, encode
from engram.valkey.process import start_valkey

pytestmark = pytest.mark.integration

CLUSTER_ID = "c0ffee"


def _run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def _data(payload: bytes, epoch: int = 1, term_seq: int = 0) -> Entry:
    return Entry(EntryType.DATA, epoch, "n1", payload, term_seq=term_seq)


def _set(key: str, value: str) -> bytes:
    return encode(["SET", key, value])


async def _provisioned(urls: list[str], cluster: str, shard: int, cluster_id: str = CLUSTER_ID) -> Journal:
    """A journal whose stream provisioning created: entry 1 is its genesis."""
    journal = await Journal.connect(urls, cluster, shard, replicas=3)
    await journal.create_stream(cluster_id)
    return journal


def test_conditional_append_fences_a_writer_with_a_stale_view(nats_journal) -> None:
    async def scenario() -> None:
        journal = await _provisioned(nats_journal.urls, "jt", 0)
        assert (await journal.append(Entry(EntryType.LEADER, 1, "a", address="x:1"), 1, "m1")).seq == 2
        assert (await journal.append(_data(b"one"), 2, "m2")).seq == 3
        with pytest.raises(Fenced) as fenced:
            await journal.append(_data(b"stale"), 2, "m3")
        assert fenced.value.expected == 2 and fenced.value.actual == 3
        assert (await journal.state()).last_seq == 3
        await journal.close()

    _run(scenario())


def test_a_retried_append_whose_first_try_landed_returns_the_original_sequence(nats_journal) -> None:
    async def scenario() -> None:
        journal = await _provisioned(nats_journal.urls, "jt", 1)
        first = await journal.append(_data(b"once"), 1, "same-id")
        assert not first.earlier
        # The ack was "lost": the writer retries with the same id and the same expectation.
        again = await journal.append(_data(b"once"), 1, "same-id")
        assert (again.seq, again.earlier) == (first.seq, True)
        assert (await journal.state()).messages == 2
        # Another id at the same place is refused: only the append's own id passes as landed.
        with pytest.raises(Fenced):
            await journal.append(_data(b"once"), 1, "other-id")
        await journal.close()

    _run(scenario())


def test_pipelined_appends_keep_their_order(nats_journal) -> None:
    async def scenario() -> None:
        journal = await _provisioned(nats_journal.urls, "jt", 2)
        pending = [await journal.append_pipelined(_data(b"%d" % i), i + 1, f"p{i}") for i in range(200)]
        assert [(await p).seq for p in pending] == list(range(2, 202))
        seen = []
        async for entry in journal.tail(151):
            seen.append(entry.payload)
            if entry.seq == 201:
                break
        assert seen == [b"%d" % i for i in range(149, 200)]
        await journal.close()

    _run(scenario())


class _SilentConsumer:
    """The journal's JetStream context, but its subscriptions listen where nothing is published: a
    consumer whose server was cut off delivers nothing either."""

    def __init__(self, js: object, nc: object) -> None:
        self._js, self._nc = js, nc

    def __getattr__(self, name: str) -> object:
        return getattr(self._js, name)

    async def subscribe(self, _subject: str, cb: object = None, **_options: object) -> object:
        return await self._nc.subscribe("engram.test.nothing", cb=cb)


def test_a_tail_whose_consumer_delivers_nothing_reads_entries_from_the_streams_leader(nats_journal) -> None:
    async def scenario() -> None:
        journal = await _provisioned(nats_journal.urls, "jt", 5)
        for i in range(5):
            await journal.append(_data(b"%d" % i), i + 1, f"f{i}")
        journal._js = _SilentConsumer(journal._js, journal._nc)
        tail = journal.tail(2, fill_after=0.2)
        got = [await anext(tail) for _ in range(5)]
        assert [(e.seq, e.payload, e.pending) for e in got] == [(i + 2, b"%d" % i, 4 - i) for i in range(5)]
        # Entries appended later come the same way, on the next quiet spell.
        await journal.append(_data(b"late"), 6, "f-late")
        late = await anext(tail)
        assert (late.seq, late.payload) == (7, b"late")
        await tail.aclose()
        await journal.close()

    _run(scenario())


def test_a_tail_that_reads_from_both_its_consumer_and_the_leader_yields_each_entry_once_in_order(
        nats_journal) -> None:
    async def scenario() -> None:
        journal = await _provisioned(nats_journal.urls, "jt", 6)
        writer = await Journal.connect(nats_journal.urls, "jt", 6, replicas=3)

        async def append() -> None:
            for i in range(300):
                await writer.append(_data(b"%d" % i), i + 1, f"b{i}")
                if i % 20 == 0:
                    await asyncio.sleep(0.1)  # quiet spells, in which the tail reads for itself

        appending = asyncio.ensure_future(append())
        seqs = []
        # Reading for itself after 20 ms of quiet: both sources race all along.
        async for entry in journal.tail(1, fill_after=0.02):
            seqs.append(entry.seq)
            if entry.seq == 301:
                break
        await appending
        assert seqs == list(range(1, 302))
        await writer.close()
        await journal.close()

    _run(scenario())


def test_truncate_keeps_the_tail_and_conditional_appends_still_work(nats_journal) -> None:
    async def scenario() -> None:
        journal = await _provisioned(nats_journal.urls, "jt", 3)
        for i in range(10):
            await journal.append(_data(b"%d" % i), i + 1, f"t{i}")
        await journal.truncate(9)
        state = await journal.state()
        assert (state.first_seq, state.last_seq, state.messages) == (9, 11, 3)
        assert await journal.get(3) is None
        assert (await journal.get(10)).payload == b"8"
        assert (await journal.append(_data(b"after"), 11, "t10")).seq == 12
        await journal.close()

    _run(scenario())


def test_journal_survives_the_loss_of_one_server(nats_journal) -> None:
    async def scenario() -> None:
        journal = await _provisioned(nats_journal.urls, "jt", 4)
        await journal.append(_data(b"before"), 1, "s1")
        nats_journal.kill("a")
        deadline = asyncio.get_running_loop().time() + 30
        while True:
            try:
                assert (await journal.append(_data(b"after"), 2, "s2")).seq == 3
                break
            except Exception:
                assert asyncio.get_running_loop().time() < deadline, "no quorum with 2 of 3 servers"
                await asyncio.sleep(0.2)
        await journal.close()

    _run(scenario())


async def _applier_against(
    nats_urls: list[str], shard: int, tmp: str, cluster_id: str = CLUSTER_ID
) -> tuple[Journal, Applier, object]:
    """A replica's applier over a provisioned stream whose entry 2 makes n1 leader of epoch 1."""
    journal = await _provisioned(nats_urls, "ap", shard)
    await journal.append(Entry(EntryType.LEADER, 1, "n1", address="x:1"), 1, f"lead-{shard}")
    socket = f"{tmp}/v.sock"
    proc = await start_valkey(socket, tmp, [], module=binaries.valkey_module())
    node = await _node_connection(socket)
    await node.execute("ENGRAM.ROLE", "replica")  # as the node sets it before its applier runs
    node.close()
    applier = Applier(journal, socket, lambda entry: True, cluster_id)
    return journal, applier, proc


async def _node_connection(socket: str) -> ValkeyConnection:
    """A connection with the node's own rights: the module neither checks nor holds it."""
    conn = await ValkeyConnection.open(socket)
    await conn.execute("ENGRAM.INTERNAL")
    return conn


def test_replica_applies_data_and_halts_on_an_entry_from_a_newer_engine(nats_journal, short_tmp) -> None:
    async def scenario() -> None:
        journal, applier, proc = await _applier_against(nats_journal.urls, 0, str(short_tmp))
        try:
            await journal.append(_data(_set("a", "1"), term_seq=1), 2, "e1")
            newer = _data(_set("b", "2"), term_seq=2)
            newer.version = (99, 0, 0)
            await journal.append(newer, 3, "e2")
            with pytest.raises(ApplyHalted, match="newer than this node"):
                await applier.run()
            assert applier.applied_seq == 3
            assert "99.0.0" in applier.halted
            conn = await _node_connection(f"{short_tmp}/v.sock")
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
            await journal.append(_data(payload, term_seq=1), 2, "c1")
            good = zlib.crc32(payload)
            await journal.append(Entry(EntryType.CHECKSUM, 1, "n1", checksum=good, term_seq=2), 3, "c2")
            await journal.append(_data(_set("k", "w"), term_seq=3), 4, "c3")
            await journal.append(Entry(EntryType.CHECKSUM, 1, "n1", checksum=good, term_seq=4), 5, "c4")
            with pytest.raises(ApplyHalted, match="checksum mismatch at entry 6"):
                await applier.run()
            assert applier.applied_seq == 5
        finally:
            proc.kill()
            await journal.close()

    _run(scenario())


def test_a_node_never_creates_a_stream_it_cannot_find(nats_journal) -> None:
    async def scenario() -> None:
        journal = await Journal.connect(nats_journal.urls, "unprovisioned", 0, replicas=3)
        with pytest.raises(StreamMissing, match="created by provisioning"):
            await journal.open_stream(CLUSTER_ID)
        with pytest.raises(StreamMissing):
            await journal.open_stream(CLUSTER_ID)
        assert await journal.jetstream.streams_info() == []
        await journal.close()

    _run(scenario())


def test_provisioning_is_idempotent_and_a_stream_of_another_cluster_is_refused(nats_journal) -> None:
    async def scenario() -> None:
        journal = await _provisioned(nats_journal.urls, "idem", 0)
        await journal.create_stream(CLUSTER_ID)  # a re-run of provisioning: nothing new
        assert (await journal.state()).messages == 1
        genesis = await journal.get(1)
        assert (genesis.type, genesis.cluster_id, genesis.shard) == (EntryType.GENESIS, CLUSTER_ID, 0)
        with pytest.raises(IdentityMismatch, match="belongs to cluster id 'c0ffee'"):
            await journal.create_stream("another-cluster")
        with pytest.raises(IdentityMismatch, match="not to cluster id 'another-cluster'"):
            await journal.open_stream("another-cluster")
        await journal.open_stream(CLUSTER_ID)
        await journal.close()

    _run(scenario())


def test_replica_halts_on_a_stream_provisioned_for_another_cluster(nats_journal, short_tmp) -> None:
    async def scenario() -> None:
        journal, applier, proc = await _applier_against(nats_journal.urls, 2, str(short_tmp), "stranger")
        try:
            await journal.append(_data(_set("a", "1"), term_seq=1), 2, "x1")
            with pytest.raises(ApplyHalted, match="provisioned for cluster id 'c0ffee'"):
                await applier.run()
            assert applier.applied_seq == 0 and not applier.identity_verified
        finally:
            proc.kill()
            await journal.close()

    _run(scenario())


def test_replica_halts_when_a_leadership_epoch_goes_backwards(nats_journal, short_tmp) -> None:
    async def scenario() -> None:
        journal, applier, proc = await _applier_against(nats_journal.urls, 3, str(short_tmp))
        try:
            await journal.append(Entry(EntryType.LEADER, 5, "n1", address="x:1"), 2, "l1")
            await journal.append(_data(_set("a", "1"), epoch=5, term_seq=1), 3, "l2")
            await journal.append(Entry(EntryType.LEADER, 1, "n0", address="x:2"), 4, "l3")
            with pytest.raises(ApplyHalted, match="epoch 1, not above the epoch 5"):
                await applier.run()
            assert applier.applied_seq == 4 and applier.identity_verified
        finally:
            proc.kill()
            await journal.close()

    _run(scenario())


def test_replica_applies_only_the_gap_free_chain_of_the_current_term(nats_journal, short_tmp) -> None:
    """Entries a refused pipeline left behind another node's entry are skipped, not applied."""

    async def scenario() -> None:
        journal, _, proc = await _applier_against(nats_journal.urls, 4, str(short_tmp))
        seen: list[int] = []

        def on_entry(entry: Entry) -> bool:
            seen.append(entry.seq)
            return entry.seq < 8

        applier = Applier(journal, f"{short_tmp}/v.sock", on_entry, CLUSTER_ID)
        try:
            await journal.append(_data(_set("a", "1"), epoch=1, term_seq=1), 2, "t1")
            await journal.append(Entry(EntryType.LEADER, 2, "n2", address="x:2"), 3, "t2")
            # The deposed leader's pipelined leftover, landed behind the campaign.
            await journal.append(_data(_set("a", "stale"), epoch=1, term_seq=2), 4, "t3")
            # The new leader's second append, landed although its first was refused: a gap.
            await journal.append(_data(_set("a", "gap"), epoch=2, term_seq=2), 5, "t4")
            await journal.append(Entry(EntryType.LEADER, 3, "n3", address="x:3"), 6, "t5")
            await journal.append(_data(_set("b", "1"), epoch=3, term_seq=1), 7, "t6")
            await applier.run()
            assert applier.applied_seq == 8 and applier.skipped == 2
            assert 5 not in seen and 6 not in seen
            conn = await _node_connection(f"{short_tmp}/v.sock")
            assert await conn.execute("GET", "a") == b"1"
            assert await conn.execute("GET", "b") == b"1"
            conn.close()
        finally:
            proc.kill()
            await journal.close()

    _run(scenario())
