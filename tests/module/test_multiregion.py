"""Multi-region mode: the module applies stamped writes as lww.py says, and stamps local writes."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hiredis
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engram import binaries
from engram.multiregion.lww import Kind, Stamp, Store, Visible, Write, resolve, resolve_deadline
from engram.snapshots.scratch import RDB_FILE, ScratchValkey
from engram.valkey.process import start_valkey
from tests.module.harness import Conn, attached_tap, free_port, run, valkey

pytestmark = pytest.mark.integration

REGION = ("region", "west", "--enable-debug-command", "yes")


def apply_command(write: Write) -> tuple[Any, ...]:
    """The ENGRAM.MR.APPLY that carries a write."""
    head = ("ENGRAM.MR.APPLY", write.stamp.hlc, write.stamp.region, write.kind.value, write.key)
    if write.kind == Kind.NONE:
        return head
    if write.delta is not None:
        return ("ENGRAM.MR.APPLY", write.stamp.hlc, write.stamp.region, "add", write.key, write.delta)
    if write.kind == Kind.STRING:
        return (*head, write.value) if write.deadline is None else (*head, write.value, write.deadline)
    put: list[Any] = []
    for member, value in write.put.items():
        if write.kind == Kind.SET:
            put.append(member)
        else:
            put += [member, repr(value) if write.kind == Kind.ZSET else value]
    return (*head, len(write.put), *put, *sorted(write.remove))


async def visible(conn: Conn, key: bytes) -> Visible:
    """What a reader of the key sees, in lww's terms."""
    kind = await conn.call("TYPE", key)
    if kind == b"none":
        return None
    if kind == b"string":
        return (Kind.STRING, await conn.call("GET", key))
    if kind == b"hash":
        flat = await conn.call("HGETALL", key)
        return (Kind.HASH, dict(zip(flat[::2], flat[1::2], strict=True)))
    if kind == b"set":
        return (Kind.SET, frozenset(await conn.call("SMEMBERS", key)))
    flat = await conn.call("ZRANGE", key, 0, -1, "WITHSCORES")
    return (Kind.ZSET, {m: float(s) for m, s in zip(flat[::2], flat[1::2], strict=True)})


async def info(conn: Conn, command: str = "ENGRAM.MR.INFO") -> dict[str, str]:
    text = (await conn.call(command)).decode()
    return dict(line.split(":", 1) for line in text.split("\r\n") if line)


async def apply_all(conn: Conn, writes: list[Write]) -> None:
    conn.send(*(apply_command(w) for w in writes))
    replies = await conn.read(len(writes))
    assert replies == [b"OK"] * len(writes)


# ---- Stamped writes applied in any order end as lww.resolve says -------------------------------

KEYS = (b"a", b"b")
FAR = 4_000_000_000_000  # a deadline (unix ms) in 2096: nothing expires during a test
REGIONS = ("east", "north", "west")
MEMBERS = (b"f1", b"f2", b"f3")


@st.composite
def writes(draw: st.DrawFn) -> list[Write]:
    out: dict[tuple[bytes, Stamp], Write] = {}
    for _ in range(draw(st.integers(1, 14))):
        key = draw(st.sampled_from(KEYS))
        # Few clock values: equal clocks from two regions, and writes that arrive out of order.
        stamp = Stamp(draw(st.integers(1, 12)), draw(st.sampled_from(REGIONS)))
        kind = draw(st.sampled_from(list(Kind)))
        if kind == Kind.NONE:
            write = Write(key, stamp, kind)
        elif kind == Kind.STRING and draw(st.booleans()):
            write = Write(key, stamp, kind, delta=draw(st.sampled_from([-3, 1, 5, 2**62])))  # an increment
        elif kind == Kind.STRING:
            write = Write(key, stamp, kind, value=draw(st.sampled_from([b"x", b"7", b"-2"])),
                          deadline=draw(st.sampled_from([None, FAR, FAR + 1000])))
        else:
            fate = draw(st.lists(st.sampled_from(["put", "remove", None]), min_size=3, max_size=3))
            if fate == [None, None, None]:
                fate[0] = "remove"
            value = st.sampled_from([1.5, -2.0, 3.25] if kind == Kind.ZSET else [b"", b"1", b"2"])
            put = {m: (b"" if kind == Kind.SET else draw(value)) for m, f in zip(MEMBERS, fate, strict=True)
                   if f == "put"}
            write = Write(key, stamp, kind, put=put,
                          remove=frozenset(m for m, f in zip(MEMBERS, fate, strict=True) if f == "remove"))
        out[(key, stamp)] = write  # a region stamps one write per key with one stamp
    return list(out.values())


class Servers:
    """Two region-mode servers on one event loop, kept for a whole module of examples."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.stack = contextlib.AsyncExitStack()
        self.conns: list[Conn] = []
        self.round = 0

    async def _start(self) -> None:
        for _ in range(2):
            socket = await self.stack.enter_async_context(valkey(*REGION))
            await self.stack.enter_async_context(attached_tap(socket, auto=True))
            self.conns.append(await Conn.open(socket))

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(asyncio.wait_for(coro, 30))


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    s = Servers()
    s.run(s._start())
    yield s
    for conn in s.conns:
        conn.close()
    s.run(s.stack.aclose())
    s.loop.close()


@settings(max_examples=200, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(batch=writes(), seed=st.integers(0, 2**32 - 1))
def test_stamped_writes_in_any_order_hold_what_lww_resolves(servers: Servers, batch: list[Write],
                                                             seed: int) -> None:
    servers.round += 1
    prefix = f"{servers.round}:".encode()
    batch = [dataclasses.replace(w, key=prefix + w.key) for w in batch]
    orders = [list(batch), list(batch)]
    for order in orders:
        random.Random(seed).shuffle(order)
        seed += 1

    async def check() -> None:
        for conn, order in zip(servers.conns, orders, strict=True):
            await apply_all(conn, order)
            # Applying the same writes again (an at-least-once applier) changes nothing.
            await apply_all(conn, order[: len(order) // 2])
        for key in KEYS:
            want = resolve(w for w in batch if w.key == prefix + key)
            seen = [await visible(conn, prefix + key) for conn in servers.conns]
            assert seen == [want, want], f"{prefix + key!r}: {seen} != {want}"
            digests = [await conn.call("DEBUG", "DIGEST-VALUE", prefix + key) for conn in servers.conns]
            assert digests[0] == digests[1]
            deadline = resolve_deadline(w for w in batch if w.key == prefix + key)
            held = [await conn.call("PEXPIRETIME", prefix + key) for conn in servers.conns]
            if want is not None:
                assert held == [deadline or -1] * 2, f"{prefix + key!r}: {held} != {deadline}"

    servers.run(check())


def test_stamps_and_tombstones_are_counted_and_collected_as_lww_store_does() -> None:
    rng = random.Random(17)
    store = Store()
    batch: list[Write] = []
    for i in range(300):
        key = f"k{rng.randrange(60)}".encode()
        stamp = Stamp(i + 1, rng.choice(REGIONS))
        kind = rng.choice(list(Kind))
        if kind in (Kind.HASH, Kind.SET, Kind.ZSET):
            members = rng.sample(MEMBERS, rng.randint(1, 3))
            cut = rng.randint(0, len(members))
            value: Any = 1.0 if kind == Kind.ZSET else b"v"
            put = {m: (b"" if kind == Kind.SET else value) for m in members[:cut]}
            batch.append(Write(key, stamp, kind, put=put, remove=frozenset(members[cut:])))
        elif kind == Kind.STRING and rng.random() < 0.5:
            batch.append(Write(key, stamp, kind, delta=rng.randint(-5, 5)))
        else:
            value = rng.choice([b"s", b"10"]) if kind == Kind.STRING else b""
            batch.append(Write(key, stamp, kind, value=value))
    for w in batch:
        store.apply(w)

    def counts() -> dict[str, str]:
        states = store.keys.values()
        return {"stamped_keys": str(len(store.keys)),
                "stamped_elements": str(sum(s.element_count() for s in states)),
                "tombstones": str(sum(s.tombstones() for s in states))}

    async def scenario() -> None:
        async with valkey(*REGION) as socket, attached_tap(socket, auto=True):
            conn = await Conn.open(socket)
            await apply_all(conn, batch)
            got = await info(conn)
            assert {k: got[k] for k in counts()} == counts()
            assert int(got["stamp_bytes"]) > 0
            assert int(got["hlc"]) == 300  # the clock observed every stamp applied
            frontier = Stamp(250, "north")
            dropped = store.collect(frontier)
            assert await conn.call("ENGRAM.MR.COLLECT", frontier.hlc, frontier.region) == dropped > 0
            got = await info(conn)
            assert {k: got[k] for k in counts()} == counts()
            for key in {w.key for w in batch}:
                assert await visible(conn, key) == store.get(key)

    run(scenario)


# ---- MemoryDB's documented examples ---------------------------------------------------------------

def test_memorydb_examples_come_out_as_documented() -> None:
    async def scenario() -> None:
        async with valkey(*REGION) as socket, attached_tap(socket, auto=True):
            conn = await Conn.open(socket)
            # DEL in one region, then a concurrent SADD in another: a set holding only the new member.
            await apply_all(conn, [Write(b"s", Stamp(1, "east"), Kind.SET, put={b"old": b""})])
            await apply_all(conn, [Write(b"s", Stamp(3, "west"), Kind.SET, put={b"new": b""}),
                                   Write(b"s", Stamp(2, "east"), Kind.NONE)])
            assert await visible(conn, b"s") == (Kind.SET, frozenset({b"new"}))
            # SADD, then DEL: the key is deleted, and the older SADD arriving late changes nothing.
            await apply_all(conn, [Write(b"t", Stamp(5, "east"), Kind.NONE),
                                   Write(b"t", Stamp(4, "west"), Kind.SET, put={b"m": b""})])
            assert await visible(conn, b"t") is None
            # A string from one region, then a hash from another: the hash.
            await apply_all(conn, [Write(b"h", Stamp(7, "west"), Kind.HASH, put={b"f": b"1"}),
                                   Write(b"h", Stamp(6, "east"), Kind.STRING, value=b"str")])
            assert await visible(conn, b"h") == (Kind.HASH, {b"f": b"1"})
            # Concurrent HSETs of different fields both survive.
            await apply_all(conn, [Write(b"c", Stamp(9, "east"), Kind.HASH, put={b"a": b"1"}),
                                   Write(b"c", Stamp(9, "west"), Kind.HASH, put={b"b": b"2"})])
            assert await visible(conn, b"c") == (Kind.HASH, {b"a": b"1", b"b": b"2"})
            # The same field, the same clock: the region whose name sorts last wins, in any order.
            await apply_all(conn, [Write(b"c", Stamp(10, "west"), Kind.HASH, put={b"a": b"W"}),
                                   Write(b"c", Stamp(10, "east"), Kind.HASH, put={b"a": b"E"})])
            assert await visible(conn, b"c") == (Kind.HASH, {b"a": b"W", b"b": b"2"})
            # An HDEL newer than a put removes the field; the older put arriving after changes nothing.
            await apply_all(conn, [Write(b"c", Stamp(12, "east"), Kind.HASH, remove=frozenset({b"b"})),
                                   Write(b"c", Stamp(11, "west"), Kind.HASH, put={b"b": b"late"})])
            assert await visible(conn, b"c") == (Kind.HASH, {b"a": b"W"})

    run(scenario)


# ---- Local writes on a region's primary ---------------------------------------------------------

LOCAL = [
    ("SET", "s", "1"), ("INCRBY", "s", "41"), ("INCRBYFLOAT", "f", "1.5"), ("MSET", "m1", "a", "m2", "b"),
    ("GETDEL", "m2"), ("SET", "typed", "string"), ("DEL", "typed"), ("HSET", "typed", "x", "1"),
    ("HSET", "h", "a", "1", "b", "2", "a", "3"), ("HINCRBY", "h", "n", "5"), ("HDEL", "h", "b", "nope"),
    ("SADD", "set", "x", "y", "z"), ("SREM", "set", "y"), ("SPOP", "set", "1"),
    ("ZADD", "z", "1", "a", "2", "b", "3", "c", "4", "d"), ("ZINCRBY", "z", "0.25", "a"), ("ZPOPMAX", "z"),
    ("ZREMRANGEBYSCORE", "z", "2", "3"), ("ZREM", "z", "nope"), ("UNLINK", "m1"),
]

REFUSED = [
    ("LPUSH", "l", "x"), ("XADD", "x", "*", "f", "v"), ("SETBIT", "s", "1", "1"), ("PFADD", "p", "a"),
    ("GEOADD", "g", "1", "1", "m"), ("BLPOP", "l", "0"), ("BZPOPMIN", "z", "0"), ("EXPIRE", "s", "10"),
    ("PERSIST", "s"), ("SET", "s", "2", "EX", "10"), ("SET", "s", "2", "PX", "10"), ("GETEX", "s", "EX", "5"),
    ("SETEX", "s", "10", "v"), ("SUNIONSTORE", "d", "set"), ("ZUNIONSTORE", "d", "1", "z"),
    ("SMOVE", "set", "other", "x"), ("RENAME", "s", "t"), ("APPEND", "s", "x"), ("SETRANGE", "s", "0", "x"),
    ("FLUSHALL",), ("FLUSHDB",), ("MULTI",), ("EVAL", "return redis.call('SET','s','9')", "0"),
    ("COPY", "s", "t"), ("HEXPIRE", "h", "10", "FIELDS", "1", "a"),
]


def test_local_writes_replicate_stamped_effects_a_second_server_reproduces() -> None:
    async def scenario() -> None:
        async with valkey(*REGION) as first, attached_tap(first, auto=True) as tap, valkey(*REGION) as second:
            conn = await Conn.open(first)
            conn.send(*LOCAL)
            replies = await conn.read(len(LOCAL))
            assert not [r for r in replies if isinstance(r, hiredis.ReplyError)]
            # Every reply waited for the tap's acknowledgement: the stream holds every effect.
            stream = [c.args for c in tap.commands if c.args[0].lower() != b"ping"]
            applied = [a for a in stream if a[0] == b"ENGRAM.MR.APPLY"]
            # Only stamped effects replicate, never the commands themselves.
            assert {a[0] for a in stream} <= {b"ENGRAM.MR.APPLY", b"SELECT", b"MULTI", b"EXEC"}
            # INCRBY replicates the value it left, not the increment.
            assert [b"west", b"string", b"s", b"42"] == applied[1][2:]
            # SPOP and ZPOPMAX replicate what they removed.
            spop = [a for a in applied if a[4] == b"set" and a[5] == b"0"][-1]
            assert (await conn.call("SISMEMBER", "set", spop[6])) == 0
            assert [b"zset", b"z", b"0", b"d"] == next(a for a in applied if a[5:] == [b"0", b"d"])[3:]
            stamps = [int(a[1]) for a in applied]
            assert stamps == sorted(stamps)
            # The stream, fed to another region-mode server as a replica is fed, ends identical.
            replica = await Conn.open(second)
            assert await replica.call("ENGRAM.INTERNAL") == b"OK"  # the node's connection, as a replica's
            replica.send(*stream)
            assert not [r for r in await replica.read(len(stream)) if isinstance(r, hiredis.ReplyError)]
            for key in ("s", "f", "m1", "m2", "typed", "h", "set", "z"):
                assert await visible(replica, key.encode()) == await visible(conn, key.encode()), key
            assert await replica.call("DEBUG", "DIGEST") == await conn.call("DEBUG", "DIGEST")
            mine, theirs = await info(conn), await info(replica)
            for field in ("stamped_keys", "stamped_elements", "tombstones", "hlc"):
                assert mine[field] == theirs[field], field

    run(scenario)


def test_commands_that_cannot_merge_are_refused_by_name_and_change_nothing() -> None:
    async def scenario() -> None:
        async with valkey(*REGION) as socket, attached_tap(socket, auto=True) as tap:
            conn = await Conn.open(socket)
            conn.send(("SET", "s", "1"), ("HSET", "h", "a", "1"), ("SADD", "set", "x"),
                      ("ZADD", "z", "1", "m"))
            await conn.read(4)
            before = await conn.call("DEBUG", "DIGEST")
            applied = len(tap.commands)
            for command in REFUSED:
                reply = await conn.call(*command)
                assert isinstance(reply, hiredis.ReplyError), command
                assert f"ERR engram: {command[0]}" in str(reply) and "multi-region" in str(reply), reply
            assert await conn.call("DEBUG", "DIGEST") == before
            assert await conn.call("PING") == b"PONG"
            assert not [c for c in tap.commands[applied:] if c.args[0].lower() != b"ping"]

    run(scenario)


def test_stamped_writes_are_accepted_only_from_the_node() -> None:
    async def scenario() -> None:
        with free_port() as port:
            async with valkey(*REGION, "--port", str(port)) as socket, attached_tap(socket, auto=True):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                remote = Conn(reader, writer)
                forged = apply_command(Write(b"k", Stamp(2**51, "east"), Kind.STRING, value=b"forged"))
                reply = await remote.call(*forged)
                assert isinstance(reply, hiredis.ReplyError) and "only from the node" in str(reply)
                reply = await remote.call("ENGRAM.MR.COLLECT", 2**51, "east")
                assert isinstance(reply, hiredis.ReplyError) and "only from the node" in str(reply)
                assert await remote.call("EXISTS", "k") == 0
                remote.close()
                # The node's own socket is the durable path's.
                local = await Conn.open(socket)
                assert await local.call(*forged) == b"OK"

    run(scenario)


def test_a_node_without_a_region_stamps_nothing_yet_replays_a_regions_stamped_writes() -> None:
    async def scenario() -> None:
        async with valkey() as socket, attached_tap(socket, auto=True) as tap:
            conn = await Conn.open(socket)
            assert await conn.call("LPUSH", "l", "x") == 1
            assert await conn.call("SET", "s", "1", "EX", "100") == b"OK"
            await tap.wait_for_command(b"lpush")
            assert not [c for c in tap.commands if c.args[0] == b"ENGRAM.MR.APPLY"]
            assert (await info(conn))["stamped_keys"] == "0"
            # A snapshot's scratch Valkey, which has no region, replays a region's journal.
            await apply_all(conn, [Write(b"k", Stamp(2, "east"), Kind.STRING, value=b"v"),
                                   Write(b"k", Stamp(1, "west"), Kind.STRING, value=b"older")])
            assert await visible(conn, b"k") == (Kind.STRING, b"v")

    run(scenario)


def test_stamps_survive_a_reload_and_the_clock_starts_above_them() -> None:
    async def scenario() -> None:
        async with valkey(*REGION) as socket, attached_tap(socket, auto=True) as tap:
            conn = await Conn.open(socket)
            future = 2**51 + 10  # far above the wall clock: only the stamps can carry the clock there
            await apply_all(conn, [Write(b"s", Stamp(future, "east"), Kind.STRING, value=b"new"),
                                   Write(b"h", Stamp(future, "east"), Kind.HASH, put={b"a": b"1"},
                                         remove=frozenset({b"b"})),
                                   Write(b"gone", Stamp(future, "east"), Kind.NONE)])
            before = await info(conn)
            assert await conn.call("DEBUG", "RELOAD") == b"OK"
            after = await info(conn)
            assert after == before
            # Older writes applied after the reload still lose to what the stamps remember.
            await apply_all(conn, [Write(b"s", Stamp(future - 1, "west"), Kind.STRING, value=b"old"),
                                   Write(b"h", Stamp(future - 1, "west"), Kind.HASH, put={b"b": b"late"}),
                                   Write(b"gone", Stamp(future - 1, "west"), Kind.SET, put={b"m": b""})])
            assert await visible(conn, b"s") == (Kind.STRING, b"new")
            assert await visible(conn, b"h") == (Kind.HASH, {b"a": b"1"})
            assert await visible(conn, b"gone") is None
            # A local write after the reload is stamped above everything it loaded.
            assert await conn.call("SET", "s", "local") == b"OK"
            await tap.wait_for_stream(lambda cs: any(c.args[-1:] == [b"local"] for c in cs))
            stamp = next(c.args for c in tap.commands if c.args[-1:] == [b"local"])[1]
            assert int(stamp) > future

    run(scenario)


def test_pops_replicate_the_members_they_removed_in_either_protocol() -> None:
    async def scenario() -> None:
        async with valkey(*REGION) as socket, attached_tap(socket, auto=True) as tap:
            for protocol in ("2", "3"):
                conn = await Conn.open(socket)
                await conn.call("HELLO", protocol)
                conn.send(("SADD", "s", "x", "y", "z"), ("SPOP", "s", "2"), ("SPOP", "s"),
                          ("ZADD", "z", "1", "a", "2", "b", "3", "c"), ("ZPOPMIN", "z", "2"),
                          ("ZPOPMAX", "z"))
                replies = await conn.read(6)
                effects = [c.args[3:] for c in tap.commands[-6:]]
                assert effects[1] == [b"set", b"s", b"0", *replies[1]]
                assert effects[2] == [b"set", b"s", b"0", replies[2]]
                assert effects[4] == [b"zset", b"z", b"0", b"a", b"b"]
                assert effects[5] == [b"zset", b"z", b"0", b"c"]
                assert await conn.call("EXISTS", "s", "z") == 0
                conn.close()

    run(scenario)


SAVED = [Write(b"s", Stamp(100, "east"), Kind.STRING, value=b"new"),
         Write(b"h", Stamp(100, "east"), Kind.HASH, put={b"a": b"1"}, remove=frozenset({b"b"}))]
LATE = [Write(b"h", Stamp(99, "west"), Kind.HASH, put={b"b": b"late"}),
        Write(b"s", Stamp(99, "west"), Kind.STRING, value=b"old")]


def test_a_restart_from_the_rdb_keeps_the_stamps_and_any_node_can_load_them() -> None:
    async def scenario() -> None:
        directory = Path(tempfile.mkdtemp(prefix="egmr-", dir="/tmp"))
        socket = str(directory / "v.sock")
        try:
            for region in ("west", "west", ""):
                args = ["--loadmodule", binaries.valkey_module(), *(["region", region] if region else [])]
                proc = await start_valkey(socket, str(directory), args)
                try:
                    async with attached_tap(socket, auto=True):
                        conn = await Conn.open(socket)
                        if not (directory / "dump.rdb").exists():
                            await apply_all(conn, SAVED)
                            saved = await info(conn)
                            assert await conn.call("SAVE") == b"OK"
                            continue
                        assert await info(conn) == {**saved, "region": region}
                        assert await visible(conn, b"h") == (Kind.HASH, {b"a": b"1"})
                        if region:  # the restarted region node: an older write still loses
                            await apply_all(conn, LATE)
                            assert await visible(conn, b"h") == (Kind.HASH, {b"a": b"1"})
                            assert await visible(conn, b"s") == (Kind.STRING, b"new")
                        conn.close()
                finally:
                    proc.kill()
                    proc.wait()
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    run(scenario)


def test_data_from_before_region_mode_ends_alike_on_the_primary_and_its_replica() -> None:
    async def scenario() -> None:
        async with valkey(*REGION) as first, attached_tap(first, auto=True) as tap, \
                valkey(*REGION) as second:
            primary, replica = await Conn.open(first), await Conn.open(second)
            for conn in (primary, replica):  # the same unstamped data on both, as a loaded RDB gives
                assert await conn.call("ENGRAM.INTERNAL") == b"OK"
                conn.send(("HSET", "h", "a", "1", "b", "2"), ("SADD", "s", "x"), ("SET", "t", "v"))
                await conn.read(3)
            client = await Conn.open(first)
            client.send(("HSET", "h", "a", "9"), ("SADD", "s", "y"), ("HSET", "t", "f", "1"))
            replies = await client.read(3)
            assert replies[:2] == [0, 1] and isinstance(replies[2], hiredis.ReplyError)
            stream = [c.args for c in tap.commands if c.args[0].lower() != b"ping"]
            replica.send(*stream)
            await replica.read(len(stream))
            assert await visible(replica, b"h") == (Kind.HASH, {b"a": b"9", b"b": b"2"})
            assert await replica.call("DEBUG", "DIGEST") == await primary.call("DEBUG", "DIGEST")

    run(scenario)


def test_a_region_snapshot_is_rehearsed_in_a_frozen_scratch_valkey() -> None:
    async def scenario() -> None:
        work = Path(tempfile.mkdtemp(prefix="egmr-", dir="/tmp"))
        try:
            async with valkey(*REGION, "--dir", str(work), "--dbfilename", RDB_FILE) as socket, \
                    attached_tap(socket, auto=True):
                conn = await Conn.open(socket)
                await apply_all(conn, SAVED)
                assert await conn.call("SET", "local", "1") == b"OK"
                assert await conn.call("SAVE") == b"OK"
                digest, stamps = await conn.call("DEBUG", "DIGEST"), await info(conn)
            scratch = ScratchValkey(str(work), frozen=True)
            await scratch.start()
            try:
                assert (await scratch.digest()).encode() == digest
                text = (await scratch.conn.execute("ENGRAM.MR.INFO")).decode()  # type: ignore[union-attr]
                assert "stamped_keys:" + stamps["stamped_keys"] in text
            finally:
                await scratch.stop()
        finally:
            shutil.rmtree(work, ignore_errors=True)

    run(scenario)


def test_two_regions_writing_concurrently_converge_once_each_applies_the_others_stream() -> None:
    east_writes = [("SET", "k", "east"), ("INCRBY", "n", "5"), ("HSET", "h", "a", "1"), ("SADD", "s", "x"),
                   ("ZADD", "z", "1", "m"), ("DEL", "gone")]
    west_writes = [("SET", "gone", "w"), ("INCRBY", "n", "7"), ("HSET", "h", "b", "2"), ("SADD", "s", "y"),
                   ("ZADD", "z", "2", "m"), ("SET", "k", "west")]

    async def scenario() -> None:
        async with valkey("region", "east", "--enable-debug-command", "yes") as east, \
                attached_tap(east, auto=True) as east_tap, \
                valkey("region", "west", "--enable-debug-command", "yes") as west, \
                attached_tap(west, auto=True) as west_tap:
            conns = {"east": await Conn.open(east), "west": await Conn.open(west)}
            # Concurrent: each region writes before it sees anything of the other's.
            for region, batch in (("east", east_writes), ("west", west_writes)):
                conns[region].send(*batch)
                replies = await conns[region].read(len(batch))
                assert not [r for r in replies if isinstance(r, hiredis.ReplyError)]
            streams = {region: [c.args for c in tap.commands if c.args[:1] == [b"ENGRAM.MR.APPLY"]
                                and c.args[2] == region.encode()]
                       for region, tap in (("east", east_tap), ("west", west_tap))}
            for source, destination in (("east", "west"), ("west", "east")):
                conns[destination].send(*streams[source])
                assert await conns[destination].read(len(streams[source])) == [b"OK"] * len(streams[source])
            assert await conns["east"].call("DEBUG", "DIGEST") == await conns["west"].call("DEBUG", "DIGEST")
            for conn in conns.values():
                # A counter holds one region's result, not their sum; different fields both survive.
                assert await conn.call("GET", "n") in (b"5", b"7")
                assert await visible(conn, b"h") == (Kind.HASH, {b"a": b"1", b"b": b"2"})
                assert await visible(conn, b"s") == (Kind.SET, frozenset({b"x", b"y"}))
                assert await conn.call("GET", "k") == b"west"  # west wrote k later
                assert await conn.call("GET", "gone") == b"w"  # west's SET came after east's DEL

    run(scenario)


# ---- Additive counters (module argument counters <glob>) ---------------------------------------

COUNTERS = ("counters", "n:*", "counters", "hits:[ab]?")
COUNTER_REGION = ("region", "west", *COUNTERS, "--enable-debug-command", "yes")


def test_increments_of_an_additive_counter_replicate_as_increments_and_regions_add_them() -> None:
    async def scenario() -> None:
        async with valkey("region", "east", *COUNTERS, "--enable-debug-command", "yes") as east, \
                attached_tap(east, auto=True) as east_tap, \
                valkey("region", "west", *COUNTERS, "--enable-debug-command", "yes") as west, \
                attached_tap(west, auto=True) as west_tap, \
                valkey("region", "west", *COUNTERS, "--enable-debug-command", "yes") as west_replica:
            conns = {"east": await Conn.open(east), "west": await Conn.open(west)}
            batches = {
                "east": [("SET", "n:a", "100"), ("INCRBY", "n:a", "5"), ("INCR", "hits:a1"),
                         ("INCRBY", "other", "5"), ("DECRBY", "n:b", "3")],
                "west": [("INCRBY", "n:a", "7"), ("DECR", "n:a"), ("INCRBY", "hits:a1", "10"),
                         ("INCRBY", "other", "7"), ("SET", "n:b", "abc")],
            }
            # Concurrent: each region writes before it sees anything of the other's.
            for region, batch in batches.items():
                conns[region].send(*batch)
                replies = await conns[region].read(len(batch))
                assert not [r for r in replies if isinstance(r, hiredis.ReplyError)], replies
            streams = {region: [c.args for c in tap.commands if c.args[:1] == [b"ENGRAM.MR.APPLY"]]
                       for region, tap in (("east", east_tap), ("west", west_tap))}
            # A counter's increment replicates as itself; a key no pattern matches, as its value.
            assert [b"add", b"n:a", b"5"] == streams["east"][1][3:]
            assert [b"add", b"n:a", b"-1"] == streams["west"][1][3:]
            assert [b"add", b"n:b", b"-3"] == streams["east"][4][3:]
            assert [b"string", b"other", b"5"] == streams["east"][3][3:]
            for source, destination in (("east", "west"), ("west", "east")):
                conns[destination].send(*streams[source])
                assert await conns[destination].read(len(streams[source])) == [b"OK"] * len(streams[source])
            assert await conns["east"].call("DEBUG", "DIGEST") == await conns["west"].call("DEBUG", "DIGEST")
            for conn in conns.values():
                # West's increments were stamped before east's SET: only east's own counts after it.
                assert await conn.call("GET", "n:a") in (b"105", b"111")
                assert await conn.call("GET", "hits:a1") == b"11"  # both regions' increments
                assert await conn.call("GET", "other") in (b"5", b"7")  # last writer wins
                assert await conn.call("GET", "n:b") in (b"abc", b"-3")
            # West's own stream, replayed as its replica is fed, ends as west did.
            replica = await Conn.open(west_replica)
            assert await replica.call("ENGRAM.INTERNAL") == b"OK"
            stream = [c.args for c in west_tap.commands if c.args[0].lower() != b"ping"]
            replica.send(*stream)
            assert not [r for r in await replica.read(len(stream)) if isinstance(r, hiredis.ReplyError)]
            assert await replica.call("DEBUG", "DIGEST") == await conns["west"].call("DEBUG", "DIGEST")
            counted = [(await info(c))["stamped_elements"] for c in (replica, conns["west"])]
            assert counted[0] == counted[1]

    run(scenario)


def test_incrbyfloat_on_an_additive_counter_is_refused_and_changes_nothing() -> None:
    async def scenario() -> None:
        async with valkey(*COUNTER_REGION) as socket, attached_tap(socket, auto=True):
            conn = await Conn.open(socket)
            assert await conn.call("INCRBY", "n:x", "2") == 2
            reply = await conn.call("INCRBYFLOAT", "n:x", "1.5")
            assert isinstance(reply, hiredis.ReplyError)
            assert "INCRBYFLOAT is refused on an additive counter" in str(reply), reply
            assert await conn.call("GET", "n:x") == b"2"
            assert await conn.call("INCRBYFLOAT", "plain", "1.5") == b"1.5"  # not a counter: LWW

    run(scenario)


def test_a_counters_pending_increments_survive_a_reload_and_still_decide_later_writes() -> None:
    late_set = Write(b"n:r", Stamp(15, "west"), Kind.STRING, value=b"1000")

    async def scenario() -> None:
        async with valkey(*COUNTER_REGION) as socket, attached_tap(socket, auto=True):
            conn = await Conn.open(socket)
            await apply_all(conn, [Write(b"n:r", Stamp(10, "east"), Kind.STRING, value=b"1"),
                                   Write(b"n:r", Stamp(20, "east"), Kind.STRING, delta=2),
                                   Write(b"n:r", Stamp(30, "north"), Kind.STRING, delta=4)])
            before = await info(conn)
            assert await conn.call("DEBUG", "RELOAD") == b"OK"
            assert await info(conn) == before
            # A set between the first set and the increments, arriving late, still counts them.
            await apply_all(conn, [late_set])
            assert await conn.call("GET", "n:r") == b"1006"
            # Collected behind a frontier, the value stays and a later set still wins over it.
            await conn.call("ENGRAM.MR.COLLECT", 30, "zz")
            assert (await info(conn))["stamped_elements"] == "0"
            await apply_all(conn, [Write(b"n:r", Stamp(31, "west"), Kind.STRING, delta=1)])
            assert await conn.call("GET", "n:r") == b"1007"

    run(scenario)


# ---- Converging TTLs (module argument ttls <glob>) ---------------------------------------------

TTLS = ("ttls", "t:*")


def _expiry_deletes_of(commands: list[Any], key: bytes) -> list[list[bytes]]:
    """The stamped deletes of a key among a region's replicated commands."""
    return [c.args for c in commands if c.args[:1] == [b"ENGRAM.MR.APPLY"] and c.args[3:] == [b"none", key]]


def _expiry_deletes(tap: Any, key: bytes) -> list[list[bytes]]:
    return _expiry_deletes_of(tap.commands, key)


async def _gone(conn: Conn, key: str, within: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while await conn.call("EXISTS", key):
        assert asyncio.get_running_loop().time() < deadline, f"{key} never expired"
        await asyncio.sleep(0.05)


def test_a_ttl_set_in_one_region_expires_in_every_region_as_a_delete_at_its_deadline() -> None:
    async def scenario() -> None:
        async with valkey("region", "east", *TTLS, "--enable-debug-command", "yes") as east, \
                attached_tap(east, auto=True) as east_tap, \
                valkey("region", "west", *TTLS, "--enable-debug-command", "yes") as west, \
                attached_tap(west, auto=True) as west_tap:
            conns = {"east": await Conn.open(east), "west": await Conn.open(west)}
            assert await conns["east"].call("SET", "t:a", "v", "PX", "600") == b"OK"
            [write] = [c.args for c in east_tap.commands if c.args[:1] == [b"ENGRAM.MR.APPLY"]]
            assert write[3:6] == [b"string", b"t:a", b"v"]
            deadline = int(write[6])
            assert deadline == await conns["east"].call("PEXPIRETIME", "t:a")
            # The other region holds the same deadline as the key's TTL.
            assert await conns["west"].call(*write) == b"OK"
            assert await conns["west"].call("PEXPIRETIME", "t:a") == deadline
            # Each region deletes it when the deadline passes, with a delete stamped at the deadline.
            for region, tap in (("east", east_tap), ("west", west_tap)):
                await _gone(conns[region], "t:a")
                await tap.wait_for_stream(lambda cs: bool(_expiry_deletes_of(cs, b"t:a")))
                [delete] = _expiry_deletes(tap, b"t:a")
                assert delete[1:3] == [str(deadline * 1000).encode(), region.encode()]
            # A write after the deadline starts the key afresh; an older one arriving late loses to
            # the expiry, in both regions.
            late = Write(b"t:a", Stamp(deadline * 1000 - 5000, "north"), Kind.STRING, value=b"late")
            await apply_all(conns["west"], [late])
            assert await conns["west"].call("EXISTS", "t:a") == 0
            assert await conns["east"].call("SET", "t:a", "new") == b"OK"
            fresh = [c.args for c in east_tap.commands if c.args[-1:] == [b"new"]]
            assert await conns["west"].call(*fresh[0]) == b"OK"
            for region, other in (("east", "west"), ("west", "east")):
                for delete in _expiry_deletes(west_tap if other == "west" else east_tap, b"t:a"):
                    assert await conns[region].call(*delete) == b"OK"
            for conn in conns.values():
                assert await conn.call("GET", "t:a") == b"new"
                assert await conn.call("PEXPIRETIME", "t:a") == -1
            assert await conns["east"].call("DEBUG", "DIGEST") == await conns["west"].call("DEBUG", "DIGEST")

    run(scenario)


def test_a_set_whose_deadline_passed_before_it_arrived_is_deleted_at_once() -> None:
    async def scenario() -> None:
        async with valkey("region", "west", *TTLS) as socket, attached_tap(socket, auto=True) as tap:
            conn = await Conn.open(socket)
            now_ms = int(float(b".".join(await conn.call("TIME"))) * 1000)
            old = Write(b"t:c", Stamp((now_ms - 2000) * 1000, "east"), Kind.STRING, value=b"v",
                        deadline=now_ms - 1000)
            await apply_all(conn, [old])
            assert await conn.call("EXISTS", "t:c") == 0
            await tap.wait_for_stream(lambda cs: bool(_expiry_deletes_of(cs, b"t:c")))
            assert _expiry_deletes(tap, b"t:c")[0][1:3] == [str((now_ms - 1000) * 1000).encode(), b"west"]

    run(scenario)


def test_ttl_commands_on_a_ttls_key_replicate_the_string_with_its_deadline() -> None:
    async def scenario() -> None:
        async with valkey("region", "west", *TTLS, "--enable-debug-command", "yes") as socket, \
                attached_tap(socket, auto=True) as tap:
            conn = await Conn.open(socket)

            async def effect(*command: Any) -> list[bytes]:
                before = len(tap.commands)
                reply = await conn.call(*command)
                assert not isinstance(reply, hiredis.ReplyError), (command, reply)
                return [a for c in tap.commands[before:] if (a := c.args)[:1] == [b"ENGRAM.MR.APPLY"]][-1:]

            await conn.call("SET", "t:s", "v")
            [expire] = await effect("EXPIRE", "t:s", "100")
            assert expire[3:6] == [b"string", b"t:s", b"v"]
            assert int(expire[6]) == await conn.call("PEXPIRETIME", "t:s")
            [persist] = await effect("PERSIST", "t:s")
            assert persist[3:] == [b"string", b"t:s", b"v"]  # no deadline: the TTL is gone
            [setex] = await effect("SETEX", "t:s", "50", "w")
            assert setex[3:6] == [b"string", b"t:s", b"w"] and len(setex) == 7
            [gone] = await effect("PEXPIREAT", "t:s", "1")  # into the past: a delete
            assert gone[3:] == [b"none", b"t:s"]
            assert await effect("EXPIRE", "t:absent", "10") == []  # nothing to expire, nothing sent
            await conn.call("HSET", "t:h", "f", "1")
            reply = await conn.call("EXPIRE", "t:h", "10")
            assert isinstance(reply, hiredis.ReplyError) and "converges on a string only" in str(reply)
            assert await conn.call("TTL", "t:h") == -1
            reply = await conn.call("EXPIRE", "plain", "10")  # no ttls pattern: refused as before
            assert isinstance(reply, hiredis.ReplyError) and "only on keys of a ttls pattern" in str(reply)
            # The deadline is kept across a reload, and still expires the key as a stamped delete.
            await conn.call("SET", "t:r", "v", "PX", "1500")
            before = await info(conn)
            assert await conn.call("DEBUG", "RELOAD") == b"OK"
            assert await info(conn) == before
            await _gone(conn, "t:r")
            await tap.wait_for_stream(lambda cs: bool(_expiry_deletes_of(cs, b"t:r")))

    run(scenario)
