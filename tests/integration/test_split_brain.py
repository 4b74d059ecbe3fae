"""Issue 11, replayed on real Valkey and JetStream: a restarted primary must not start a second history.

What happened: node n0 led epoch 1, was killed, and came back while its replica's tail was slow.
It campaigned as if the shard were new and reused the message ids of its first life; every refused
conditional append was then "recognised" as an old entry with the same id, so it acknowledged
writes for 26 s that no other node ever saw.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from engram import binaries
from engram.cluster.protocol import Me
from engram.cluster.push import topology_command
from engram.cluster.topology import ClusterView, SlotMap
from engram.journal.client import Appended, Journal
from engram.journal.entries import Entry, EntryType
from engram.journal.errors import Fenced
from engram.node.datapath import DataPath
from engram.replication.committer import Committer, _InFlight
from engram.replication.tap import Tap
from engram.valkey.connection import ValkeyConnection, ValkeyError
from engram.valkey.process import start_valkey

pytestmark = pytest.mark.integration

CLUSTER_ID = "split-brain-test"
LEASE = 2.0


class _Primary:
    """A primary's data path as the node runs it: Valkey, its tap and a committer at one epoch."""

    def __init__(self, journal: Journal, socket: str, node: str, epoch: int, leader_seq: int) -> None:
        self.journal, self.socket, self.node = journal, socket, node
        self.epoch, self.leader_seq = epoch, leader_seq
        self.tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        self.tap = Tap(self.socket)
        await self.tap.attach()
        self.committer = Committer(self.journal, self.tap, self.node, self.epoch, self.leader_seq, 0,
                                   LEASE, 512 * 1024, 4, lambda seq, latency: None)
        loop = asyncio.get_running_loop()
        self.tasks = [loop.create_task(self.tap.stream(self.committer.feed)),
                      loop.create_task(self.committer.run())]
        # Take charge of the module as the node does: primary of every slot, serving for now.
        self.datapath = DataPath(self.socket)
        await self.datapath.open()
        await self.datapath.set_role("primary")
        await self.datapath.set_lease(time.monotonic() + 3600, "")
        view = ClusterView(slots=SlotMap.even(1))
        me = Me(self.node, 0, "127.0.0.1:1", self.epoch)
        await self.datapath.set_topology(None, topology_command(view, me, "127.0.0.1:1", ""))
        await self.datapath.execute("ENGRAM.COMMITTIMEOUT", "3000")
        self.client = await ValkeyConnection.open(self.socket)

    async def write(self, key: str, value: str) -> bool:
        """SET as a client does; the module replies only once the journal has it: True when acknowledged."""
        try:
            return await self.client.execute("SET", key, value) == b"OK"
        except ValkeyError as exc:
            assert str(exc).startswith("UNKNOWN"), exc
            return False

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tap.close()
        self.client.close()
        self.datapath.close()


def test_a_restarted_primary_cannot_pass_its_old_entries_off_as_new_writes(nats_journal, short_tmp) -> None:
    async def scenario() -> None:
        journal = await Journal.connect(nats_journal.urls, "sb", 0, replicas=3)
        await journal.create_stream(CLUSTER_ID)
        module = binaries.valkey_module()
        first_life = await start_valkey(f"{short_tmp}/a.sock", str(short_tmp / "a"), [], module=module)
        second_life = await start_valkey(f"{short_tmp}/b.sock", str(short_tmp / "b"), [], module=module)
        try:
            # n0's first life: it wins epoch 1 right after the genesis entry and commits writes.
            campaign = Entry(EntryType.LEADER, 1, "n0", address="x:1")
            won = await journal.append(campaign, 1, "n0-life1-campaign")
            n0 = _Primary(journal, f"{short_tmp}/a.sock", "n0", 1, won.seq)
            await n0.start()
            for i in range(30):
                assert await n0.write(f"k{i}", "first-life")
            end_of_life = n0.committer.committed_seq
            await n0.stop()
            first_life.kill()

            # n1 takes over at epoch 2 and commits on top.
            last = await journal.last_seq()
            assert last == end_of_life
            await journal.append(Entry(EntryType.LEADER, 2, "n1", address="x:2"), last, "n1-campaign")
            await journal.append(Entry(EntryType.DATA, 2, "n1", b"*1\r\n$4\r\nPING\r\n"), last + 1, "n1-data")
            real_history = await journal.last_seq()

            # n0 restarted: empty, it campaigns as the shard's first leader again ...
            with pytest.raises(Fenced):
                await journal.append(Entry(EntryType.LEADER, 1, "n0", address="x:1"), 1, "n0-life2-campaign")
            # ... and even a primary that believes it won epoch 1 at that sequence is fenced on its
            # first append; it acknowledges nothing.
            restarted = _Primary(journal, f"{short_tmp}/b.sock", "n0", 1, won.seq)
            await restarted.start()
            assert not await restarted.write("k0", "second-history")
            deadline = time.monotonic() + 10
            while restarted.committer.fenced is None:
                assert time.monotonic() < deadline, "the restarted primary was never fenced"
                await asyncio.sleep(0.02)
            assert restarted.committer.committed_seq == won.seq
            assert await journal.last_seq() == real_history
            await restarted.stop()
        finally:
            first_life.kill()
            second_life.kill()
            await journal.close()

    asyncio.run(asyncio.wait_for(scenario(), 90))


def test_an_append_found_to_have_landed_earlier_renews_the_lease_only_from_its_first_send(
    nats_journal, short_tmp
) -> None:
    """A primary cut off by a partition must not read its own stale entries as a fresh lease."""

    async def scenario() -> None:
        journal = await Journal.connect(nats_journal.urls, "lease", 0, replicas=3)
        await journal.create_stream(CLUSTER_ID)
        proc = await start_valkey(f"{short_tmp}/v.sock", str(short_tmp), [], module=binaries.valkey_module())
        won = await journal.append(Entry(EntryType.LEADER, 1, "n0", address="x:1"), 1, "campaign")
        primary = _Primary(journal, f"{short_tmp}/v.sock", "n0", 1, won.seq)
        await primary.start()
        try:
            committer = primary.committer
            deadline = time.monotonic() + 10
            while committer.committed_seq < won.seq + 1:  # its first lease renewal
                assert time.monotonic() < deadline, "the primary never renewed its lease"
                await asyncio.sleep(0.01)
            for task in primary.tasks:  # settle by hand from here, with nothing else in flight
                task.cancel()
            await asyncio.gather(*primary.tasks, return_exceptions=True)
            now = time.monotonic()
            expected = committer.next_expected
            committer.next_expected += 1
            committer.committed_seq = expected
            committer.lease_until = 0.0
            lease = Entry(EntryType.LEASE, 1, "n0")
            # Sent 10 s ago, before the partition; the retry now finds it landed back then.
            flight = _InFlight(lease, expected, "id", -1, now - 10.0, now, None)
            committer._settle(flight, Appended(expected + 1, earlier=True))
            assert committer.lease_until == pytest.approx(now - 10.0 + LEASE)
            assert committer.lease_until < time.monotonic()
            flight = _InFlight(lease, expected + 1, "id2", -1, now - 10.0, now, None)
            committer._settle(flight, Appended(expected + 2, earlier=False))
            assert committer.lease_until == pytest.approx(now + LEASE)
        finally:
            await primary.stop()
            proc.kill()
            await journal.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))
