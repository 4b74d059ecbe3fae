"""ENGRAM.MR.CLOCK: a region that takes no writes still tells the others its clock, through the same
replication stream its writes take."""

from __future__ import annotations

import asyncio

import hiredis
import pytest

from tests.module.harness import Conn, attached_tap, free_port, run, settle, valkey

pytestmark = pytest.mark.integration


def test_a_clock_stamp_replicates_in_order_and_a_replica_observes_it() -> None:
    async def scenario() -> None:
        async with (valkey("region", "east") as first, attached_tap(first, auto=True) as tap,
                    valkey() as second):
            conn = await Conn.open(first)
            assert await conn.call("SET", "k", "v") == b"OK"
            hlc = await conn.call("ENGRAM.MR.CLOCK")
            later = await conn.call("ENGRAM.MR.CLOCK")
            assert isinstance(hlc, int) and later > hlc
            await settle(first)
            stream = [c.args for c in tap.commands if c.args[0].lower() != b"ping"]
            clocks = [a for a in stream if a[0] == b"ENGRAM.MR.CLOCK"]
            assert clocks == [[b"ENGRAM.MR.CLOCK", str(hlc).encode(), b"east"],
                              [b"ENGRAM.MR.CLOCK", str(later).encode(), b"east"]]
            # After the write it follows: the clock covers every write stamped before it.
            applies = [i for i, a in enumerate(stream) if a[0] == b"ENGRAM.MR.APPLY"]
            assert applies and applies[-1] < stream.index(clocks[0])
            assert int(stream[applies[-1]][1]) < hlc
            # A server without a region (a snapshot's scratch Valkey) replays it, observing only.
            replay = await Conn.open(second)
            assert await replay.call(*clocks[1]) == later
            assert await replay.call("DBSIZE") == 0

    run(scenario)


def test_a_clock_is_taken_only_from_the_node_and_only_in_a_region() -> None:
    async def scenario() -> None:
        with free_port() as port:
            async with valkey("region", "east", "--port", str(port)) as socket:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                remote = Conn(reader, writer)
                reply = await remote.call("ENGRAM.MR.CLOCK")
                assert isinstance(reply, hiredis.ReplyError) and "only from the node" in str(reply)
                remote.close()
                local = await Conn.open(socket)
                reply = await local.call("ENGRAM.MR.CLOCK", "0", "east")
                assert isinstance(reply, hiredis.ReplyError) and "positive number" in str(reply)
        async with valkey() as plain:
            local = await Conn.open(plain)
            reply = await local.call("ENGRAM.MR.CLOCK")
            assert isinstance(reply, hiredis.ReplyError) and "not in multi-region mode" in str(reply)

    run(scenario)
