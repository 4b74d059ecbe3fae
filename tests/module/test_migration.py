"""Slots moving between shards, as Valkey cluster clients see it: ASK, ASKING, TRYAGAIN, MIGRATE
whose deletion is committed before anyone is sent to the target, and the freeze after a failure."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import hiredis
import pytest

from engram.cluster.protocol import Me
from engram.cluster.push import topology_command
from engram.cluster.slots import key_hash_slot
from engram.cluster.topology import ClusterView, LeaderRecord, NodeRecord, SlotMap
from tests.module.harness import DEADLINE, Conn, attached_tap, free_port, run, valkey

pytestmark = pytest.mark.integration

REASON = "no primary"


def _lease() -> int:
    return int((time.monotonic() + 120) * 1_000_000)


def _err(reply: Any) -> str:
    assert isinstance(reply, hiredis.ReplyError), f"expected an error, got {reply!r}"
    return str(reply)


def _key(slot: int, prefix: str = "") -> str:
    """A key of the slot: a hash tag that hashes there."""
    for i in range(200_000):
        tag = f"{prefix}{i}"
        if key_hash_slot(tag.encode()) == slot:
            return f"{{{tag}}}"
    raise AssertionError(f"no tag for slot {slot}")


def _view(moving: list[tuple[int, int, int]], source: str, target: str, epoch: int = 2) -> ClusterView:
    """Shard 0 owns every slot, shard 1 none; `moving` slots go from 0 to 1."""
    view = ClusterView(SlotMap([(0, 16383, 0)], epoch, 2, moving))
    view.leaders[0] = LeaderRecord(0, "n0", source, 3)
    view.leaders[1] = LeaderRecord(1, "n1", target, 3)
    return view


async def _push(admin: Conn, view: ClusterView, shard: int, address: str, role: str = "primary") -> None:
    me = Me(f"n{shard}", shard, address, 3)
    for command in (
        topology_command(view, me, view.leader_address(shard), REASON),
        ["ENGRAM.ROLE", role],
        ["ENGRAM.LEASE", _lease()],
    ):
        assert await admin.call(*command) == b"OK", command[:2]


async def _info(conn: Conn) -> dict[str, str]:
    text = (await conn.call("ENGRAM.INFO")).decode()
    return dict(line.split(":", 1) for line in text.split("\r\n") if ":" in line)


SLOT = 777
OTHER = 778


def test_source_serves_present_keys_and_sends_missing_ones_to_the_target() -> None:
    async def scenario() -> None:
        with free_port() as sport, free_port() as tport:
            src_addr, tgt_addr = f"127.0.0.1:{sport}", f"127.0.0.1:{tport}"
            async with valkey("--port", str(sport)) as spath, attached_tap(spath, auto=True):
                admin, client = await Conn.open(spath), await Conn.open(spath)
                present, missing = _key(SLOT, "p"), _key(SLOT, "m")
                # Written while the slot is still only shard 0's.
                await _push(admin, _view([], src_addr, tgt_addr, 1), 0, src_addr)
                assert await client.call("SET", present, "v") == b"OK"
                await _push(admin, _view([(SLOT, SLOT, 1)], src_addr, tgt_addr), 0, src_addr)
                assert await client.call("GET", present) == b"v"
                assert await client.call("SET", present, "w") == b"OK"
                assert _err(await client.call("GET", missing)) == f"ASK {SLOT} {tgt_addr}"
                assert _err(await client.call("SET", missing, "x")) == f"ASK {SLOT} {tgt_addr}"
                assert _err(await client.call("MGET", present, missing)) == (
                    "TRYAGAIN Multiple keys request during rehashing of slot"
                )
                # Slots not moving are untouched.
                other = _key(OTHER, "o")
                assert await client.call("SET", other, "1") == b"OK"
                info = await _info(client)
                assert info["slots_migrating"] == "1" and info["slot_map_epoch"] == "2"

    run(scenario)


def test_target_takes_an_importing_slot_only_after_asking() -> None:
    async def scenario() -> None:
        with free_port() as sport, free_port() as tport:
            src_addr, tgt_addr = f"127.0.0.1:{sport}", f"127.0.0.1:{tport}"
            async with valkey("--port", str(tport)) as tpath, attached_tap(tpath, auto=True):
                admin, client = await Conn.open(tpath), await Conn.open(tpath)
                await _push(admin, _view([(SLOT, SLOT, 1)], src_addr, tgt_addr), 1, tgt_addr)
                key, key2 = _key(SLOT, "a"), _key(SLOT, "b")
                assert _err(await client.call("SET", key, "1")) == f"MOVED {SLOT} {src_addr}"
                assert await client.call("ASKING") == b"OK"
                assert await client.call("SET", key, "1") == b"OK"
                # ASKING lasted one command.
                assert _err(await client.call("GET", key)) == f"MOVED {SLOT} {src_addr}"
                assert await client.call("ASKING") == b"OK"
                assert await client.call("GET", key) == b"1"
                # Several keys must all have arrived.
                assert await client.call("ASKING") == b"OK"
                assert _err(await client.call("MGET", key, key2)) == (
                    "TRYAGAIN Multiple keys request during rehashing of slot"
                )
                # A transaction keeps ASKING until EXEC.
                client.send(("ASKING",), ("MULTI",), ("INCR", key), ("GET", key), ("EXEC",))
                replies = await client.read(5)
                assert replies[:4] == [b"OK", b"OK", b"QUEUED", b"QUEUED"]
                assert replies[4] == [2, b"2"]
                assert _err(await client.call("GET", key)) == f"MOVED {SLOT} {src_addr}"
                # A slot not being imported is still refused.
                assert await client.call("ASKING") == b"OK"
                other = _key(OTHER, "o")
                assert _err(await client.call("GET", other)) == f"MOVED {OTHER} {src_addr}"

    run(scenario)


def test_migrate_moves_keys_and_the_ask_waits_for_the_committed_deletion() -> None:
    async def scenario() -> None:
        with free_port() as sport, free_port() as tport:
            src_addr, tgt_addr = f"127.0.0.1:{sport}", f"127.0.0.1:{tport}"
            async with (
                valkey("--port", str(sport)) as spath,
                valkey("--port", str(tport)) as tpath,
                attached_tap(spath) as stap,
                attached_tap(tpath, auto=True),
            ):
                sadmin, tadmin = await Conn.open(spath), await Conn.open(tpath)
                mover, client, target = await Conn.open(spath), await Conn.open(spath), await Conn.open(tpath)
                keys = [_key(SLOT, f"k{i}-") for i in range(3)]
                await _push(sadmin, _view([], src_addr, tgt_addr, 1), 0, src_addr)
                client.send(*[("SET", k, f"v{i}") for i, k in enumerate(keys)])
                await stap.wait_for_command(b"SET", 3)
                stap.ack()
                assert await client.read(3) == [b"OK"] * 3
                await _push(sadmin, _view([(SLOT, SLOT, 1)], src_addr, tgt_addr), 0, src_addr)
                await _push(tadmin, _view([(SLOT, SLOT, 1)], src_addr, tgt_addr), 1, tgt_addr)
                # Refused: a slot not moving, or the wrong destination.
                other = _key(OTHER, "o")
                assert "slots this shard is migrating" in _err(
                    await mover.call("MIGRATE", "127.0.0.1", tport, "", 0, 5000, "KEYS", other))
                assert "must go to" in _err(
                    await mover.call("MIGRATE", "127.0.0.1", sport, "", 0, 5000, "KEYS", keys[0]))
                mover.send(("MIGRATE", "127.0.0.1", tport, "", 0, 5000, "REPLACE", "KEYS", *keys))
                await stap.wait_for_command(b"DEL")
                # The keys are gone here, but their deletion is not committed: the ASK waits.
                client.send(("GET", keys[0]))
                await asyncio.sleep(0.2)
                assert client.arrived() == 0 and mover.arrived() == 0
                assert await target.call("ASKING") == b"OK"
                assert await target.call("GET", keys[0]) == b"v0"
                stap.ack()
                assert await mover.read(1) == [b"OK"]
                assert [_err(r) for r in await client.read(1)] == [f"ASK {SLOT} {tgt_addr}"]
                assert await client.call("EXISTS", keys[1]) is not None  # answered (ASK), not held
                info = await _info(mover)
                assert info["migrate_calls"] == "1" and info["migration_frozen"] == "0"

    run(scenario)


def test_a_failed_migrate_freezes_the_moving_slots_until_settled() -> None:
    async def scenario() -> None:
        with free_port() as sport, free_port() as tport:
            src_addr, tgt_addr = f"127.0.0.1:{sport}", f"127.0.0.1:{tport}"
            async with valkey("--port", str(sport)) as spath, attached_tap(spath, auto=True):
                admin, mover, client = await Conn.open(spath), await Conn.open(spath), await Conn.open(spath)
                key, missing = _key(SLOT, "k"), _key(SLOT, "m")
                await _push(admin, _view([], src_addr, tgt_addr, 1), 0, src_addr)
                assert await client.call("SET", key, "v") == b"OK"
                view = _view([(SLOT, SLOT, 1)], src_addr, tgt_addr, 5)
                await _push(admin, view, 0, src_addr)
                # Nothing listens on the target's port: MIGRATE fails, and may have half-worked.
                assert "IOERR" in _err(await mover.call("MIGRATE", "127.0.0.1", tport, key, 0, 1000))
                frozen = (f"TRYAGAIN engram: slot {SLOT} is moving to shard 1 "
                          "and its last keys are being checked")
                assert _err(await client.call("GET", key)) == frozen
                assert _err(await client.call("GET", missing)) == frozen
                assert (await _info(client))["migration_frozen"] == "1"
                assert "epoch 5, not 4" in _err(await mover.call("ENGRAM.MIGRATION", "SETTLE", 4))
                assert await mover.call("ENGRAM.MIGRATION", "SETTLE", 5) == b"OK"
                assert await client.call("GET", key) == b"v"
                assert _err(await client.call("GET", missing)) == f"ASK {SLOT} {tgt_addr}"
                # A replica promoted while slots move freezes them too.
                assert await admin.call("ENGRAM.ROLE", "replica") == b"OK"
                assert await admin.call("ENGRAM.ROLE", "primary") == b"OK"
                assert await admin.call("ENGRAM.LEASE", _lease()) == b"OK"
                assert _err(await client.call("GET", key)) == frozen
                # A slot map with nothing moving away leaves nothing to settle.
                await _push(admin, _view([], src_addr, tgt_addr, 6), 0, src_addr)
                assert await client.call("GET", key) == b"v"

    run(scenario)


def test_a_transaction_over_a_moving_slot_is_retried_when_keys_moved_meanwhile() -> None:
    async def scenario() -> None:
        with free_port() as sport, free_port() as tport:
            src_addr, tgt_addr = f"127.0.0.1:{sport}", f"127.0.0.1:{tport}"
            async with (
                valkey("--port", str(sport)) as spath,
                valkey("--port", str(tport)) as tpath,
                attached_tap(spath, auto=True),
                attached_tap(tpath, auto=True),
            ):
                sadmin, tadmin = await Conn.open(spath), await Conn.open(tpath)
                mover, client = await Conn.open(spath), await Conn.open(spath)
                key, other = _key(SLOT, "k"), _key(SLOT, "j")
                await _push(sadmin, _view([], src_addr, tgt_addr, 1), 0, src_addr)
                assert await client.call("MSET", key, "1", other, "2") == b"OK"
                view = _view([(SLOT, SLOT, 1)], src_addr, tgt_addr)
                await _push(sadmin, view, 0, src_addr)
                await _push(tadmin, view, 1, tgt_addr)
                # Queued, then a key of the slot moves before EXEC.
                client.send(("MULTI",), ("INCR", key))
                assert await client.read(2) == [b"OK", b"QUEUED"]
                assert await mover.call("MIGRATE", "127.0.0.1", tport, other, 0, 5000) == b"OK"
                assert _err(await client.call("EXEC")).startswith(f"TRYAGAIN engram: slot {SLOT} is moving")
                # Without a move in between, it runs.
                client.send(("MULTI",), ("INCR", key), ("EXEC",))
                assert await client.read(3) == [b"OK", b"QUEUED", [2]]

    asyncio.run(asyncio.wait_for(scenario(), DEADLINE * 3))


def test_migrate_reaches_a_tls_fronted_target_at_its_own_valkey_port_and_nowhere_else() -> None:
    """Where a node terminates client TLS itself, its record names Valkey's own port for MIGRATE:
    keys go there, not to the announced TLS port, and clients are still sent to the announced one."""

    async def scenario() -> None:
        with free_port() as sport, free_port() as tport, free_port() as front:
            src_addr, tgt_addr, tgt_front = f"127.0.0.1:{sport}", f"127.0.0.1:{tport}", f"127.0.0.1:{front}"
            async with (
                valkey("--port", str(sport)) as spath,
                valkey("--port", str(tport)) as tpath,
                attached_tap(spath, auto=True),
                attached_tap(tpath, auto=True),
            ):
                sadmin, tadmin = await Conn.open(spath), await Conn.open(tpath)
                mover, client, target = await Conn.open(spath), await Conn.open(spath), await Conn.open(tpath)
                keys = [_key(SLOT, f"t{i}-") for i in range(2)]
                await _push(sadmin, _view([], src_addr, tgt_front, 1), 0, src_addr)
                assert await client.call("MSET", keys[0], "a", keys[1], "b") == b"OK"
                view = _view([(SLOT, SLOT, 1)], src_addr, tgt_front)
                view.nodes["n1"] = NodeRecord("n1", 1, "z", tgt_front, "primary", migrate=tgt_addr)
                await _push(sadmin, view, 0, src_addr)
                await _push(tadmin, view, 1, tgt_front)
                # The announced address is the TLS front, which MIGRATE's plain TCP cannot speak.
                assert _err(await mover.call("MIGRATE", "127.0.0.1", front, keys[0], 0, 5000)) == (
                    f"ERR engram: MIGRATE must go to {tgt_addr}, the primary of shard 1, not {tgt_front}")
                # Another Valkey's port is no more allowed than before.
                assert "must go to" in _err(await mover.call("MIGRATE", "127.0.0.1", sport, keys[0], 0, 5000))
                assert await mover.call("MIGRATE", "127.0.0.1", tport, "", 0, 5000, "KEYS", *keys) == b"OK"
                assert await target.call("ASKING") == b"OK"
                assert await target.call("GET", keys[1]) == b"b"
                # Clients follow the announced address, as CLUSTER SLOTS lists it.
                assert _err(await client.call("GET", keys[0])) == f"ASK {SLOT} {tgt_front}"
                # Without the target node's record, MIGRATE may go only to the leader address.
                await _push(sadmin, _view([(SLOT, SLOT, 1)], src_addr, tgt_front, 3), 0, src_addr)
                assert f"must go to {tgt_front}," in _err(
                    await mover.call("MIGRATE", "127.0.0.1", tport, "", 0, 5000, "KEYS", *keys))

    run(scenario)
