"""Random pipelines give exactly Valkey's replies, in order, while every write waits for its ack."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from tests.module.harness import Conn, attached_tap, comparable, run, settle, valkey

pytestmark = pytest.mark.integration


def _command(rng: random.Random, prefix: str) -> tuple[Any, ...]:
    key = f"{prefix}:{rng.randrange(4)}"
    choices: list[tuple[Any, ...]] = [
        ("SET", key, rng.randrange(100)),
        ("GET", key),
        ("INCR", key),
        ("LPUSH", key, "x"),
        ("DEL", key),
        ("EXISTS", key),
        ("APPEND", key, "z"),
        ("PING",),
        ("ECHO", "hi"),
        ("NOSUCHCOMMAND", key),
        ("GET",),
        ("MGET", key, f"{prefix}:0"),
    ]
    return rng.choice(choices)


def _steps(seed: int, prefix: str) -> list[list[tuple[Any, ...]]]:
    rng = random.Random(seed)
    steps = []
    for _ in range(25):
        step = [_command(rng, prefix) for _ in range(rng.choice([1, 1, 2, 5, 16, 40]))]
        if rng.random() < 0.2:
            step = [("MULTI",), *step[:4], ("EXEC",)]
        steps.append(step)
    return steps


async def _play(socket: str, steps: list[list[tuple[Any, ...]]]) -> list[Any]:
    client = await Conn.open(socket)
    out: list[Any] = []
    for step in steps:
        client.send(*step)
        out += [comparable(r) for r in await client.read(len(step))]
    client.close()
    return out


def test_random_pipelines_from_concurrent_clients_match_plain_valkey() -> None:
    clients = 6
    plans = [_steps(seed, f"c{seed}") for seed in range(clients)]

    async def scenario() -> None:
        async with valkey(module=False) as socket:
            expected = [await _play(socket, plan) for plan in plans]
        async with valkey() as socket, attached_tap(socket, auto=True):
            # Clients use their own keys, so running them at once keeps each one's replies fixed.
            got = await asyncio.gather(*[_play(socket, plan) for plan in plans])
        for mine, theirs in zip(got, expected, strict=True):
            assert mine == theirs

    run(scenario, timeout=60)


def test_refused_commands_in_random_pipelines_never_keep_a_reply_past_its_command() -> None:
    """Errors Call makes itself point at the calling command's context, gone once it returns:
    queued, they must be kept as text (engram-checked.so aborts if one is freed as a reply).
    Valkey crashed on such a free about once in 40 rounds of this load before."""
    clients = 8
    plans = [_steps(100 + seed, f"c{seed}") for seed in range(clients)]

    async def scenario() -> None:
        async with valkey(module=False) as socket:
            expected = [await _play(socket, plan) for plan in plans]
        async with valkey(checked=True) as socket, attached_tap(socket, auto=True):
            async def leaver(n: int) -> None:
                client = await Conn.open(socket)
                client.send(*[("NOSUCHCOMMAND", n) if i % 3 else ("SET", f"l{n}:{i}", i) for i in range(60)])
                await asyncio.sleep(0)
                client.close()

            leavers = [leaver(n) for n in range(4)]
            got = await asyncio.gather(*[_play(socket, plan) for plan in plans], *leavers)
            probe = await Conn.open(socket)
            assert await probe.call("PING") == b"PONG"  # the server is still there
        for mine, theirs in zip(got[:clients], expected, strict=True):
            assert mine == theirs

    run(scenario, timeout=60)


def test_an_exec_whose_user_lost_a_right_answers_as_valkey_does() -> None:
    """EXEC checks each command's rights again: the refusal is made by Call, kept as text."""
    async def play(socket: str) -> list[Any]:
        admin, client = await Conn.open(socket), await Conn.open(socket)
        assert await admin.call("ACL", "SETUSER", "u", "on", "nopass", "+@all", "~*") == b"OK"
        assert await client.call("AUTH", "u", "x") == b"OK"
        client.send(("MULTI",), ("SET", "k", "1"), ("INCR", "n"))
        first = await client.read(3)
        assert await admin.call("ACL", "SETUSER", "u", "-set") == b"OK"
        client.send(("EXEC",), ("GET", "k"))
        return [comparable(r) for r in first + await client.read(2)]

    async def scenario() -> None:
        async with valkey(module=False) as socket:
            expected = await play(socket)
        async with valkey(checked=True) as socket, attached_tap(socket, auto=True):
            got = await play(socket)
        assert got == expected
        assert isinstance(expected[3], list) and expected[3][0][0] == "error"  # the SET was refused

    run(scenario)


def test_clients_that_leave_mid_pipeline_do_not_disturb_the_others() -> None:
    async def scenario() -> None:
        async with valkey() as socket, attached_tap(socket, auto=True):
            async def leaver(n: int) -> None:
                client = await Conn.open(socket)
                client.send(*[("SET", f"l{n}:{i}", i) for i in range(200)])
                await asyncio.sleep(0)
                client.close()

            steady = await Conn.open(socket)
            for round_ in range(10):
                await asyncio.gather(*[leaver(round_ * 10 + n) for n in range(5)])
                steady.send(*[("INCR", "steady") for _ in range(10)])
                assert await steady.read(10) == list(range(round_ * 10 + 1, round_ * 10 + 11))
            assert await steady.call("ENGRAM.CLIENTS") is not None

    run(scenario, timeout=60)


def test_inline_commands_still_get_their_replies_in_order() -> None:
    async def scenario() -> None:
        async with valkey() as socket, attached_tap(socket, auto=True):
            client = await Conn.open(socket)
            client.send_raw(b"SET a 1\r\nINCR a\r\nGET a\r\nPING\r\n")
            assert await client.read(4) == [b"OK", 2, b"2", b"PONG"]

    run(scenario)


def test_an_empty_array_after_a_write_does_not_strand_its_reply() -> None:
    async def scenario() -> None:
        async with valkey() as socket, attached_tap(socket, auto=True):
            client = await Conn.open(socket)
            client.send_raw(b"*3\r\n$3\r\nSET\r\n$1\r\nb\r\n$1\r\n1\r\n*0\r\n")
            assert await client.read(1) == [b"OK"]
            # Bytes that held no command are forgotten: the next pipeline is counted right.
            client.send(("INCR", "b"), ("INCR", "b"))
            assert await client.read(2) == [2, 3]

    run(scenario)


def test_many_empty_arrays_delay_replies_only_until_the_next_command() -> None:
    async def scenario() -> None:
        async with valkey() as socket, attached_tap(socket, auto=True):
            client = await Conn.open(socket)
            # 16 bytes that hold no command look like more input: the replies wait (a known limit,
            # see docs/data-path.md) until the client's next command, and then all come in order.
            client.send_raw(b"*3\r\n$3\r\nSET\r\n$1\r\nb\r\n$1\r\n1\r\n" + b"*0\r\n" * 4)
            await settle(socket)
            client.send(("GET", "b"))
            assert await client.read(2) == [b"OK", b"1"]
            client.send(("INCR", "b"), ("INCR", "b"))
            assert await client.read(2) == [2, 3]

    run(scenario)
