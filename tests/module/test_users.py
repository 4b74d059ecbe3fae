"""Users as cluster state: ACL SETUSER/DELUSER on a managed primary wait, like writes, until the node
has stored the change (ENGRAM.USERS.DONE); ENGRAM.USERS.APPLY makes a Valkey's users match the
cluster's. The test plays the node."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import hiredis
import pytest

from engram.cluster.protocol import Me
from engram.cluster.push import topology_command
from engram.cluster.topology import ClusterView, LeaderRecord, NodeRecord, SlotMap
from engram.platforms.local import ports
from tests.module.harness import Conn, attached_tap, run, valkey

pytestmark = pytest.mark.integration

ADDRESS = "10.0.0.1:6379"


def _err(reply: Any) -> str:
    assert isinstance(reply, hiredis.ReplyError), f"expected an error, got {reply!r}"
    return str(reply)


@asynccontextmanager
async def _primary(*extra: str) -> AsyncIterator[tuple[Conn, Conn, str]]:
    """A managed Valkey serving as its shard's primary: (the node's connection, a client, its socket)."""
    view = ClusterView(SlotMap.even(1))
    view.leaders[0] = LeaderRecord(0, "n0", ADDRESS, 3)
    view.nodes["n0"] = NodeRecord("n0", 0, "z", ADDRESS, "primary", 42)
    async with valkey("managed", "1", *extra) as path, attached_tap(path, auto=True):
        node, client = await Conn.open(path), await Conn.open(path)
        assert await node.call("ENGRAM.INTERNAL") == b"OK"
        assert await node.call(*topology_command(view, Me("n0", 0, ADDRESS, 3), ADDRESS, "")) == b"OK"
        assert await node.call("ENGRAM.ROLE", "primary") == b"OK"
        assert await node.call("ENGRAM.LEASE", int((time.monotonic() + 120) * 1_000_000)) == b"OK"
        yield node, client, path


async def _rules(conn: Conn, user: str) -> str | None:
    for line in await conn.call("ACL", "LIST"):
        prefix = f"user {user} ".encode()
        if line.startswith(prefix):
            return line[len(prefix):].decode()
    return None


def test_a_user_change_waits_for_the_metadata_and_keeps_its_place_among_writes() -> None:
    async def scenario() -> None:
        async with _primary() as (node, client, path):
            change = ("ACL", "SETUSER", "bob", "on", ">secret", "~*", "+@all")
            client.send(("SET", "a", "1"), change, ("GET", "a"))
            # The write is committed at once (auto tap); the user change is not yet stored.
            pending = await node.call("ENGRAM.USERS.PENDING")
            while not pending:
                pending = await node.call("ENGRAM.USERS.PENDING")
            [[seq, name, rules]] = pending
            assert name == b"bob" and rules.decode() == await _rules(node, "bob")
            assert b"secret" not in rules and b"#" in rules  # hashed, as ACL LIST shows it
            assert client.arrived() == 0
            assert await node.call("ENGRAM.USERS.DONE", seq) == b"OK"
            assert await client.read(3) == [b"OK", b"OK", b"1"]
            assert await node.call("ENGRAM.USERS.PENDING") == []
            bob = await Conn.open(path)
            assert await bob.call("AUTH", "bob", "secret") == b"OK"
            # DELUSER records each user named; a deleted user's rules are null.
            client.send(("ACL", "DELUSER", "bob", "nobody"))
            pending = await node.call("ENGRAM.USERS.PENDING")
            assert [(n, r) for _, n, r in pending] == [(b"bob", None), (b"nobody", None)]
            assert await node.call("ENGRAM.USERS.DONE", pending[-1][0]) == b"OK"
            assert await client.read(1) == [1]
            info = (await node.call("ENGRAM.INFO")).decode()
            assert "user_changes_pending:0" in info and f"user_changes_done:{pending[-1][0]}" in info

    run(scenario)


def test_refused_user_changes_record_nothing_and_answer_as_valkey_would() -> None:
    async def scenario() -> None:
        async with _primary() as (node, client, path):
            assert _err(await client.call("ACL", "SETUSER", "bob", "+nosuchcommand")).startswith(
                "ERR Error in ACL SETUSER modifier '+nosuchcommand'")
            assert _err(await client.call("ACL", "SETUSER")).startswith("ERR wrong number of arguments")
            assert await node.call("ENGRAM.USERS.PENDING") == []
            # A user without the right to ACL gets Valkey's NOPERM and changes nothing.
            client.send(("ACL", "SETUSER", "app", "on", ">pw", "~*", "+set"))
            [[seq, _, _]] = await node.call("ENGRAM.USERS.PENDING")
            await node.call("ENGRAM.USERS.DONE", seq)
            assert await client.read(1) == [b"OK"]
            app = await Conn.open(path)
            assert await app.call("AUTH", "app", "pw") == b"OK"
            assert "NOPERM" in _err(await app.call("ACL", "SETUSER", "app", "+@all"))
            assert await node.call("ENGRAM.USERS.PENDING") == []
            # Inside MULTI the change would not be one step with its confirmation: the
            # transaction is doomed, as for any command refused while queueing.
            client.send(("MULTI",), ("ACL", "SETUSER", "x", "on"), ("EXEC",))
            ok, refused, execed = await client.read(3)
            assert ok == b"OK" and "cannot be queued in MULTI" in _err(refused)
            assert _err(execed).startswith("EXECABORT")
            # CONFIG SET requirepass would change the default user on this node only.
            refused_config = _err(await client.call("CONFIG", "SET", "maxmemory", "0", "requirepass", "pw"))
            assert "ACL SETUSER default" in refused_config
            assert await client.call("CONFIG", "SET", "maxmemory", "0") == b"OK"
            assert await node.call("ENGRAM.USERS.PENDING") == []
            # On a replica users do not change at all.
            assert await node.call("ENGRAM.ROLE", "replica") == b"OK"
            assert "this node is a replica" in _err(await client.call("ACL", "SETUSER", "y", "on"))
            assert await _rules(node, "y") is None

    run(scenario)


def test_an_unconfirmed_user_change_fails_as_unknown_after_the_commit_timeout() -> None:
    async def scenario() -> None:
        async with _primary() as (node, client, _path):
            assert await node.call("ENGRAM.COMMITTIMEOUT", 300) == 300
            started = time.monotonic()
            reply = _err(await client.call("ACL", "SETUSER", "bob", "on"))
            assert reply.startswith("UNKNOWN commit not confirmed") and time.monotonic() - started >= 0.25
            # The client's next command does not wait for that change.
            assert await client.call("SET", "k", "v") == b"OK"

    run(scenario)


def test_apply_makes_the_users_match_except_those_with_a_change_pending() -> None:
    async def scenario() -> None:
        async with _primary() as (node, client, _path):
            baseline = await _rules(node, "default")
            # Rules as the primary's Valkey describes them, which is what the metadata stores.
            hashed, selector = "#" + "ab" * 32, "(~other +set)"
            await node.call("ACL", "SETUSER", "t1", "on", hashed, "~app:*", "&news:*", "+get", selector)
            await node.call("ACL", "SETUSER", "t2", "off")
            carol, dave = await _rules(node, "t1"), await _rules(node, "t2")
            assert carol and dave and "(~other" in carol
            await node.call("ACL", "DELUSER", "t1", "t2")
            await node.call("ACL", "SETUSER", "stale", "on", ">x")
            await node.call("ACL", "SETUSER", "default", "off")
            await node.call("ACL", "SETUSER", "carol", "on", ">old", "~*", "+get")
            changed = await node.call("ENGRAM.USERS.APPLY", "carol", carol, "dave", dave)
            assert changed == 4  # carol changed, dave made, stale deleted, default back to its start
            assert await _rules(node, "stale") is None
            assert await _rules(node, "default") == baseline
            assert await _rules(node, "carol") == carol
            assert await _rules(node, "dave") == dave
            # Applying the same set again changes nothing (no user is touched needlessly).
            assert await node.call("ENGRAM.USERS.APPLY", "carol", carol, "dave", dave) == 0
            # A user whose change is still pending keeps it: the metadata has not seen it yet.
            client.send(("ACL", "SETUSER", "erin", "on", ">pw"))
            while not await node.call("ENGRAM.USERS.PENDING"):
                pass
            assert await node.call("ENGRAM.USERS.APPLY", "carol", carol) == 1  # only dave goes
            assert await _rules(node, "erin") is not None and await _rules(node, "dave") is None
            # Rules Valkey refuses are named with the user; the other users still converge.
            reply = _err(await node.call("ENGRAM.USERS.APPLY", "bad", "on +nosuchcommand", "dave", dave))
            assert reply.startswith("ERR engram: user 'bad' could not be applied")
            assert await _rules(node, "bad") is None and await _rules(node, "dave") == dave

    run(scenario)


def test_only_the_node_over_the_unix_socket_may_read_confirm_or_apply_users() -> None:
    port = ports.allocate(1)[0]

    async def scenario() -> None:
        async with _primary("--port", str(port), "--bind", "127.0.0.1") as (node, _client, _path):
            remote = Conn(*await asyncio.open_connection("127.0.0.1", port))
            for command in (("ENGRAM.USERS.PENDING",), ("ENGRAM.USERS.DONE", 0), ("ENGRAM.USERS.APPLY",)):
                assert "accepted only from the node" in _err(await remote.call(*command)), command
            assert await node.call("ENGRAM.USERS.PENDING") == []
            assert "sequence from ENGRAM.USERS.PENDING" in _err(await node.call("ENGRAM.USERS.DONE", 5))

    run(scenario)


def test_declared_users_are_refused_to_clients_and_applied_once_from_hand_written_rules() -> None:
    async def scenario() -> None:
        async with _primary() as (node, client, path):
            assert await node.call("ENGRAM.USERS.DECLARE", "ops", "default") == 2
            refusals = {("ACL", "SETUSER", "ops", "off"): "ops", ("ACL", "DELUSER", "x", "ops"): "ops",
                        ("ACL", "SETUSER", "default", ">pw"): "default"}
            for change, user in refusals.items():
                declared = f"ERR engram: user '{user}' is declared in the cluster's configuration"
                assert _err(await client.call(*change)) == f"{declared}; change it there"
            assert await node.call("ENGRAM.USERS.PENDING") == []
            # Rules as a person writes them (a clear password, any order) apply once, then hold.
            written = "on >ops-pw ~* &* +@all"
            assert await node.call("ENGRAM.USERS.APPLY", "ops", written) == 1
            assert await node.call("ENGRAM.USERS.APPLY", "ops", written) == 0
            assert await (await Conn.open(path)).call("AUTH", "ops", "ops-pw") == b"OK"
            # Someone changing the user behind the node's back is undone on the next apply.
            await node.call("ACL", "SETUSER", "ops", "off")
            assert await node.call("ENGRAM.USERS.APPLY", "ops", written) == 1
            # A new declared set replaces the old one: ops may be changed by clients again.
            assert await node.call("ENGRAM.USERS.DECLARE") == 0
            client.send(("ACL", "SETUSER", "ops", "off"))
            [[seq, name, _]] = await node.call("ENGRAM.USERS.PENDING")
            assert name == b"ops" and await node.call("ENGRAM.USERS.DONE", seq) == b"OK"
            assert await client.read(1) == [b"OK"]

    run(scenario)


def test_the_nodes_connections_work_whatever_the_users_and_acl_load_is_refused() -> None:
    async def scenario() -> None:
        async with _primary() as (node, client, path):
            assert await node.call("ENGRAM.USERS.APPLY", "default", "off") == 1
            assert _err(await (await Conn.open(path)).call("PING")).startswith("NOAUTH")
            # A new node connection passes, as the module's own user, which ACL LIST does not show.
            internal = await Conn.open(path)
            assert await internal.call("ENGRAM.INTERNAL") == b"OK"
            assert b"user=engram-node" in await internal.call("CLIENT", "INFO")
            assert await internal.call("SET", "k", "v") == b"OK"
            assert not any(b"engram-node" in line for line in await internal.call("ACL", "LIST"))
            # ACL LOAD would replace users on this node alone (and drop the node's connections).
            assert await node.call("ENGRAM.USERS.APPLY") == 1  # the default user back
            assert "users are cluster state" in _err(await client.call("ACL", "LOAD"))
            assert await internal.call("PING") == b"PONG"

    run(scenario)
