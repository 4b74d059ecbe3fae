"""The module speaks the cluster protocol from the state the node pushes: slot and role checks,
the lease, READONLY, and CLUSTER replies equal to the front door's."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import hiredis
import pytest

from engram.cluster.protocol import Me, cluster_command
from engram.cluster.push import slot_owners, topology_command
from engram.cluster.slots import SLOTS, key_hash_slot
from engram.cluster.topology import ClusterView, LeaderRecord, NodeRecord, SlotMap, cluster_node_id
from engram.resp import ReplyScanner, encode_command
from tests.module.harness import DEADLINE, Conn, attached_tap, free_port, run, settle, valkey

pytestmark = pytest.mark.integration

NO_PRIMARY = "the shard has no primary right now (leader election in progress)"
LEASE_EXPIRED = "primary lease expired or journal unavailable; leadership is being re-established"


def _lease(seconds: float) -> int:
    """A deadline `seconds` from now, as the node pushes it: CLOCK_MONOTONIC microseconds."""
    return int((time.monotonic() + seconds) * 1_000_000)


def _view(shards: int = 3, addresses: dict[int, str] | None = None) -> ClusterView:
    """Shards splitting the slots evenly; each listed shard has a primary node n<shard> at its address."""
    if addresses is None:
        addresses = {0: "10.0.0.1:6379", 1: "10.0.0.2:6379"}  # shard 2 has no primary
    view = ClusterView(SlotMap.even(shards))
    for shard, address in addresses.items():
        view.leaders[shard] = LeaderRecord(shard, f"n{shard}", address, 3)
        view.nodes[f"n{shard}"] = NodeRecord(f"n{shard}", shard, "z", address, "primary", 42)
    view.nodes["n0b"] = NodeRecord("n0b", 0, "z", "10.0.0.4:6379", "replica", 40)
    return view


def _key(view: ClusterView, shard: int, tag: str = "") -> str:
    """A key whose slot the shard owns."""
    assert view.slots is not None
    for i in range(100_000):
        key = f"{{{tag}{i}}}k" if tag else f"key{i}"
        if view.slots.owner(key_hash_slot(key.encode())) == shard:
            return key
    raise AssertionError(f"no key for shard {shard}")


def _err(reply: Any) -> str:
    assert isinstance(reply, hiredis.ReplyError), f"expected an error, got {reply!r}"
    return str(reply)


async def _push(conn: Conn, *commands: list[Any]) -> None:
    for command in commands:
        assert await conn.call(*command) == b"OK", command


async def _primary(admin: Conn, view: ClusterView, me: Me, lease_seconds: float = 60.0) -> None:
    await _push(
        admin,
        topology_command(view, me, view.leader_address(me.shard), NO_PRIMARY),
        ["ENGRAM.ROLE", "primary"],
        ["ENGRAM.LEASE", _lease(lease_seconds)],
    )


class RawConn:
    """A connection that returns each reply's exact bytes."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.scanner = ReplyScanner()
        self.pending: list[bytes] = []

    @classmethod
    async def open(cls, path: str) -> RawConn:
        return cls(*await asyncio.open_unix_connection(path))

    def send(self, *commands: tuple[bytes | str, ...]) -> None:
        """Write every command in one go: a pipeline."""
        self.writer.write(b"".join(encode_command([_arg(a) for a in args]) for args in commands))

    async def read(self, count: int) -> list[bytes]:
        while len(self.pending) < count:
            data = await asyncio.wait_for(self.reader.read(1 << 16), DEADLINE)
            assert data, "connection closed"
            self.scanner.feed(data)
            self.pending += self.scanner.replies()
        out, self.pending = self.pending[:count], self.pending[count:]
        return out

    async def call(self, *args: bytes | str) -> bytes:
        self.send(args)
        return (await self.read(1))[0]

    def close(self) -> None:
        self.writer.close()


def _arg(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


# ---- slots ------------------------------------------------------------------------------------


def test_the_module_hashes_keys_to_the_slots_python_computes() -> None:
    rng = random.Random(7)
    keys = [b"", b"a", b"{}", b"{}a", b"a{}", b"{a", b"a}", b"}{a}", b"{a}{b}", b"x{user1000}.following",
            b"{user1000}.followers", b"{{a}}", b"\x00{\xff}\x00", "ключ{тег}".encode()]
    keys += [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 24))) for _ in range(400)]
    keys += [b"%s{%s}%s" % (rng.randbytes(3), rng.randbytes(rng.randrange(0, 4)), rng.randbytes(2))
             for _ in range(200)]

    async def scenario() -> None:
        async with valkey() as path:
            admin = await Conn.open(path)
            view = _view()
            await _push(admin, topology_command(view, Me("n0", 0, "10.0.0.1:6379", 3), "", NO_PRIMARY))
            admin.send(*[("CLUSTER", "KEYSLOT", key) for key in keys])
            assert await admin.read(len(keys)) == [key_hash_slot(key) for key in keys]

    run(scenario)


def test_keys_of_other_shards_are_redirected_and_mixed_slots_refused() -> None:
    view = _view()
    me = Me("n0", 0, "10.0.0.1:6379", 3)
    mine, moved, orphan = _key(view, 0), _key(view, 1), _key(view, 2)
    moved_slot, orphan_slot = key_hash_slot(moved.encode()), key_hash_slot(orphan.encode())

    async def scenario() -> None:
        async with valkey() as path, attached_tap(path, auto=True):
            admin, client = await Conn.open(path), await Conn.open(path)
            await _primary(admin, view, me)
            assert await client.call("SET", mine, "v") == b"OK"
            assert await client.call("GET", mine) == b"v"
            assert _err(await client.call("GET", moved)) == f"MOVED {moved_slot} 10.0.0.2:6379"
            assert _err(await client.call("SET", moved, "v")) == f"MOVED {moved_slot} 10.0.0.2:6379"
            assert _err(await client.call("GET", orphan)) == (
                f"CLUSTERDOWN shard 2, owner of slot {orphan_slot}, has no primary"
            )
            other_mine = next(k for k in (f"x{i}" for i in range(1000))
                              if view.owner(key_hash_slot(k.encode())) == 0
                              and key_hash_slot(k.encode()) != key_hash_slot(mine.encode()))
            assert _err(await client.call("MSET", mine, "1", other_mine, "2")) == (
                "CROSSSLOT Keys in request don't hash to the same slot"
            )
            tagged = [_key(view, 0, tag="t")] * 2
            assert await client.call("MSET", tagged[0], "1", tagged[1], "2") == b"OK"
            # Scripts are checked on their declared keys.
            refused = await client.call("EVAL", "return 1", 1, moved)
            assert _err(refused) == f"MOVED {moved_slot} 10.0.0.2:6379"
            assert await client.call("EVAL", "return redis.call('GET', KEYS[1])", 1, mine) == b"v"
            # Keyless commands are not the slot map's business.
            assert await client.call("PING") == b"PONG"
            assert await client.call("DBSIZE") >= 1

            # A slot map that is not known yet refuses every keyed command.
            await _push(admin, topology_command(ClusterView(), me, "", NO_PRIMARY))
            assert _err(await client.call("GET", mine)) == "CLUSTERDOWN the slot map is not known yet"
            assert await client.call("PING") == b"PONG"

    run(scenario)


def test_the_first_role_push_turns_the_checks_on_with_the_slot_map_unknown() -> None:
    async def scenario() -> None:
        async with valkey() as path, attached_tap(path, auto=True):
            admin, client = await Conn.open(path), await Conn.open(path)
            assert await client.call("SET", "k", "v") == b"OK"  # nothing pushed: phase 1 as it was
            assert "cluster support disabled" in _err(await client.call("CLUSTER", "INFO"))
            await _push(admin, ["ENGRAM.ROLE", "primary"], ["ENGRAM.LEASE", _lease(60)])
            assert _err(await client.call("GET", "k")) == "CLUSTERDOWN the slot map is not known yet"
            assert _err(await client.call("CLUSTER", "INFO")) == "CLUSTERDOWN the slot map is not known yet"
            assert await client.call("CLUSTER", "KEYSLOT", "k") == key_hash_slot(b"k")

    run(scenario)


def test_a_topology_push_is_all_or_nothing() -> None:
    view = _view()
    me = Me("n0", 0, "10.0.0.1:6379", 3)
    moved = _key(view, 1)

    async def scenario() -> None:
        async with valkey() as path:
            admin, client = await Conn.open(path), await Conn.open(path)
            await _primary(admin, view, me)
            good = topology_command(view, me, "", NO_PRIMARY)
            bad_map = list(good)
            bad_map[bad_map.index(b"SLOTS") + 1] = b"\x00" * 10
            assert "ENGRAM.TOPOLOGY: SLOTS takes 32768 bytes" in _err(await admin.call(*bad_map))
            truncated = await admin.call(*good, b"REPLY", b"INFO", b"$5\r\nab")
            assert "not one well-formed RESP3" in _err(truncated)
            assert "unknown keyword" in _err(await admin.call(*good, b"COLOUR", b"blue"))
            missing = await admin.call("ENGRAM.TOPOLOGY", "REASON", "x", "SHARD", 0)
            assert "SHARD and SLOTS are required" in _err(missing)
            # The state the good push set is intact.
            assert _err(await client.call("GET", moved)).startswith("MOVED ")
            assert slot_owners(view)[:2] == b"\x00\x00" and len(slot_owners(view)) == 2 * SLOTS

    run(scenario)


# ---- the lease ----------------------------------------------------------------------------------


def test_a_primary_past_its_lease_refuses_data_commands_with_tryagain() -> None:
    view = _view(1, {0: "10.0.0.1:6379"})
    me = Me("n0", 0, "10.0.0.1:6379", 3)

    async def scenario() -> None:
        async with valkey() as path, attached_tap(path, auto=True):
            admin, client = await Conn.open(path), await Conn.open(path)
            await _primary(admin, view, me, lease_seconds=0.3)
            assert await client.call("SET", "k", "v") == b"OK"
            deadline = time.monotonic() + DEADLINE
            while not isinstance(reply := await client.call("SET", "k", "v"), hiredis.ReplyError):
                assert reply == b"OK"
                assert time.monotonic() < deadline, "the lease never ran out"
                await asyncio.sleep(0.01)
            assert str(reply) == f"TRYAGAIN {LEASE_EXPIRED}"
            refused = (("GET", "k"), ("DBSIZE",), ("KEYS", "*"), ("SCAN", 0), ("RANDOMKEY",), ("FLUSHALL",),
                       ("EVAL", "return 1", 0))
            for command in refused:
                assert _err(await client.call(*command)) == f"TRYAGAIN {LEASE_EXPIRED}", command
            for command, expected in ((("PING",), b"PONG"), (("SELECT", 0), b"OK"), (("ECHO", "x"), b"x")):
                assert await client.call(*command) == expected
            assert isinstance(await client.call("CLIENT", "ID"), int)
            assert b"redis_version" in await client.call("INFO", "server")
            # The node's reason, when it stops the primary on purpose.
            await _push(admin, ["ENGRAM.LEASE", 0, "switchover in progress, retry shortly"])
            assert _err(await client.call("GET", "k")) == "TRYAGAIN switchover in progress, retry shortly"
            await _push(admin, ["ENGRAM.LEASE", _lease(60)])
            assert await client.call("GET", "k") == b"v"

    run(scenario)


def test_exec_past_the_lease_is_refused_and_discards_the_transaction() -> None:
    view = _view(1, {0: "10.0.0.1:6379"})
    me = Me("n0", 0, "10.0.0.1:6379", 3)

    async def scenario() -> None:
        async with valkey() as path, attached_tap(path, auto=True):
            admin, client = await Conn.open(path), await Conn.open(path)
            await _primary(admin, view, me)
            assert await client.call("MULTI") == b"OK"
            assert await client.call("SET", "k", "v") == b"QUEUED"
            await _push(admin, ["ENGRAM.LEASE", 0])
            assert _err(await client.call("EXEC")) == f"TRYAGAIN {LEASE_EXPIRED}"
            assert _err(await client.call("EXEC")) == "ERR EXEC without MULTI"
            await _push(admin, ["ENGRAM.LEASE", _lease(60)])
            assert await client.call("EXISTS", "k") == 0

    run(scenario)


# ---- replicas -----------------------------------------------------------------------------------


def test_a_replica_redirects_serves_reads_after_readonly_and_refuses_writes() -> None:
    view = _view()
    me = Me("n0b", 0, "10.0.0.4:6379", 3)
    mine, moved = _key(view, 0), _key(view, 1)
    slot, moved_slot = key_hash_slot(mine.encode()), key_hash_slot(moved.encode())

    async def scenario() -> None:
        async with valkey() as path:
            admin, client = await Conn.open(path), await Conn.open(path)
            await _push(admin, ["ENGRAM.INTERNAL"], ["ENGRAM.ROLE", "replica"],
                        topology_command(view, me, "10.0.0.1:6379", NO_PRIMARY))
            # The applier's connection writes replicated data; nothing waits for a commit here.
            assert await admin.call("SET", mine, "replicated") == b"OK"

            assert _err(await client.call("GET", mine)) == f"MOVED {slot} 10.0.0.1:6379"
            assert _err(await client.call("GET", moved)) == f"MOVED {moved_slot} 10.0.0.2:6379"
            for write in (("FLUSHALL",), ("EVAL", "return 1", 0)):
                refused = await client.call(*write)
                assert _err(refused) == "READONLY You can't write against a read only replica."
            assert await client.call("PING") == b"PONG"
            assert await client.call("DBSIZE") == 1
            assert await client.call("READONLY") == b"OK"
            assert await client.call("GET", mine) == b"replicated"
            assert await client.call("EVAL_RO", "return redis.call('GET', KEYS[1])", 1, mine) == b"replicated"
            assert _err(await client.call("SET", mine, "x")) == f"MOVED {slot} 10.0.0.1:6379"
            assert _err(await client.call("GET", moved)) == f"MOVED {moved_slot} 10.0.0.2:6379"
            assert await client.call("READWRITE") == b"OK"
            assert _err(await client.call("GET", mine)) == f"MOVED {slot} 10.0.0.1:6379"
            assert await client.call("READONLY") == b"OK"
            assert await client.call("RESET") == b"RESET"
            assert _err(await client.call("GET", mine)).startswith("MOVED ")
            assert await client.call("ASKING") == b"OK"
            assert _err(await client.call("READONLY", "extra")) == (
                "ERR wrong number of arguments for 'readonly' command"
            )

            # No primary for the shard: the node's reason.
            await _push(admin, topology_command(view, me, "", "no primary: election in progress"))
            assert _err(await client.call("SET", mine, "x")) == "CLUSTERDOWN no primary: election in progress"

    run(scenario)


def test_becoming_a_replica_fails_held_replies_and_stops_holding() -> None:
    view = _view(1, {0: "10.0.0.1:6379"})
    me = Me("n0", 0, "10.0.0.1:6379", 3)

    async def scenario() -> None:
        async with valkey() as path, attached_tap(path) as tap:
            admin, client = await Conn.open(path), await Conn.open(path)
            await _primary(admin, view, me)
            client.send(("SET", "k", "v"))
            await tap.wait_for_command(b"SET")
            await _push(admin, ["ENGRAM.ROLE", "replica"])
            assert _err((await client.read(1))[0]) == (
                "UNKNOWN this node became a replica; the outcome of this command is unknown"
            )
            info = (await admin.call("ENGRAM.INFO")).decode()
            assert "active:0" in info and "lease_left_ms:0" in info
            assert _err(await client.call("SET", "k", "w")) == f"MOVED {key_hash_slot(b'k')} 10.0.0.1:6379"
            await _push(admin, topology_command(view, me, "", "the primary is gone"))
            assert _err(await client.call("SET", "k", "w")) == "CLUSTERDOWN the primary is gone"

    run(scenario)


def test_a_transaction_begun_on_the_primary_runs_no_write_on_the_replica_it_became() -> None:
    view = _view(1, {0: "10.0.0.1:6379"})
    me = Me("n0", 0, "10.0.0.9:6379", 3)
    slot = key_hash_slot(b"{t}a")

    async def scenario() -> None:
        async with valkey() as path, attached_tap(path, auto=True):
            admin, client = await Conn.open(path), await Conn.open(path)
            await _primary(admin, view, me)
            client.send(("MULTI",), ("SET", "{t}a", "1"), ("GET", "{t}b"))
            assert await client.read(3) == [b"OK", b"QUEUED", b"QUEUED"]
            await _push(admin, ["ENGRAM.ROLE", "replica"])
            assert _err(await client.call("EXEC")) == f"MOVED {slot} 10.0.0.1:6379"
            assert _err(await client.call("EXEC")) == "ERR EXEC without MULTI"
            assert await client.call("READONLY") == b"OK"
            assert await client.call("EXISTS", "{t}a") == 0
            # A transaction of reads runs on the replica, and nothing waits for a commit there.
            client.send(("MULTI",), ("GET", "{t}a"), ("EXISTS", "{t}b"), ("EXEC",))
            assert await client.read(4) == [b"OK", b"QUEUED", b"QUEUED", [None, 0]]
            # A write inside one is refused while queued, and dooms it.
            client.send(("MULTI",), ("SET", "{t}a", "1"), ("EXEC",))
            _, refused, execed = await client.read(3)
            assert _err(refused) == f"MOVED {slot} 10.0.0.1:6379"
            assert _err(execed).startswith("EXECABORT")

    run(scenario)


# ---- order and transactions ------------------------------------------------------------------


def test_a_refusal_keeps_its_place_behind_replies_that_wait_for_a_commit() -> None:
    view = _view()
    me = Me("n0", 0, "10.0.0.1:6379", 3)
    mine, moved = _key(view, 0), _key(view, 1)
    moved_slot = key_hash_slot(moved.encode())

    async def scenario() -> None:
        async with valkey() as path, attached_tap(path) as tap:
            admin, client = await Conn.open(path), await Conn.open(path)
            await _primary(admin, view, me)
            client.send(("SET", mine, "1"), ("GET", moved), ("CLUSTER", "KEYSLOT", mine), ("READONLY",),
                        ("CLUSTER", "MYID"), ("SET", mine, "2"), ("GET", mine))
            await tap.wait_for_command(b"SET", 2)
            await settle(path)
            assert client.arrived() == 0  # the refusal did not overtake the held write
            tap.ack()
            replies = await client.read(7)
            assert replies[0] == b"OK"
            assert _err(replies[1]) == f"MOVED {moved_slot} 10.0.0.2:6379"
            slot = key_hash_slot(mine.encode())
            assert replies[2:] == [slot, b"OK", cluster_node_id("n0").encode(), b"OK", b"2"]

    run(scenario)


def test_a_transaction_across_slots_is_refused_and_aborted() -> None:
    view = _view(1, {0: "10.0.0.1:6379"})
    me = Me("n0", 0, "10.0.0.1:6379", 3)
    moved_view = _view()
    moved = _key(moved_view, 1)

    async def scenario() -> None:
        async with valkey() as path, attached_tap(path, auto=True):
            admin, client = await Conn.open(path), await Conn.open(path)
            await _primary(admin, view, me)
            client.send(("MULTI",), ("SET", "{a}1", "x"), ("SET", "{b}2", "y"), ("GET", "{a}3"), ("EXEC",))
            multi, first, cross, same, execed = await client.read(5)
            assert (multi, first, same) == (b"OK", b"QUEUED", b"QUEUED")
            assert _err(cross) == "CROSSSLOT Keys in request don't hash to the same slot"
            assert _err(execed) == "EXECABORT Transaction discarded because of previous errors."
            assert await client.call("EXISTS", "{a}1") == 0
            # One slot: it runs.
            client.send(("MULTI",), ("SET", "{a}1", "x"), ("GET", "{a}1"), ("EXEC",))
            assert (await client.read(4))[3] == [b"OK", b"x"]
            # A redirect inside MULTI dooms it too.
            await _push(admin, topology_command(moved_view, me, "", NO_PRIMARY))
            client.send(("MULTI",), ("SET", moved, "x"), ("EXEC",))
            _, refused, execed = await client.read(3)
            assert _err(refused).startswith("MOVED ")
            assert _err(execed).startswith("EXECABORT")

    run(scenario)


# ---- CLUSTER ----------------------------------------------------------------------------------


def test_cluster_replies_are_the_front_doors_byte_for_byte_in_resp2_and_resp3() -> None:
    view = _view()
    me = Me("n0", 0, "10.0.0.1:6379", 3)
    n0, n1 = cluster_node_id("n0"), cluster_node_id("n1")
    commands = [
        ["CLUSTER", "SLOTS"], ["CLUSTER", "SHARDS"], ["CLUSTER", "NODES"], ["CLUSTER", "INFO"],
        ["CLUSTER", "MYID"], ["CLUSTER", "MYSHARDID"], ["CLUSTER", "REPLICAS", n0], ["CLUSTER", "SLAVES", n1],
        ["CLUSTER", "REPLICAS", "nosuchnode"], ["CLUSTER", "REPLICAS"], ["CLUSTER", "KEYSLOT", "{user}1"],
        ["CLUSTER", "KEYSLOT"], ["CLUSTER", "NoSuchSub"], ["CLUSTER"], ["cluster", "slots"],
    ]

    async def compare(raw: RawConn, current: ClusterView) -> None:
        for resp3 in (False, True):
            await raw.call("HELLO", "3" if resp3 else "2")
            for command in commands:
                expected = cluster_command(current, me, [c.encode() for c in command], resp3)
                assert await raw.call(*command) == expected, (command, resp3)

    async def scenario() -> None:
        async with valkey() as path:
            admin, raw = await Conn.open(path), await RawConn.open(path)
            await _push(admin, topology_command(view, me, "10.0.0.1:6379", NO_PRIMARY))
            await compare(raw, view)
            unknown = ClusterView()
            await _push(admin, topology_command(unknown, me, "", NO_PRIMARY))
            await compare(raw, unknown)
            raw.close()

    run(scenario)


def test_keys_in_a_slot_are_counted_and_listed_from_the_selected_database() -> None:
    view = _view(1, {0: "10.0.0.1:6379"})
    me = Me("n0", 0, "10.0.0.1:6379", 3)
    slot = key_hash_slot(b"{s}")

    async def scenario() -> None:
        async with valkey() as path, attached_tap(path, auto=True):
            admin, client = await Conn.open(path), await Conn.open(path)
            await _primary(admin, view, me)
            assert await client.call("MSET", *[a for i in range(30) for a in (f"{{s}}{i}", "v")]) == b"OK"
            assert await client.call("SET", "other", "v") == b"OK"
            assert await client.call("CLUSTER", "COUNTKEYSINSLOT", slot) == 30
            keys = await client.call("CLUSTER", "GETKEYSINSLOT", slot, 100)
            assert sorted(keys) == sorted(f"{{s}}{i}".encode() for i in range(30))
            assert len(await client.call("CLUSTER", "GETKEYSINSLOT", slot, 7)) == 7
            assert await client.call("CLUSTER", "GETKEYSINSLOT", slot, 0) == []
            assert await client.call("SELECT", 1) == b"OK"
            assert await client.call("CLUSTER", "COUNTKEYSINSLOT", slot) == 0
            out_of_range = await client.call("CLUSTER", "COUNTKEYSINSLOT", 16384)
            assert _err(out_of_range) == "ERR Invalid or out of range slot"
            negative = await client.call("CLUSTER", "GETKEYSINSLOT", slot, -1)
            assert _err(negative) == "ERR Invalid number of keys"
            assert _err(await client.call("CLUSTER", "GETKEYSINSLOT", slot)) == (
                "ERR wrong number of arguments for 'cluster|getkeysinslot' command"
            )

    run(scenario)


def test_a_queued_cluster_reply_survives_the_next_push_and_pushes_leak_nothing() -> None:
    view = _view()
    me = Me("n0", 0, "10.0.0.1:6379", 3)

    async def scenario() -> None:
        async with valkey() as path, attached_tap(path) as tap:
            admin, client = await Conn.open(path), await RawConn.open(path)
            await _primary(admin, view, me)
            client.send(("SET", _key(view, 0), "v"), ("CLUSTER", "NODES"))
            await tap.wait_for_command(b"SET")
            other = _view(3, {0: "10.0.0.1:6379", 1: "10.0.0.9:6379", 2: "10.0.0.3:6379"})
            command = topology_command(other, me, "10.0.0.1:6379", NO_PRIMARY)
            await _push(admin, command)  # replaces the replies while one waits in the queue
            tap.ack()
            nodes = cluster_command(view, me, [b"CLUSTER", b"NODES"], False)
            assert await client.read(2) == [b"+OK\r\n", nodes]
            now = cluster_command(other, me, [b"CLUSTER", b"NODES"], False)
            assert await client.call("CLUSTER", "NODES") == now
            client.close()
            # Many pushes: the module's memory stays flat.
            for _ in range(50):
                await _push(admin, command)
            before = _used_memory(await admin.call("INFO", "memory"))
            for _ in range(300):
                await _push(admin, command)
            after = _used_memory(await admin.call("INFO", "memory"))
            assert after - before < 256 * 1024, (before, after)

    run(scenario)


def _used_memory(info: bytes) -> int:
    fields = dict(line.split(":", 1) for line in info.decode().splitlines() if ":" in line)
    grown = int(fields["mem_replication_backlog"]) + int(fields["mem_clients_slaves"])
    return int(fields["used_memory"]) - grown


# ---- the node's own connection, and TCP clients ----------------------------------------------------


def test_internal_is_refused_over_tcp_and_honoured_over_the_unix_socket() -> None:
    view = _view(1, {0: "10.0.0.1:6379"})
    me = Me("n0", 0, "10.0.0.1:6379", 3)

    async def scenario() -> None:
        with free_port() as port:
            async with valkey("--port", str(port), "--bind", "127.0.0.1") as path:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                tcp = Conn(reader, writer)
                assert _err(await tcp.call("ENGRAM.INTERNAL")).startswith(
                    "ERR engram: ENGRAM.INTERNAL is accepted only over Valkey's unix socket"
                )
                for command in (("ENGRAM.ROLE", "replica"), ("ENGRAM.LEASE", 0), ("ENGRAM.STEPDOWN", "x"),
                                ("ENGRAM.TOPOLOGY", "SHARD", 0, "SLOTS", "UNKNOWN")):
                    assert "accepted only from the node" in _err(await tcp.call(*command))
                node = await Conn.open(path)
                await _primary(node, view, me)
                await _push(node, ["ENGRAM.LEASE", 0])
                assert _err(await tcp.call("SET", "k", "v")) == f"TRYAGAIN {LEASE_EXPIRED}"
                # The node's connection: no checks, and no replica to wait for.
                assert await node.call("ENGRAM.INTERNAL") == b"OK"
                assert await node.call("SET", "k", "v") == b"OK"
                assert await node.call("GET", "k") == b"v"
                tcp.close()

    run(scenario)


def test_a_network_client_cannot_become_the_replica_link_or_repoint_valkey() -> None:
    """Acks of the replica link release held replies: only the node's tap, on the unix socket, may be it."""
    view = _view(1, {0: "10.0.0.1:6379"})
    me = Me("n0", 0, "10.0.0.1:6379", 3)

    async def scenario() -> None:
        with free_port() as port:
            # Module arguments follow --loadmodule's path: managed, as the engine runs it.
            async with valkey("managed", "1", "--port", str(port), "--bind", "127.0.0.1") as path:
                node = await Conn.open(path)
                await _primary(node, view, me)
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                intruder = Conn(reader, writer)
                for command in (("PSYNC", "?", "-1"), ("SYNC",)):
                    assert _err(await intruder.call(*command)).startswith(
                        "ERR engram: replication is served only to the node's journal tap"
                    )
                for command in (("REPLICAOF", "127.0.0.1", "1"), ("SLAVEOF", "127.0.0.1", "1")):
                    assert _err(await intruder.call(*command)).startswith("ERR engram: this Valkey's role")
                assert b"role:master" in await node.call("INFO", "replication")
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                client = Conn(reader, writer)
                client.send(("SET", "held", "v"))
                # Far past any offset: were the intruder believed, this would release the SET.
                intruder.send(("REPLCONF", "ACK", "999999999"))  # Valkey never answers an ACK
                assert await intruder.call("PING") == b"PONG"
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(client.read(1), 0.5)
                info = (await node.call("ENGRAM.INFO")).decode()
                assert "committed_offset:0\r\n" in info or "committed_offset:-1\r\n" in info, info
                intruder.close()
                client.close()

    run(scenario)


def test_redis_py_cluster_client_works_against_one_module_loaded_valkey() -> None:
    from redis.cluster import RedisCluster

    async def scenario() -> None:
        with free_port() as port:
            address = f"127.0.0.1:{port}"
            view = _view(1, {0: address})
            view.nodes.pop("n0b")
            me = Me("n0", 0, address, 3)
            tcp = ("--port", str(port), "--bind", "127.0.0.1")
            async with valkey(*tcp) as path, attached_tap(path, auto=True):
                node = await Conn.open(path)
                await _primary(node, view, me)

                def use() -> list[Any]:
                    client = RedisCluster(host="127.0.0.1", port=port, socket_timeout=DEADLINE)
                    try:
                        client.set("greeting", "hello")
                        client.mset_nonatomic({"a": "1", "b": "2", "c": "3"})
                        return [client.get("greeting"), client.mget_nonatomic(["a", "b", "c"]),
                                client.keyslot("greeting"), len(client.get_nodes())]
                    finally:
                        client.close()

                got = await asyncio.get_running_loop().run_in_executor(None, use)
                assert got == [b"hello", [b"1", b"2", b"3"], key_hash_slot(b"greeting"), 1]

    run(scenario)
