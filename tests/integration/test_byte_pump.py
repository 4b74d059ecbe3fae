"""The tap as a byte pump on real Valkey and JetStream: the journal's entries, applied by a replica,
rebuild exactly what the primary ran (databases, transactions, values that look like RESP, batches
in pieces), WAIT returns only after the commit, and an idle primary journals no link-only commands."""

from __future__ import annotations

import asyncio

import pytest

from engram import binaries
from engram.journal.client import Journal
from engram.journal.entries import Entry, EntryType
from engram.replication.applier import Applier
from engram.replication.committer import Committer
from engram.replication.tap import Tap
from engram.valkey.connection import ValkeyConnection, encode
from engram.valkey.process import start_valkey

pytestmark = pytest.mark.integration

CLUSTER_ID = "pump-test"
RESP_LOOKING = b"*1\r\n$4\r\nEXEC\r\n*1\r\n$5\r\nMULTI\r\n$4\r\nPING\r\n"


async def _offsets(conn: ValkeyConnection) -> tuple[int, int]:
    """The primary's replication offset and the one its only replica (the tap) acknowledged."""
    info = (await conn.execute("INFO", "replication")).decode()  # type: ignore[union-attr]
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    replica = dict(part.split("=", 1) for part in fields["slave0"].split(","))
    return int(fields["master_repl_offset"]), int(replica["offset"])


async def _node_connection(socket: str, module: bool) -> ValkeyConnection:
    """A connection with the node's own rights: a module Valkey neither checks nor holds it."""
    conn = await ValkeyConnection.open(socket)
    if module:
        await conn.execute("ENGRAM.INTERNAL")
    return conn


async def _replica(socket: str, data_dir: str) -> object:
    """A replica's Valkey as a node runs it: with the module, in the replica role (its applier's
    connection asks the module to stand aside)."""
    proc = await start_valkey(socket, data_dir, [], module=binaries.valkey_module())
    node = await _node_connection(socket, module=True)
    await node.execute("ENGRAM.ROLE", "replica")
    node.close()
    return proc


async def _contents(socket: str, module: bool) -> dict[tuple[int, bytes], bytes]:
    """Every key of databases 0-15 with its DUMP, which covers type and value."""
    conn = await _node_connection(socket, module)
    try:
        out = {}
        for db in range(16):
            await conn.execute("SELECT", db)
            for key in await conn.execute("KEYS", "*"):  # type: ignore[union-attr]
                out[(db, key)] = await conn.execute("DUMP", key)
        return out
    finally:
        conn.close()


async def _entries(journal: Journal, first: int, last: int) -> list[Entry]:
    return [e for seq in range(first, last + 1) if (e := await journal.get(seq)) is not None]


def test_a_replica_applying_the_pumped_entries_rebuilds_what_the_primary_ran(nats_journal, short_tmp) -> None:
    async def scenario() -> None:
        journal = await Journal.connect(nats_journal.urls, "pump", 0, replicas=3)
        await journal.create_stream(CLUSTER_ID)
        won = await journal.append(Entry(EntryType.LEADER, 1, "n0", address="x:1"), 1, "pump-campaign")
        primary_socket, replica_socket = f"{short_tmp}/p.sock", f"{short_tmp}/r.sock"
        # A plain Valkey whose clients WAIT for the tap's acknowledgement, with PINGs on the
        # replication link every second, so that an idle stretch holds some.
        pings = ["--repl-ping-replica-period", "1"]
        primary = await start_valkey(primary_socket, str(short_tmp / "p"), pings)
        replica = await _replica(replica_socket, str(short_tmp / "r"))
        tap = Tap(primary_socket)
        tasks: list[asyncio.Task] = []
        try:
            await tap.attach()
            committer = Committer(journal, tap, "n0", 1, won.seq, 0, 5.0, 64 * 1024, 4,
                                  lambda seq, latency: None)
            loop = asyncio.get_running_loop()
            tasks = [loop.create_task(tap.stream(committer.feed)), loop.create_task(committer.run())]
            client = await ValkeyConnection.open(primary_socket)

            async def committed(*commands: list[bytes | str | int]) -> None:
                """Run commands as one pipeline; WAIT returns once the journal committed them."""
                client.write(b"".join(encode(c) for c in commands) + encode(["WAIT", 1, 5000]))
                for _ in commands:
                    await client.read_reply()
                assert await client.read_reply() == 1

            await committed(["SET", "a", "1"], ["SELECT", 3], ["SET", RESP_LOOKING, RESP_LOOKING])
            await committed(["MULTI"], ["SET", "c", "1"], ["INCR", "n"], ["SELECT", 5], ["SET", "d", "x"],
                            ["EXEC"])
            await committed(["SELECT", 7], ["SET", "big", b"v" * 300_000])  # more than one message
            await committed(*(["INCRBY", f"k{i % 50}", i] for i in range(2000)))
            await committed(["SELECT", 0], ["FLUSHDB"], ["LPUSH", "list", *(str(i) for i in range(100))])

            before_idle, idle_from = await journal.last_seq(), await _offsets(client)
            await asyncio.sleep(2.5)  # idle: only PINGs on the link, acknowledged without entries
            for _ in range(100):
                primary_offset, acked = await _offsets(client)
                if acked == primary_offset:
                    break
                await asyncio.sleep(0.01)
            assert acked == primary_offset > idle_from[0]  # PINGs came, and were all acknowledged
            last = await journal.last_seq()
            assert all(e.type is not EntryType.DATA for e in await _entries(journal, before_idle + 1, last))

            entries = await _entries(journal, won.seq + 1, last)
            assert all(len(e.payload) <= 64 * 1024 for e in entries)
            assert any(e.more for e in entries)  # the big value went in pieces
            applier = Applier(journal, replica_socket, lambda entry: entry.seq < last, CLUSTER_ID)
            await applier.run()
            assert not applier.halted and applier.skipped == 0
            assert applier.checksum == committer.checksum
            rebuilt = await _contents(replica_socket, module=True)
            assert rebuilt == await _contents(primary_socket, module=False) and len(rebuilt) > 50
            client.close()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            tap.close()
            primary.kill()
            replica.kill()
            await journal.close()

    asyncio.run(asyncio.wait_for(scenario(), 90))


def test_link_only_commands_journaled_between_writes_are_harmless_on_a_replica(
    nats_journal, short_tmp
) -> None:
    """A batch can hold PING and REPLCONF GETACK between writes (see the committer); a replica runs
    them on its applier's connection with replies off: no reply, no effect, and still one +OK."""

    async def scenario() -> None:
        journal = await Journal.connect(nats_journal.urls, "link", 0, replicas=3)
        await journal.create_stream(CLUSTER_ID)
        await journal.append(Entry(EntryType.LEADER, 1, "n0", address="x:1"), 1, "link-campaign")
        payload = b"".join(encode(c) for c in (
            ["SET", "x", "1"], ["PING"], ["REPLCONF", "GETACK", "*"], ["MULTI"], ["INCR", "n"], ["PING"],
            ["EXEC"], ["REPLCONF", "ACK", "123"], ["SET", "y", "2"],
        ))
        await journal.append(Entry(EntryType.DATA, 1, "n0", payload, db=2, term_seq=1), 2, "link-data")
        await journal.append(Entry(EntryType.DATA, 1, "n0", encode(["SET", "z", "3"]), db=2, term_seq=2), 3,
                             "link-next")
        proc = await _replica(f"{short_tmp}/v.sock", str(short_tmp))
        try:
            applier = Applier(journal, f"{short_tmp}/v.sock", lambda entry: entry.seq < 4, CLUSTER_ID)
            await applier.run()
            assert applier.applied_seq == 4 and not applier.halted
            conn = await _node_connection(f"{short_tmp}/v.sock", module=True)
            await conn.execute("SELECT", 2)
            assert [await conn.execute("GET", k) for k in ("x", "n", "y", "z")] == [b"1", b"1", b"2", b"3"]
            assert await conn.execute("PING") == b"PONG"  # the connection's replies are as they were
            conn.close()
        finally:
            proc.kill()
            await journal.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))
