"""Users under faults: every acknowledged ACL SETUSER must be on every node once the run is over.

Users are cluster state (docs/security.md): an acknowledged change is in the cluster's metadata,
and every node applies it. A writer makes one user a second through the shards' primaries while
faults run; at the end every node's ACL LIST must hold every acknowledged user.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import hiredis

from engram.chaos import client as chaos_client
from engram.chaos.client import RoutedClient
from engram.chaos.history import History, Kind, Outcome

USERS_EVERY = 1.0


@dataclass
class UserLog:
    """What the user writer was told about each user it made."""

    acknowledged: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


@dataclass
class UserCheck:
    """Acknowledged users missing from a node at the end (node address -> names)."""

    acknowledged: int
    unknown: int
    nodes: int
    missing: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.missing

    def summary(self) -> str:
        said = f"users: {self.acknowledged} acknowledged ({self.unknown} unknown) on {self.nodes} nodes"
        if self.ok:
            return f"{said}: every node has every acknowledged user"
        where = "; ".join(f"{node}: {', '.join(names[:5])}" for node, names in self.missing.items())
        return f"{said}; MISSING {where}"

    def to_json(self) -> dict[str, Any]:
        return {"acknowledged": self.acknowledged, "unknown": self.unknown, "nodes_checked": self.nodes,
                "missing": {node: names[:20] for node, names in self.missing.items()}}


async def run_users(prefix: str, endpoint: str, history: History, stop: asyncio.Event, log: UserLog,
                    timeout: float) -> None:
    """Make a user every USERS_EVERY through the primary owning its name's slot.

    A write to the same key goes first, on the same route: a failover answers it with MOVED, so
    the ACL SETUSER after it reaches the new primary instead of being refused by a replica. That
    write is recorded in the history and checked for loss like the others."""
    client = RoutedClient(endpoint, timeout=timeout)
    n = 0
    try:
        while not stop.is_set():
            n += 1
            name = f"{prefix}-user-{n}"
            key = name.encode()
            pending = history.invoke("users", name, Kind.WRITE, str(n))
            wrote = await client.call(key, b"SET", key, str(n).encode())
            history.complete(pending, wrote.outcome)
            made = await client.call(key, b"ACL", b"SETUSER", key, b"on", f">pw-{n}".encode(), b"~*", b"+get")
            outcomes = {Outcome.OK: log.acknowledged, Outcome.UNKNOWN: log.unknown}
            outcomes.get(made.outcome, log.failed).append(name)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), USERS_EVERY)
    finally:
        client.close()


async def _users_on(address: str) -> set[str]:
    host, port = address.rsplit(":", 1)
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(host, int(port), ssl=chaos_client.CLIENT_TLS), 5
    )
    try:
        writer.write(b"*2\r\n$3\r\nACL\r\n$5\r\nUSERS\r\n")
        parser = hiredis.Reader()
        while (reply := parser.gets()) is False:
            data = await asyncio.wait_for(reader.read(1 << 20), 5)
            if not data:
                raise ConnectionError(f"{address} closed the connection")
            parser.feed(data)
    finally:
        writer.close()
    if not isinstance(reply, list):
        raise ConnectionError(f"{address} answered ACL USERS with {reply!r}")
    return {u.decode() for u in reply}


async def check_users(log: UserLog, addresses: list[str], deadline: float) -> UserCheck:
    """Wait until every node holds every acknowledged user, or the deadline; report what is missing."""
    wanted = set(log.acknowledged)
    check = UserCheck(len(log.acknowledged), len(log.unknown), len(addresses))
    while True:
        missing: dict[str, list[str]] = {}
        for address in addresses:
            try:
                have = await _users_on(address)
            except (OSError, TimeoutError, ConnectionError) as exc:
                missing[address] = [f"(unreachable: {exc})"]
                continue
            if lost := sorted(wanted - have):
                missing[address] = lost
        check.missing = missing
        if not missing or time.monotonic() > deadline:
            return check
        await asyncio.sleep(0.5)
