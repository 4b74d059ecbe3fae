"""ENGRAM.LOADRDB <path>: the node replaces a replica's whole dataset with a snapshot's RDB file,
over Valkey's unix socket, never on a primary."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import hiredis
import pytest

from engram.replication.tap import TapError
from tests.module.harness import DEADLINE, Conn, attached_tap, free_port, run, settle, valkey

pytestmark = pytest.mark.integration

FAR = 4_000_000_000_000  # a PEXPIREAT in 2096: the keys do not expire while a test runs
HELD = "this node's dataset was replaced from a snapshot; the outcome of this command is unknown"

# The snapshot: keys of every type, in two databases, some with a TTL.
SNAPSHOT: list[tuple[int, tuple[Any, ...]]] = [
    (0, ("SET", "s", "snapshot value")),
    (0, ("SET", "n", 12345)),
    (0, ("PEXPIREAT", "n", FAR)),
    (0, ("RPUSH", "l", "a", "b", "c", "a")),
    (0, ("HSET", "h", "f1", "v1", "f2", "v2")),
    (0, ("SADD", "set", "x", "y", "z")),
    (0, ("SADD", "ints", 1, 2, 3)),
    (0, ("ZADD", "z", 1.5, "one", 2, "two")),
    (0, ("XADD", "x", "1-1", "field", "value")),
    (0, ("XGROUP", "CREATE", "x", "g", "0")),
    (0, ("SET", "big", "v" * 5000, "PXAT", FAR + 1)),
    (1, ("SET", "other-db", "1")),
    (1, ("HSET", "h1", "a", "b")),
]
# What the loading Valkey holds before: none of it may survive the load.
BEFORE: list[tuple[int, tuple[Any, ...]]] = [
    (0, ("SET", "stale", "x")),
    (0, ("LPUSH", "s", "a list where the snapshot has a string")),
    (0, ("SET", "h", "a string where the snapshot has a hash", "PXAT", FAR + 7)),
    (2, ("SET", "third-db", "x")),
]


def _err(reply: Any) -> str:
    assert isinstance(reply, hiredis.ReplyError), f"expected an error, got {reply!r}"
    return str(reply)


def _info(raw: bytes) -> dict[str, str]:
    return dict(line.split(":", 1) for line in raw.decode().split("\r\n") if ":" in line)


@pytest.fixture
def files() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="eg-rdb-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def _node(path: str) -> Conn:
    """The node's connection: internal, so the filter leaves its reads and writes alone."""
    node = await Conn.open(path)
    assert await node.call("ENGRAM.INTERNAL") == b"OK"
    return node


async def _write(conn: Conn, commands: list[tuple[int, tuple[Any, ...]]]) -> None:
    for db, command in commands:
        assert await conn.call("SELECT", db) == b"OK"
        reply = await conn.call(*command)
        assert not isinstance(reply, hiredis.ReplyError), (command, reply)
    assert await conn.call("SELECT", 0) == b"OK"


async def _dataset(conn: Conn) -> dict[tuple[int, bytes], tuple[bytes, int]]:
    """Every key of every database: its DUMP (type, encoding and value) and PEXPIRETIME."""
    out: dict[tuple[int, bytes], tuple[bytes, int]] = {}
    for db in range(16):
        assert await conn.call("SELECT", db) == b"OK"
        for key in await conn.call("KEYS", "*"):
            out[(db, key)] = (await conn.call("DUMP", key), await conn.call("PEXPIRETIME", key))
    assert await conn.call("SELECT", 0) == b"OK"
    return out


async def _snapshot(files: Path, module: bool) -> tuple[str, dict[tuple[int, bytes], tuple[bytes, int]]]:
    """SNAPSHOT written into a Valkey (stock, or with the module) and SAVEd; its dump.rdb copied
    out, and what the dataset was."""
    async with valkey(module=module) as path:
        conn = await _node(path) if module else await Conn.open(path)
        await _write(conn, SNAPSHOT)
        expected = await _dataset(conn)
        assert await conn.call("SAVE") == b"OK"
        data_dir = (await conn.call("CONFIG", "GET", "dir"))[1].decode()
        rdb = files / ("module.rdb" if module else "stock.rdb")
        shutil.copyfile(Path(data_dir) / "dump.rdb", rdb)
        conn.close()
    assert len(expected) == 11 and expected[(0, b"n")][1] == FAR
    return str(rdb), expected


@asynccontextmanager
async def _loaded_valkey(*extra: str) -> AsyncIterator[tuple[str, Conn]]:
    """A module Valkey holding BEFORE, and the node's connection to it."""
    async with valkey(*extra) as path:
        node = await _node(path)
        await _write(node, BEFORE)
        yield path, node


@pytest.mark.parametrize("source", ["stock", "module"])
@pytest.mark.parametrize("role", ["none", "replica"])
def test_loadrdb_leaves_exactly_the_files_keys_values_and_ttls(files: Path, source: str, role: str) -> None:
    async def scenario() -> None:
        rdb, expected = await _snapshot(files, module=source == "module")
        async with _loaded_valkey() as (_, node):
            if role == "replica":
                assert await node.call("ENGRAM.ROLE", "replica") == b"OK"
            assert (0, b"stale") in await _dataset(node)
            assert await node.call("ENGRAM.LOADRDB", rdb) == b"OK"
            assert await _dataset(node) == expected
            assert await node.call("TYPE", "h") == b"hash"
            assert await node.call("HGETALL", "h") == [b"f1", b"v1", b"f2", b"v2"]
            assert await node.call("PEXPIRETIME", "h") == -1  # the old key's TTL went with it
            assert await node.call("LRANGE", "l", 0, -1) == [b"a", b"b", b"c", b"a"]
            assert await node.call("XINFO", "GROUPS", "x") != []

    run(scenario)


def test_loadrdb_fails_held_replies_and_forgets_dirty_keys_and_watches(files: Path) -> None:
    """Before any role is pushed the module holds writes: their data is gone after a load, so
    they fail at once; the keys they marked dirty, and the flush the load began with, hold no
    read afterwards; a WATCH taken before the load is broken."""

    async def scenario() -> None:
        rdb, _ = await _snapshot(files, module=False)
        async with _loaded_valkey() as (path, node):
            assert await node.call("ENGRAM.COMMITTIMEOUT", 60000) == 60000
            watcher = await Conn.open(path)
            assert await watcher.call("WATCH", "set") == b"OK"
            writer = await Conn.open(path)
            writer.send(("SET", "s", "uncommitted"))  # no tap: held until the commit timeout
            await settle(path)
            assert writer.arrived() == 0
            assert int(_info(await node.call("ENGRAM.INFO"))["dirty_keys"]) > 0

            assert await node.call("ENGRAM.LOADRDB", rdb) == b"OK"
            assert _err((await writer.read(1))[0]) == f"UNKNOWN {HELD}"
            info = _info(await node.call("ENGRAM.INFO"))
            assert info["dirty_keys"] == "0" and info["blocked_clients"] == "0"
            reader = await Conn.open(path)
            assert await asyncio.wait_for(reader.call("GET", "s"), 2) == b"snapshot value"
            assert await asyncio.wait_for(reader.call("DBSIZE"), 2) == 9
            watcher.send(("MULTI",), ("SCARD", "set"), ("EXEC",))
            assert await watcher.read(3) == [b"OK", b"QUEUED", None]
            for conn in (watcher, writer, reader):
                conn.close()

    run(scenario)


def test_loadrdb_drops_the_tap_and_a_new_tap_confirms_writes(files: Path) -> None:
    async def scenario() -> None:
        rdb, _ = await _snapshot(files, module=False)
        async with _loaded_valkey() as (path, node):
            client = await Conn.open(path)
            async with attached_tap(path, auto=True) as tap:
                assert await client.call("SET", "before", "1") == b"OK"
                assert await node.call("ENGRAM.LOADRDB", rdb) == b"OK"
                # Valkey disconnects its replicas when it loads an RDB.
                assert tap._task is not None
                with pytest.raises(TapError, match="valkey closed the replication link"):
                    await asyncio.wait_for(tap._task, DEADLINE)
            assert b"connected_slaves:0" in await node.call("INFO", "replication")
            async with attached_tap(path, auto=True):
                assert await client.call("SET", "after", "1") == b"OK"
                assert await client.call("GET", "after") == b"1"
            assert await node.call("EXISTS", "before") == 0
            client.close()

    run(scenario)


def test_loadrdb_is_refused_over_tcp(files: Path) -> None:
    async def scenario() -> None:
        rdb, _ = await _snapshot(files, module=False)
        with free_port() as port:
            async with _loaded_valkey("--port", str(port), "--bind", "127.0.0.1") as (_, node):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                tcp = Conn(reader, writer)
                assert _err(await tcp.call("ENGRAM.LOADRDB", rdb)) == (
                    "ERR engram: ENGRAM.LOADRDB is accepted only from the node, over Valkey's unix socket"
                )
                assert await node.call("GET", "stale") == b"x"
                tcp.close()

    run(scenario)


def test_loadrdb_is_refused_on_a_primary_and_allowed_again_on_a_replica(files: Path) -> None:
    async def scenario() -> None:
        rdb, expected = await _snapshot(files, module=False)
        async with _loaded_valkey() as (_, node):
            assert await node.call("ENGRAM.ROLE", "primary") == b"OK"
            assert _err(await node.call("ENGRAM.LOADRDB", rdb)) == (
                "ERR engram: ENGRAM.LOADRDB is refused on a primary: its data holds writes the journal "
                "may not have committed, which a load would destroy"
            )
            assert await node.call("GET", "stale") == b"x"
            assert await node.call("ENGRAM.ROLE", "replica") == b"OK"
            assert await node.call("ENGRAM.LOADRDB", rdb) == b"OK"
            assert await _dataset(node) == expected

    run(scenario)


def test_loadrdb_of_a_file_it_cannot_open_changes_nothing(files: Path) -> None:
    async def scenario() -> None:
        missing = files / "missing.rdb"
        garbage = files / "garbage.rdb"
        garbage.write_bytes(b"this is not an RDB file at all\n")
        async with _loaded_valkey() as (_, node):
            before = await _dataset(node)
            assert _err(await node.call("ENGRAM.LOADRDB", str(missing))) == (
                f"ERR engram: cannot load RDB '{missing}': No such file or directory"
            )
            assert _err(await node.call("ENGRAM.LOADRDB", str(files))) == (
                f"ERR engram: cannot load RDB '{files}': Is a directory"
            )
            assert _err(await node.call("ENGRAM.LOADRDB", "dump.rdb")) == (
                "ERR engram: ENGRAM.LOADRDB takes an absolute file path"
            )
            # Valkey checks the signature before it flushes anything.
            assert _err(await node.call("ENGRAM.LOADRDB", str(garbage))) == (
                f"ERR engram: cannot load RDB '{garbage}': Input/output error"
            )
            assert await _dataset(node) == before

    run(scenario)


def test_loadrdb_of_a_truncated_file_says_the_dataset_was_emptied(files: Path) -> None:
    """A file cut short fails after Valkey has flushed: the error says so. (Valkey 9.1 keeps
    running; Valkey 8.0 would exit here, which is why the node checks a snapshot's SHA-256 first.)"""

    async def scenario() -> None:
        rdb, _ = await _snapshot(files, module=False)
        cut = files / "cut.rdb"
        cut.write_bytes(Path(rdb).read_bytes()[:-40])
        async with _loaded_valkey() as (_, node):
            assert _err(await node.call("ENGRAM.LOADRDB", str(cut))) == (
                f"ERR engram: cannot load RDB '{cut}': Input/output error; the dataset was emptied first "
                "and may now hold part of the file"
            )
            assert await node.call("EXISTS", "stale") == 0
            assert _info(await node.call("ENGRAM.INFO"))["dirty_keys"] == "0"

    run(scenario)


def test_loadrdb_takes_exactly_one_argument_and_not_inside_multi(files: Path) -> None:
    async def scenario() -> None:
        rdb, _ = await _snapshot(files, module=False)
        async with _loaded_valkey() as (_, node):
            arity = "ERR wrong number of arguments for 'engram.loadrdb' command"
            assert _err(await node.call("ENGRAM.LOADRDB")) == arity
            assert _err(await node.call("ENGRAM.LOADRDB", rdb, rdb)) == arity
            node.send(("MULTI",), ("ENGRAM.LOADRDB", rdb), ("EXEC",))
            multi, queued, execed = await node.read(3)
            assert (multi, queued) == (b"OK", b"QUEUED")
            assert _err(execed[0]) == "ERR engram: ENGRAM.LOADRDB cannot run inside MULTI or a script"
            assert await node.call("GET", "stale") == b"x"

    run(scenario)
