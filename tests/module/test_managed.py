"""managed 1: a Valkey whose node pushes its state later fails closed from the moment it loads the
module, as if ENGRAM.ROLE replica had been pushed with the slot map unknown."""

from __future__ import annotations

import time
from typing import Any

import hiredis
import pytest

from engram.cluster.protocol import Me
from engram.cluster.push import topology_command
from engram.cluster.slots import key_hash_slot
from engram.cluster.topology import ClusterView, LeaderRecord, NodeRecord, SlotMap
from tests.module.harness import Conn, attached_tap, run, valkey

pytestmark = pytest.mark.integration

UNKNOWN = "CLUSTERDOWN the slot map is not known yet"
READONLY = "READONLY You can't write against a read only replica."


def _err(reply: Any) -> str:
    assert isinstance(reply, hiredis.ReplyError), f"expected an error, got {reply!r}"
    return str(reply)


async def _refuses_everything_it_must(client: Conn) -> None:
    for command in (("SET", "k", "v"), ("GET", "k"), ("INCR", "n"), ("MSET", "{a}1", "x", "{a}2", "y"),
                    ("EVAL", "return 1", 1, "k")):
        assert _err(await client.call(*command)) == UNKNOWN, command
    for command in (("FLUSHALL",), ("EVAL", "return 1", 0), ("FUNCTION", "FLUSH")):
        assert _err(await client.call(*command)) == READONLY, command
    # Keyless reads and connection commands are served.
    assert await client.call("PING") == b"PONG"
    assert await client.call("DBSIZE") == 0
    assert await client.call("SELECT", 1) == b"OK"
    assert _err(await client.call("CLUSTER", "INFO")) == UNKNOWN
    # A transaction with a write in it is doomed.
    client.send(("MULTI",), ("SET", "k", "v"), ("EXEC",))
    multi, refused, execed = await client.read(3)
    assert multi == b"OK" and _err(refused) == UNKNOWN and _err(execed).startswith("EXECABORT")


@pytest.mark.parametrize("how", [("managed", "1"), ("--engram.managed", "yes")], ids=["argument", "config"])
def test_a_managed_module_fails_closed_from_load(how: tuple[str, str]) -> None:
    async def scenario() -> None:
        # The module argument goes right after the module's path; the config anywhere.
        async with valkey(*how) as path:
            client = await Conn.open(path)
            await _refuses_everything_it_must(client)
            info = (await client.call("ENGRAM.INFO")).decode()
            assert "managed:1" in info and "active:0" in info and "cluster_checks:1" in info
            assert "slot_map:unknown" in info
            assert await client.call("CONFIG", "GET", "engram.managed") == [b"engram.managed", b"yes"]
            # Set at startup only: it cannot be turned off under running clients.
            assert "immutable" in _err(await client.call("CONFIG", "SET", "engram.managed", "no")).lower()

    run(scenario)


def test_a_managed_module_serves_once_the_node_has_pushed_its_state() -> None:
    view = ClusterView(SlotMap.even(1))
    view.leaders[0] = LeaderRecord(0, "n0", "10.0.0.1:6379", 3)
    view.nodes["n0"] = NodeRecord("n0", 0, "z", "10.0.0.1:6379", "primary", 42)
    me = Me("n0", 0, "10.0.0.1:6379", 3)

    async def scenario() -> None:
        async with valkey("managed", "1") as path, attached_tap(path) as tap:
            node, client = await Conn.open(path), await Conn.open(path)
            assert await node.call("ENGRAM.INTERNAL") == b"OK"
            # The node's own connection is not checked.
            assert await node.call("SET", "seed", "1") == b"OK"
            assert _err(await client.call("SET", "k", "v")) == UNKNOWN
            # The node's pushes, in the order it sends them.
            assert await node.call(*topology_command(view, me, "10.0.0.1:6379", "")) == b"OK"
            assert _err(await client.call("SET", "k", "v")) == f"MOVED {key_hash_slot(b'k')} 10.0.0.1:6379"
            assert await node.call("ENGRAM.ROLE", "primary") == b"OK"
            assert _err(await client.call("SET", "k", "v")).startswith("TRYAGAIN ")
            deadline = int((time.monotonic() + 60) * 1_000_000)
            assert await node.call("ENGRAM.LEASE", deadline) == b"OK"
            # Now a primary: writes run and their replies wait for the commit.
            client.send(("SET", "k", "v"))
            await tap.wait_for_command(b"SET", 2)  # the node's SET seed, then this one
            assert client.arrived() == 0
            tap.ack()
            assert await client.read(1) == [b"OK"]
            assert await client.call("GET", "seed") == b"1"

    run(scenario)


def test_without_managed_nothing_is_checked_until_the_first_push() -> None:
    async def scenario() -> None:
        async with valkey("managed", "0") as path, attached_tap(path, auto=True):
            client = await Conn.open(path)
            assert await client.call("SET", "k", "v") == b"OK"
            assert await client.call("FLUSHALL") == b"OK"
            info = (await client.call("ENGRAM.INFO")).decode()
            assert "managed:0" in info and "cluster_checks:0" in info
            assert await client.call("CONFIG", "GET", "engram.managed") == [b"engram.managed", b"no"]

    run(scenario)


def test_a_bad_managed_argument_stops_the_module_loading() -> None:
    async def scenario() -> None:
        with pytest.raises(Exception, match="exited"):
            async with valkey("managed", "maybe"):
                pass

    run(scenario)
