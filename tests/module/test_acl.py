"""ACL users need no rights to Engram's wrappers: whatever their rules, a user gets Valkey's own
answers, NOPERM texts included, with the module loaded or not (side by side)."""

from __future__ import annotations

import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.module.harness import Conn, attached_tap, comparable, run, valkey

pytestmark = pytest.mark.integration

Command = tuple[Any, ...]


async def _as(socket: str, user: str, password: str = "pw") -> Conn:
    client = await Conn.open(socket)
    assert await client.call("AUTH", user, password) == b"OK"
    return client


async def _pipeline(client: Conn, commands: list[Command]) -> list[Any]:
    client.send(*commands)
    return [comparable(r) for r in await client.read(len(commands))]


def _side_by_side(scenario: Callable[[str], Awaitable[Any]], *extra: str) -> tuple[Any, Any]:
    """The same scenario against a plain valkey-server and one with the module (and a tap that
    acknowledges at once, so replies are released)."""
    results: dict[str, Any] = {}

    async def both() -> None:
        async with valkey(*extra, module=False) as socket:
            results["plain"] = await scenario(socket)
        async with valkey(*extra) as socket, attached_tap(socket, auto=True):
            results["engram"] = await scenario(socket)

    run(both, timeout=60)
    return results["plain"], results["engram"]


# Writes first, so that what follows waits behind replies held for their commit.
PIPELINE: list[Command] = [
    ("SET", "app:1", "v"), ("GET", "app:1"), ("DBSIZE",), ("SET", "other", "v"), ("GET", "other"),
    ("INCR", "app:n"), ("PUBLISH", "news:1", "hi"), ("PUBLISH", "gossip", "hi"), ("SELECT", "0"),
    ("CLIENT", "SETNAME", "x"), ("EVAL", "return 1", "0"), ("MULTI",), ("SET", "app:2", "x"),
    ("SET", "other", "x"), ("EXEC",), ("MULTI",), ("INCR", "app:n"), ("EXEC",), ("GET", "app:n"),
    ("FLUSHALL",), ("LPUSH", "app:l", "a"), ("BLPOP", "app:l", "0"), ("CLUSTER", "INFO"),
    ("ENGRAM.W", "SET", "app:1", "x"), ("PING",), ("ECHO", "e"),
]

USERS = {
    # single commands: the case that needed +engram.w before
    "single": ("~*", "&*", "+set", "+get"),
    "single-more": ("~*", "&*", "+set", "+get", "+incr", "+multi", "+exec", "+publish", "+lpush", "+blpop",
                    "+ping"),
    # key and channel patterns
    "keys": ("~app:*", "&news:*", "+@all"),
    "readonly-keys": ("%R~app:*", "~other", "+@all"),
    # subcommands and first arguments
    "client-only": ("~*", "+set", "+client|setname", "+select|0"),
    "nothing": ("~*", "-@all"),
    "categories": ("~*", "&*", "+@read", "+@write", "-@dangerous"),
    "selectors": ("~app:*", "+get", "(~other +set +get)", "(~app:* +set)"),
}


async def _answers(socket: str) -> dict[str, list[Any]]:
    admin = await Conn.open(socket)
    out = {}
    for user, rules in USERS.items():
        assert await admin.call("ACL", "SETUSER", user, "on", ">pw", *rules) == b"OK"
        client = await _as(socket, user)
        out[user] = await _pipeline(client, PIPELINE)
        client.close()
        assert await admin.call("FLUSHALL") == b"OK"
    admin.close()
    return out


def test_users_granted_single_commands_keys_and_channels_get_valkeys_own_answers() -> None:
    plain, engram = _side_by_side(_answers)
    for user in USERS:
        for i, (p, e) in enumerate(zip(plain[user], engram[user], strict=True)):
            if PIPELINE[i][0] in ("ENGRAM.W", "CLUSTER"):
                continue  # the module's own command, and the cluster protocol: not Valkey's
            if PIPELINE[i][0] == "CLIENT" and not (isinstance(p, tuple) and p[1].startswith("NOPERM")):
                continue  # behind queued replies a permitted CLIENT SETNAME is refused in order
            assert e == p, (user, PIPELINE[i], p, e)
    assert plain["single"][:3] == [
        b"OK", b"v", ("error", "NOPERM User single has no permissions to run the 'dbsize' command"),
    ]
    assert plain["keys"][3] == ("error", "NOPERM No permissions to access a key")
    assert plain["keys"][7] == ("error", "NOPERM No permissions to access a channel")
    # A client naming a wrapper is refused, whatever its rights.
    assert str(engram["nothing"][-3][1]).startswith("ERR engram: 'ENGRAM.W' is the module's own")


def _log(entries: list[Any]) -> list[dict[bytes, Any]]:
    out = []
    for entry in entries:
        fields = dict(zip(entry[::2], entry[1::2], strict=True))
        out.append({k: fields[k] for k in (b"count", b"reason", b"object", b"username")})
    return out


def test_refusals_are_in_the_acl_log_as_valkey_logs_them() -> None:
    async def scenario(socket: str) -> list[Any]:
        admin = await Conn.open(socket)
        assert await admin.call("ACL", "SETUSER", "app", "on", ">pw", "~app:*", "&news:*", "+set", "+get",
                                "+publish") == b"OK"
        client = await _as(socket, "app")
        replies = await _pipeline(client, [("SET", "app:1", "v"), ("DBSIZE",), ("SET", "other", "v"),
                                           ("PUBLISH", "gossip", "x"), ("DBSIZE",), ("GET", "app:1")])
        return [replies, _log(await admin.call("ACL", "LOG"))]

    plain, engram = _side_by_side(scenario)
    assert engram[0] == plain[0]
    assert engram[1] == plain[1]
    # The newest first; a repeated refusal counts on its entry, which moves up.
    assert [e[b"object"] for e in plain[1]] == [b"dbsize", b"gossip", b"other"]
    assert plain[1][0][b"count"] == 2


def test_users_from_the_config_and_the_aclfile_and_later_changes() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="egm-acl-", dir="/tmp"))
    aclfile = tmp / "users.acl"
    aclfile.write_text("user default on nopass ~* &* +@all\nuser fromfile on >pw ~* +set +get\n")

    async def scenario(socket: str) -> list[Any]:
        admin = await Conn.open(socket)
        out: list[Any] = []
        fromfile = await _as(socket, "fromfile")
        out.append(await _pipeline(fromfile, [("SET", "k", "1"), ("GET", "k"), ("INCR", "k")]))
        # Rights changed under a connected client.
        assert await admin.call("ACL", "SETUSER", "fromfile", "+incr", "-get") == b"OK"
        out.append(await _pipeline(fromfile, [("SET", "k", "1"), ("INCR", "k"), ("GET", "k")]))
        # ACL LOAD puts the file's rules back.
        assert await admin.call("ACL", "LOAD") == b"OK"
        fromfile = await _as(socket, "fromfile")
        out.append(await _pipeline(fromfile, [("SET", "k", "1"), ("INCR", "k"), ("GET", "k")]))
        # A user created later, then deleted: its connection is closed.
        assert await admin.call("ACL", "SETUSER", "later", "on", ">pw", "~k*", "+set") == b"OK"
        later = await _as(socket, "later")
        out.append(await _pipeline(later, [("SET", "k", "2"), ("SET", "x", "2"), ("GET", "k")]))
        assert await admin.call("ACL", "DELUSER", "later") == 1
        later.send(("SET", "k", "3"))
        try:
            await later.read(1)
            out.append("still connected")
        except ConnectionError:
            out.append("closed")
        return out

    try:
        plain, engram = _side_by_side(scenario, "--aclfile", str(aclfile))
    finally:
        for f in tmp.iterdir():
            f.unlink()
        tmp.rmdir()
    assert engram == plain
    denied = ("error", "NOPERM User fromfile has no permissions to run the 'incr' command")
    assert plain[0] == [b"OK", b"1", denied]
    assert plain[-1] == "closed"


def test_a_user_line_in_the_config_works_without_rights_to_the_wrappers() -> None:
    async def scenario(socket: str) -> list[Any]:
        client = await _as(socket, "cfg")
        return await _pipeline(client, [("SET", "k", "v"), ("GET", "k"), ("DEL", "k")])

    # Valkey loads the users of its configuration after the modules.
    plain, engram = _side_by_side(scenario, "--user", "cfg", "on", ">pw", "~*", "+set", "+get")
    denied = ("error", "NOPERM User cfg has no permissions to run the 'del' command")
    assert engram == plain == [b"OK", b"v", denied]


def test_a_database_restricted_user_gets_valkeys_answers() -> None:
    async def scenario(socket: str) -> list[Any]:
        admin = await Conn.open(socket)
        assert await admin.call("ACL", "SETUSER", "db1", "on", ">pw", "~*", "+@all", "db=1") == b"OK"
        client = await _as(socket, "db1")
        return await _pipeline(client, [
            ("SET", "k", "v"), ("PING",), ("SELECT", "1"), ("SET", "k", "v"), ("PING",), ("GET", "k"),
            ("ECHO", "x"), ("SELECT", "0"), ("DBSIZE",),
        ])

    plain, engram = _side_by_side(scenario)
    assert engram == plain
    assert plain[0] == ("error", "NOPERM No permissions to access database")


# ---- the default user with a password -------------------------------------------------------------


def test_with_requirepass_unauthenticated_clients_are_refused_and_authenticated_ones_served() -> None:
    async def scenario(socket: str) -> list[Any]:
        out: list[Any] = []
        # Set once Valkey is up (the harness waits for an unauthenticated PING to answer).
        assert await (await Conn.open(socket)).call("CONFIG", "SET", "requirepass", "secret") == b"OK"
        anonymous = await Conn.open(socket)
        out.append(await _pipeline(anonymous, [
            ("SET", "k", "v"), ("GET", "k"), ("PING",), ("MULTI",), ("CLIENT", "REPLY", "OFF"),
            ("SELECT", "1"), ("ENGRAM.INFO",),
        ]))
        # AUTH in the same write as the commands after it.
        out.append(await _pipeline(anonymous, [("AUTH", "secret"), ("SET", "k", "v"), ("GET", "k"),
                                               ("SELECT", "1"), ("SET", "k", "1"), ("SELECT", "0"),
                                               ("INCR", "k")]))
        out.append(await _pipeline(anonymous, [("RESET",), ("SET", "k", "v"), ("GET", "k")]))
        hello = await Conn.open(socket)
        reply = (await _pipeline(hello, [("HELLO", "3", "AUTH", "default", "secret"), ("SET", "h", "1"),
                                         ("GET", "h")]))
        out.append(reply[1:])
        # A user with rights to single commands, on a server with a password.
        admin = await _as(socket, "default", "secret")
        assert await admin.call("ACL", "SETUSER", "app", "on", ">pw", "~*", "+set", "+get") == b"OK"
        app = await _as(socket, "app")
        out.append(await _pipeline(app, [("SET", "k", "w"), ("GET", "k"), ("DBSIZE",)]))
        return out

    plain, engram = _side_by_side(scenario)
    noauth = ("error", "NOAUTH Authentication required.")
    assert plain[0][:4] == [noauth] * 4
    # ENGRAM.INFO is the module's own command: Valkey refuses it unauthenticated too.
    assert engram[0][:6] == plain[0][:6] and engram[0][6] == noauth
    assert engram[1:] == plain[1:]
    assert plain[2] == [b"RESET", noauth, noauth]


def test_default_user_turned_off_later_still_serves_its_authenticated_connections() -> None:
    async def scenario(socket: str) -> list[Any]:
        admin = await Conn.open(socket)
        assert await admin.call("ACL", "SETUSER", "admin", "on", ">pw", "~*", "&*", "+@all") == b"OK"
        early = await Conn.open(socket)  # authenticated when it connected: the default user had no password
        assert await early.call("PING") == b"PONG"
        assert await admin.call("ACL", "SETUSER", "default", "off") == b"OK"
        late = await Conn.open(socket)
        return [await _pipeline(early, [("SET", "k", "v"), ("GET", "k")]),
                await _pipeline(late, [("SET", "k", "v"), ("GET", "k")])]

    plain, engram = _side_by_side(scenario)
    assert engram == plain
    assert plain[1][0] == ("error", "NOAUTH Authentication required.")
