"""Valkey behaviour is kept: the same pipelines give the same replies with and without the module."""

from __future__ import annotations

from typing import Any

import hiredis
import pytest

from tests.module.harness import Conn, attached_tap, comparable, run, settle, valkey

pytestmark = pytest.mark.integration

Command = tuple[Any, ...]


async def _replies(socket: str, steps: list[list[Command]]) -> list[Any]:
    """Send each step as one pipeline and collect every reply, comparable across servers."""
    client = await Conn.open(socket)
    out: list[Any] = []
    try:
        for step in steps:
            client.send(*step)
            out += await client.read(len(step))
    finally:
        client.close()
    return [comparable(r) for r in out]


def _side_by_side(steps: list[list[Command]]) -> tuple[list[Any], list[Any]]:
    results: dict[str, list[Any]] = {}

    async def scenario() -> None:
        async with valkey(module=False) as socket:
            results["plain"] = await _replies(socket, steps)
        async with valkey() as socket, attached_tap(socket, auto=True):
            results["engram"] = await _replies(socket, steps)

    run(scenario)
    return results["plain"], results["engram"]


def test_refusals_come_back_as_valkey_words_them_in_order_with_queued_replies() -> None:
    plain, engram = _side_by_side([[
        ("SET", "s", "1"),
        ("NOSUCHCOMMAND", "x", "y"),
        ("GET",),
        ("LPUSH", "s", "v"),
        ("SET", "s", "2", "BADOPTION"),
        ("INCR", "s"),
        ("OBJECT", "NOSUCHSUB"),
        ("HSET", "h", "f"),
        ("GET", "s"),
    ]])
    assert engram == plain
    assert sum(isinstance(r, tuple) for r in plain) == 6


def test_getdel_and_getset_of_another_type_answer_wrongtype_alone_piped_in_exec_and_in_scripts() -> None:
    # Valkey 9.1's module Call gives no reply at all for these two: the client waited forever.
    plain, engram = _side_by_side([
        [("RPUSH", "l", "a"), ("SET", "s", "v")],
        [("GETDEL", "l")],
        [("GETSET", "l", "x")],
        [("GETDEL", "l"), ("GETSET", "l", "x"), ("GETDEL", "s"), ("GETSET", "nokey", "n"),
         ("GETDEL", "nokey")],
        [("MULTI",), ("GETDEL", "l"), ("INCR", "c"), ("GETSET", "l", "x"), ("EXEC",)],
        [("EVAL", "return redis.pcall('GETDEL', KEYS[1])", 1, "l")],
        [("LLEN", "l"), ("GET", "c")],
    ])
    assert engram == plain
    assert plain[2] == ("error", "WRONGTYPE Operation against a key holding the wrong kind of value")
    assert plain[-2:] == [1, b"1"]  # the list is untouched, the transaction's INCR ran


def test_select_inside_a_transaction_moves_its_later_commands_and_the_client_as_valkey_does() -> None:
    # The emulated EXEC ran SELECT on Call's own client only: the SET landed in database 0.
    plain, engram = _side_by_side([
        [("MULTI",), ("SELECT", 1), ("SET", "k", "v"), ("SELECT", 99), ("SELECT", "x"), ("DBSIZE",),
         ("EXEC",)],
        [("GET", "k"), ("SELECT", 0), ("GET", "k")],
    ])
    assert engram == plain
    assert plain[-3:] == [b"v", b"OK", None]


def test_writes_over_maxmemory_are_refused_as_valkey_refuses_them() -> None:
    plain, engram = _side_by_side([
        [("SET", "before", "1")],
        [("CONFIG", "SET", "maxmemory", "1")],
        [("SET", "k", "v"), ("GET", "before"), ("DEL", "before"), ("INCR", "n")],
        [("CONFIG", "SET", "maxmemory", "0")],
        [("SET", "k", "v")],
    ])
    assert engram == plain
    assert plain[2][0] == "error" and plain[2][1].startswith("OOM ")


def test_multi_exec_discard_and_their_errors_match_valkey() -> None:
    plain, engram = _side_by_side([
        [("MULTI",), ("SET", "a", "1"), ("INCR", "a"), ("LPUSH", "a", "x"), ("GET", "a"), ("EXEC",)],
        [("MULTI",), ("SET", "b", "1"), ("DISCARD",), ("GET", "b")],
        [("MULTI",), ("SET", "c", "1"), ("NOSUCHCOMMAND",), ("EXEC",), ("GET", "c")],
        [("MULTI",), ("GET",), ("EXEC",)],
        [("EXEC",), ("DISCARD",)],
        [("MULTI",), ("MULTI",), ("EXEC",)],
        [("SET", "d", "1"), ("MULTI",), ("INCR", "d"), ("EXEC",)],
        # Inside a transaction a blocking command does not block.
        [("MULTI",), ("BLPOP", "empty", "0"), ("RPUSH", "l", "x"), ("BLPOP", "l", "0"), ("EXEC",)],
    ])
    assert engram == plain


def test_watch_aborts_exec_when_the_key_changed_as_valkey_does() -> None:
    async def scenario() -> None:
        for module in (False, True):
            async with valkey(module=module) as socket, attached_tap(socket, auto=True):
                watcher, other = await Conn.open(socket), await Conn.open(socket)
                assert await watcher.call("WATCH", "w") == b"OK"
                assert await other.call("SET", "w", "changed") == b"OK"
                watcher.send(("MULTI",), ("SET", "w", "mine"), ("EXEC",))
                assert await watcher.read(3) == [b"OK", b"QUEUED", None]
                assert await watcher.call("GET", "w") == b"changed"
                # Unchanged watched key: EXEC runs.
                assert await watcher.call("WATCH", "w") == b"OK"
                watcher.send(("MULTI",), ("SET", "w", "mine"), ("EXEC",))
                assert await watcher.read(3) == [b"OK", b"QUEUED", [b"OK"]]
                # WATCH inside MULTI is refused as Valkey refuses it.
                watcher.send(("MULTI",), ("WATCH", "w"), ("EXEC",))
                replies = [comparable(r) for r in await watcher.read(3)]
                assert replies[0] == b"OK" and replies[1][0] == "error" and replies[2][0] == "error"

    run(scenario)


def test_an_exec_reply_waits_for_the_commit_of_its_writes() -> None:
    async def scenario() -> None:
        async with valkey() as socket, attached_tap(socket) as tap:
            client = await Conn.open(socket)
            client.send(("MULTI",), ("SET", "a", "1"), ("SET", "b", "2"), ("EXEC",))
            await tap.wait_for_command(b"EXEC")  # replicated as one MULTI/EXEC block
            stream = [c.args[0] for c in tap.commands if c.args[0] not in (b"SELECT", b"PING")]
            assert stream[-4:] == [b"MULTI", b"SET", b"SET", b"EXEC"]
            # MULTI's and the QUEUED replies wait for nothing; EXEC's waits for the commit.
            assert await client.read(3) == [b"OK", b"QUEUED", b"QUEUED"]
            await settle(socket)
            assert client.arrived() == 0
            tap.ack()
            assert await client.read(1) == [[b"OK", b"OK"]]

    run(scenario)


def test_resp3_hello_and_replies_match_valkey() -> None:
    async def scenario() -> None:
        hellos = []
        for module in (False, True):
            async with valkey(module=module) as socket, attached_tap(socket, auto=True):
                client = await Conn.open(socket)
                client.parser = hiredis.Reader(notEnoughData=client.parser.gets())  # fresh reader
                client.send(("HELLO", "3"))
                (hello,) = await client.read(1)
                hello.pop(b"id")
                hello.pop(b"modules")
                hellos.append(hello)
                client.send(
                    ("HSET", "h", "f", "v"), ("HGETALL", "h"), ("SET", "x", "1"), ("INCRBYFLOAT", "x", "1.5")
                )
                assert await client.read(4) == [1, {b"f": b"v"}, b"OK", b"2.5"]
        assert hellos[0] == hellos[1]

    run(scenario)


def test_scripts_run_and_their_replies_wait_for_the_commit() -> None:
    script = "redis.call('SET', KEYS[1], ARGV[1]); return redis.call('INCR', KEYS[2])"

    async def scenario() -> None:
        async with valkey() as socket, attached_tap(socket) as tap:
            client = await Conn.open(socket)
            client.send(("EVAL", script, "2", "a", "n", "v"))
            await tap.wait_for_command(b"INCR")
            assert client.arrived() == 0
            tap.ack()
            assert await client.read(1) == [1]
            assert await client.call("EVAL_RO", "return redis.call('GET', KEYS[1])", "1", "a") == b"v"

    run(scenario)


def test_a_blocking_pop_is_served_by_a_later_push_and_its_reply_waits_for_the_commit() -> None:
    async def scenario() -> None:
        async with valkey() as socket, attached_tap(socket) as tap:
            popper, pusher = await Conn.open(socket), await Conn.open(socket)
            popper.send(("BLPOP", "q", "0"))
            pusher.send(("RPUSH", "q", "job"))
            await tap.wait_for_stream(lambda cs: any(c.args[0].lower() in (b"lpop", b"blpop") for c in cs))
            tap.ack()
            assert await pusher.read(1) == [1]
            await tap.wait_for_stream(lambda cs: tap.received > 0)
            tap.ack()
            assert await popper.read(1) == [[b"q", b"job"]]

    run(scenario)


def test_pub_sub_works_through_the_module() -> None:
    async def scenario() -> None:
        async with valkey() as socket, attached_tap(socket, auto=True):
            subscriber, publisher = await Conn.open(socket), await Conn.open(socket)
            assert await subscriber.read_after(("SUBSCRIBE", "ch")) == [[b"subscribe", b"ch", 1]]
            publisher.send(("SET", "k", "v"), ("PUBLISH", "ch", "hello"))
            assert await publisher.read(2) == [b"OK", 1]
            assert await subscriber.read(1) == [[b"message", b"ch", b"hello"]]

    run(scenario)


def test_a_connection_command_behind_queued_replies_is_refused_in_order() -> None:
    async def scenario() -> None:
        async with valkey() as socket, attached_tap(socket, auto=True):
            client = await Conn.open(socket)
            client.send(("SET", "k", "v"), ("CLIENT", "SETNAME", "x"), ("GET", "k"))
            ok, refused, value = await client.read(3)
            assert (ok, value) == (b"OK", b"v")
            assert str(refused).startswith("ERR engram: 'client' cannot follow pipelined commands")
            # Alone, it runs natively on the connection.
            assert await client.call("CLIENT", "SETNAME", "x") == b"OK"
            assert await client.call("CLIENT", "GETNAME") == b"x"

    run(scenario)


def test_select_behind_queued_replies_switches_the_client_database_in_order() -> None:
    plain, engram = _side_by_side([
        [("SET", "k", "db0"), ("SELECT", "1"), ("SET", "k", "db1"), ("SELECT", "99"), ("GET", "k"),
         ("SELECT", "0"), ("GET", "k")],
    ])
    assert engram == plain


def test_client_tracking_is_refused_clearly() -> None:
    async def scenario() -> None:
        async with valkey() as socket, attached_tap(socket, auto=True):
            client = await Conn.open(socket)
            reply = await client.call("CLIENT", "TRACKING", "ON")
            assert str(reply).startswith("ERR engram: CLIENT TRACKING is not supported yet")
            assert await client.call("CLIENT", "TRACKING", "OFF") == b"OK"
            assert await client.call("SET", "k", "v") == b"OK"

    run(scenario)


def test_acl_users_granted_by_category_get_valkeys_own_answers() -> None:
    users = {
        "rw": ("+@read", "+@write"),
        "ro": ("+@read",),
        "nodanger": ("+@all", "-@dangerous"),
        "fastonly": ("+@all", "-@slow"),
    }
    pipeline = [("SET", "k", "v"), ("GET", "k"), ("DEL", "k"), ("MULTI",), ("INCR", "n"), ("EXEC",)]

    async def answers(socket: str) -> dict[str, list[Any]]:
        admin = await Conn.open(socket)
        out = {}
        for user, rules in users.items():
            assert await admin.call("ACL", "SETUSER", user, "on", ">pw", "~*", *rules) == b"OK"
            client = await Conn.open(socket)
            assert await client.call("AUTH", user, "pw") == b"OK"
            client.send(*pipeline)
            out[user] = [comparable(r) for r in await client.read(len(pipeline))]
            client.close()
        return out

    async def scenario() -> None:
        async with valkey(module=False) as socket:
            plain = await answers(socket)
        async with valkey() as socket, attached_tap(socket, auto=True):
            engram = await answers(socket)
        assert engram == plain
        assert plain["ro"][0] == ("error", "NOPERM User ro has no permissions to run the 'set' command")

    run(scenario)
