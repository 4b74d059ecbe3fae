"""Replies wait for the replica link's acknowledgement, without serialising pipelines."""

from __future__ import annotations

import asyncio

import hiredis
import pytest

from tests.module.harness import Conn, attached_tap, run, settle, valkey

pytestmark = pytest.mark.integration


def test_a_write_reply_arrives_only_after_the_tap_acknowledges_it() -> None:
    async def scenario() -> None:
        async with valkey() as socket, attached_tap(socket) as tap:
            client = await Conn.open(socket)
            client.send(("SET", "k", "v"))
            await tap.wait_for_command(b"SET")  # the write ran: its effect is in the stream
            await settle(socket)
            assert client.arrived() == 0
            tap.ack()
            assert await client.read(1) == [b"OK"]

    run(scenario)


def test_sixteen_pipelined_writes_get_sixteen_replies_in_order_after_one_ack() -> None:
    async def scenario() -> None:
        async with valkey() as socket, attached_tap(socket) as tap:
            client, admin = await Conn.open(socket), await Conn.open(socket)
            blocks = _info(await admin.call("ENGRAM.INFO"))["blocks"]
            client.send(*[("INCR", "counter") for _ in range(16)])
            await tap.wait_for_command(b"INCR", 16)  # all ran at once: nothing waited per write
            await settle(socket)
            assert client.arrived() == 0
            tap.ack()
            assert await client.read(16) == list(range(1, 17))
            assert tap.acks == 1
            # Only the batch's last command blocked the client.
            assert int(_info(await admin.call("ENGRAM.INFO"))["blocks"]) == int(blocks) + 1

    run(scenario)


def test_engram_info_times_a_batch_from_its_block_to_the_ack_that_releases_it() -> None:
    async def scenario() -> None:
        async with valkey() as socket, attached_tap(socket) as tap:
            client, admin = await Conn.open(socket), await Conn.open(socket)
            client.send(("SET", "k", "v"))
            await tap.wait_for_command(b"SET")
            await asyncio.sleep(0.03)  # the journal takes 30 ms
            tap.ack()
            assert await client.read(1) == [b"OK"]
            info = _info(await admin.call("ENGRAM.INFO"))
            assert info["commit_waits"] == "1"
            assert 30_000 <= int(info["commit_wait_us_sum"]) < 1_000_000
            buckets = dict(b.split("=") for b in info["commit_wait_us_buckets"].split(","))
            # Cumulative, as Prometheus' buckets: none at or under 25 ms, the one wait under 100 ms.
            assert buckets["250"] == buckets["25000"] == "0" and buckets["100000"] == buckets["inf"] == "1"

    run(scenario)


def test_a_read_of_an_uncommitted_key_waits_and_a_read_of_a_clean_key_does_not() -> None:
    async def scenario() -> None:
        async with valkey() as socket, attached_tap(socket) as tap:
            seed = await Conn.open(socket)
            seed.send(("SET", "clean", "old"))
            await tap.wait_for_command(b"SET")
            tap.ack()
            assert await seed.read(1) == [b"OK"]

            writer = await Conn.open(socket)
            writer.send(("SET", "dirty", "new"))
            await tap.wait_for_command(b"SET", 2)
            reader = await Conn.open(socket)
            assert await reader.call("GET", "clean") == b"old"
            reader.send(("GET", "dirty"))
            await settle(socket)
            assert reader.arrived() == 0 and writer.arrived() == 0
            tap.ack()
            assert await writer.read(1) == [b"OK"]
            assert await reader.read(1) == [b"new"]

    run(scenario)


def test_a_wrong_type_error_between_two_writes_comes_back_in_order() -> None:
    pipeline = [("SET", "s", "1"), ("LPUSH", "s", "x"), ("SET", "t", "2"), ("GET", "s"), ("NOSUCHCMD", "a")]

    async def scenario() -> None:
        async with valkey(module=False) as plain_socket:
            plain = await Conn.open(plain_socket)
            plain.send(*pipeline)
            expected = await plain.read(len(pipeline))
        async with valkey() as socket, attached_tap(socket) as tap:
            client = await Conn.open(socket)
            client.send(*pipeline)
            await tap.wait_for_command(b"SET", 2)
            await settle(socket)
            assert client.arrived() == 0
            tap.ack()
            got = await client.read(len(pipeline))
        assert _comparable(got) == _comparable(expected)
        assert isinstance(got[1], hiredis.ReplyError) and str(got[1]).startswith("WRONGTYPE")

    run(scenario)


def test_replies_of_a_client_without_writes_are_not_held() -> None:
    async def scenario() -> None:
        async with valkey() as socket, attached_tap(socket):
            client = await Conn.open(socket)
            client.send(("GET", "a"), ("PING",), ("EXISTS", "a"))
            assert await client.read(3) == [None, b"PONG", 0]

    run(scenario)


def _info(text: bytes) -> dict[str, str]:
    return dict(line.split(":", 1) for line in text.decode().splitlines() if ":" in line)


def _comparable(replies: list[object]) -> list[object]:
    return [("error", str(r)) if isinstance(r, hiredis.ReplyError) else r for r in replies]


def test_after_an_uncommitted_flushall_every_read_waits() -> None:
    async def scenario() -> None:
        async with valkey() as socket, attached_tap(socket) as tap:
            seed = await Conn.open(socket)
            seed.send(("SET", "k", "v"))
            await tap.wait_for_command(b"SET")
            tap.ack()
            assert await seed.read(1) == [b"OK"]
            seed.send(("FLUSHALL",))
            await tap.wait_for_command(b"FLUSHALL")
            reader = await Conn.open(socket)
            reader.send(("GET", "k"))
            await settle(socket)
            assert reader.arrived() == 0
            tap.ack()
            assert await reader.read(1) == [None]

    run(scenario)


def test_a_blocking_pop_whose_write_is_never_acknowledged_fails_after_the_commit_timeout() -> None:
    async def scenario() -> None:
        async with valkey("--engram.commit-timeout-ms", "300") as socket, attached_tap(socket) as tap:
            popper, pusher = await Conn.open(socket), await Conn.open(socket)
            popper.send(("BLPOP", "q", "0"))
            pusher.send(("RPUSH", "q", "job"))
            await tap.wait_for_stream(lambda cs: any(c.args[0].lower() == b"lpop" for c in cs))
            (reply,) = await popper.read(1)
            assert str(reply).startswith("UNKNOWN commit not confirmed by the journal within 300 ms")

    run(scenario)


def test_keyspace_reads_wait_for_uncommitted_writes_and_ping_does_not() -> None:
    async def scenario() -> None:
        async with valkey() as socket, attached_tap(socket) as tap:
            writer = await Conn.open(socket)
            writer.send(("SET", "new", "1"))
            await tap.wait_for_command(b"SET")
            reader = await Conn.open(socket)
            assert await reader.call("PING") == b"PONG"
            reader.send(("DBSIZE",), ("SCAN", "0"))
            await settle(socket)
            assert reader.arrived() == 0
            tap.ack()
            assert await reader.read(2) == [1, [b"0", [b"new"]]]

    run(scenario)
