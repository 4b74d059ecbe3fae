"""Held replies fail cleanly: step-down, commit timeout, and clients that leave while waiting."""

from __future__ import annotations

import asyncio

import hiredis
import pytest

from tests.module.harness import DEADLINE, Conn, attached_tap, run, settle, valkey

pytestmark = pytest.mark.integration


def _info(text: bytes) -> dict[str, str]:
    return dict(line.split(":", 1) for line in text.decode().splitlines() if ":" in line)


def _own_memory(memory: dict[str, str]) -> int:
    """used_memory without the replication backlog and the replica's buffer, which grow with writes."""
    grown = int(memory["mem_replication_backlog"]) + int(memory["mem_clients_slaves"])
    return int(memory["used_memory"]) - grown


def test_stepdown_fails_every_held_reply_at_once_with_unknown() -> None:
    async def scenario() -> None:
        async with valkey() as socket, attached_tap(socket) as tap:
            blocked = await Conn.open(socket)
            blocked.send(("SET", "a", "1"), ("GET", "a"))
            other = await Conn.open(socket)
            other.send(("INCR", "n"))
            await tap.wait_for_command(b"INCR")
            admin = await Conn.open(socket)
            assert await admin.call("ENGRAM.STEPDOWN", "leadership lost to n2") == b"OK"
            replies = await blocked.read(2) + await other.read(1)
            for reply in replies:
                assert isinstance(reply, hiredis.ReplyError)
                assert str(reply) == "UNKNOWN leadership lost to n2; the outcome of this command is unknown"
            # The client is usable again; its next write waits for the next ack as usual.
            blocked.send(("SET", "b", "2"))
            await tap.wait_for_command(b"SET", 2)
            tap.ack()
            assert await blocked.read(1) == [b"OK"]

    run(scenario)


def test_held_replies_fail_after_the_commit_timeout_when_no_ack_arrives() -> None:
    async def scenario() -> None:
        async with valkey("--engram.commit-timeout-ms", "300") as socket, attached_tap(socket) as tap:
            client = await Conn.open(socket)
            assert await client.call("ENGRAM.COMMITTIMEOUT") == 300
            client.send(("SET", "k", "v"), ("GET", "k"))
            await tap.wait_for_command(b"SET")
            first, second = await client.read(2, timeout=DEADLINE)
            assert str(first).startswith("UNKNOWN commit not confirmed by the journal within 300 ms")
            assert isinstance(second, hiredis.ReplyError)
            # The write ran, only its commit was unknown: once acknowledged, reads see it.
            tap.ack()
            assert await client.call("GET", "k") == b"v"

    run(scenario)


def test_without_any_replica_a_write_is_never_reported_committed() -> None:
    async def scenario() -> None:
        async with valkey("--engram.commit-timeout-ms", "200") as socket:
            client = await Conn.open(socket)
            reply = await client.call("SET", "k", "v")
            assert str(reply).startswith("UNKNOWN ")

    run(scenario)


def test_a_client_that_disconnects_with_queued_replies_leaks_nothing() -> None:
    async def scenario() -> None:
        async with valkey() as socket, attached_tap(socket) as tap:
            admin = await Conn.open(socket)
            baseline = _own_memory(_info(await admin.call("INFO", "memory")))
            gone: set[int] = set()
            for round_ in range(20):
                client = await Conn.open(socket)
                gone.add(await client.call("CLIENT", "ID"))
                client.send(*[("SET", f"k{i}", "x" * 1000) for i in range(50)], ("GET", "k1"))
                await tap.wait_for_command(b"SET", 50 * (round_ + 1))
                client.close()

            async def forgotten() -> None:
                # Blocked handles, the module's records of the clients and their queued bytes.
                while True:
                    tracked = await admin.call("ENGRAM.CLIENTS")
                    clients = _info(await admin.call("INFO", "clients"))
                    state = _info(await admin.call("ENGRAM.INFO"))
                    if (
                        not gone & {entry[0] for entry in tracked}
                        and all(entry[1:] == [0, 0] for entry in tracked)
                        and clients["blocked_clients"] == "0"
                        and state["queued_reply_bytes"] == "0"
                    ):
                        return
                    await asyncio.sleep(0.01)

            await asyncio.wait_for(forgotten(), DEADLINE)
            listed = (await admin.call("CLIENT", "LIST")).decode().splitlines()
            assert [line for line in listed if "cmd=engram" in line] == []
            tap.ack()
            await settle(socket)
            assert _info(await admin.call("ENGRAM.INFO"))["dirty_keys"] == "0"
            # 50 keys of 1 kB stay in the data set; nothing else may remain.
            used = _own_memory(_info(await admin.call("INFO", "memory")))
            assert used - baseline < 50 * 1300 + 256 * 1024
            assert await admin.call("PING") == b"PONG"

    run(scenario)


def test_queued_replies_past_the_cap_block_the_client_early_and_all_still_arrive() -> None:
    async def scenario() -> None:
        async with valkey("--engram.max-queued-bytes", "4096") as socket, attached_tap(socket, auto=True):
            client = await Conn.open(socket)
            value = "v" * 1000
            client.send(*[("SET", f"k{i}", value) for i in range(40)], *[("GET", f"k{i}") for i in range(40)])
            replies = await client.read(80)
            assert replies == [b"OK"] * 40 + [value.encode()] * 40

    run(scenario)


def test_becoming_a_replica_fails_held_replies_and_the_module_stops_holding() -> None:
    async def scenario() -> None:
        async with valkey() as socket, attached_tap(socket) as tap:
            client = await Conn.open(socket)
            client.send(("SET", "k", "v"))
            await tap.wait_for_command(b"SET")
            admin = await Conn.open(socket)
            # A primary that cannot be reached: Valkey becomes a replica at once, and itself
            # disconnects blocked clients with -UNBLOCKED (the node sends ENGRAM.STEPDOWN first,
            # so its clients get UNKNOWN and keep their connection).
            assert await admin.call("REPLICAOF", "127.0.0.1", "1") == b"OK"
            (reply,) = await client.read(1)
            assert isinstance(reply, hiredis.ReplyError)
            assert str(reply).startswith(("UNBLOCKED ", "UNKNOWN this node became a replica"))
            state = _info(await admin.call("ENGRAM.INFO"))
            assert (state["active"], state["blocked_clients"], state["queued_reply_bytes"]) == ("0", "0", "0")
            # Replicas hold nothing: reads are Valkey's own.
            assert await admin.call("GET", "k") == b"v"

    run(scenario)


def test_an_ack_from_a_client_that_is_not_the_replica_link_commits_nothing() -> None:
    async def scenario() -> None:
        async with valkey() as socket, attached_tap(socket) as tap:
            client = await Conn.open(socket)
            client.send(("SET", "k", "v"))
            await tap.wait_for_command(b"SET")
            impostor = await Conn.open(socket)
            impostor.send(("REPLCONF", "ACK", str(1 << 40)))
            await settle(socket)
            assert client.arrived() == 0
            tap.ack()
            assert await client.read(1) == [b"OK"]

    run(scenario)


def test_losing_the_replica_link_fails_held_replies_and_a_new_link_confirms_only_new_writes() -> None:
    async def scenario() -> None:
        async with valkey() as socket:
            client = await Conn.open(socket)
            async with attached_tap(socket) as tap:
                client.send(("SET", "k", "1"))
                await tap.wait_for_command(b"SET")
            (reply,) = await client.read(1)
            assert str(reply) == (
                "UNKNOWN the replication link to the journal was lost; the outcome of this command is unknown"
            )
            async with attached_tap(socket) as tap:
                client.send(("SET", "k", "2"))
                await tap.wait_for_command(b"SET")
                tap.ack()
                assert await client.read(1) == [b"OK"]

    run(scenario)


def test_the_module_refuses_to_be_unloaded() -> None:
    async def scenario() -> None:
        async with valkey() as socket:
            admin = await Conn.open(socket)
            assert isinstance(await admin.call("MODULE", "UNLOAD", "engram"), hiredis.ReplyError)
            assert _info(await admin.call("ENGRAM.INFO"))["active"] == "1"

    run(scenario)
