"""The node's hold on its Valkey's data path: what it tells the Engram module, and when.

Clients talk to Valkey directly; the module holds write replies until the journal commits them
and answers the cluster protocol. The node decides (role, lease, topology) and pushes each
decision here over its own unix-socket connection. See docs/data-path.md.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from engram.valkey.connection import ValkeyConnection, ValkeyError

log = logging.getLogger(__name__)

# A lease deadline is pushed again once it has grown by this much: often enough that the
# module's copy never runs out while the node's is live, rarely enough to stay off the hot path.
LEASE_PUSH_STEP = 0.05
# CLUSTER replies list nodes by the freshness of their records: re-render now and then.
TOPOLOGY_REFRESH = 5.0


@dataclass
class LeasePlan:
    """The serving deadline the module holds, as last pushed (0: not serving)."""

    pushed: float = 0.0
    reason: str = ""


def lease_push(plan: LeasePlan, deadline: float, reason: str) -> bool:
    """Whether the module's deadline must be replaced by this one.

    Stopping is pushed at once; a deadline that moved back is pushed at once (the node never
    lets the module serve past its own lease); growth is pushed in steps.
    """
    if deadline <= 0:
        return plan.pushed > 0 or plan.reason != reason
    return deadline < plan.pushed or deadline >= plan.pushed + LEASE_PUSH_STEP


def deadline_us(deadline: float) -> int:
    """A time.monotonic() deadline as the module reads it: CLOCK_MONOTONIC microseconds."""
    return int(deadline * 1_000_000) if deadline > 0 else 0


class DataPath:
    """The node's own connection to its Valkey: module pushes and admin commands, in order."""

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self.lease = LeasePlan()
        self.role = ""
        self.topology_key: object = None
        self.topology_at = 0.0
        self._conn: ValkeyConnection | None = None
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        self._conn = await ValkeyConnection.open(self.socket_path)
        await self._conn.execute("ENGRAM.INTERNAL")

    async def execute(self, *args: bytes | str | int) -> object:
        """Run one command as the node (exempt from the module's checks), after earlier ones."""
        assert self._conn is not None, "DataPath.open() first"
        async with self._lock:
            return await self._conn.execute(*args)

    async def execute_now(self, *args: bytes | str | int, timeout: float = 10.0) -> object:
        """Run a command that must not wait behind a busy script: the script is killed.

        Stepping down cannot wait for a user's endless script. A script that already wrote cannot
        be killed; Valkey is then shut down without saving, and the node restarts empty.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                return await self.execute(*args)
            except ValkeyError as exc:
                if not str(exc).startswith("BUSY") or time.monotonic() > deadline:
                    raise
            log.warning("a busy script blocks %s: killing it", args[0])
            for kill in (("SCRIPT", "KILL"), ("FUNCTION", "KILL")):
                try:
                    await self.execute(*kill)
                except ValkeyError as exc:
                    if str(exc).startswith("UNKILLABLE"):
                        log.error("the busy script has written and cannot be killed: shutting Valkey down")
                        await self.execute("SHUTDOWN", "NOSAVE", "FORCE")
                        raise ConnectionError("valkey was shut down to end an unkillable script") from exc
            await asyncio.sleep(0.01)

    async def set_role(self, role: str) -> None:
        """primary: replies wait for commits; replica: nothing is held (held replies fail)."""
        await self.execute_now("ENGRAM.ROLE", role)
        self.role = role

    async def step_down(self, reason: str) -> None:
        """Fail every held reply (UNKNOWN) and stop serving, before Valkey's data is dropped."""
        if self.role == "replica":
            return  # done already (a switchover steps down before its demote): a replica holds nothing
        await self.set_lease(0.0, reason, force=True)
        await self.execute_now("ENGRAM.STEPDOWN", reason)
        await self.set_role("replica")

    async def set_lease(self, deadline: float, reason: str, force: bool = False) -> None:
        if not force and not lease_push(self.lease, deadline, reason):
            return
        run = self.execute_now if force else self.execute
        await run("ENGRAM.LEASE", deadline_us(deadline), *([reason] if deadline <= 0 else []))
        self.lease = LeasePlan(deadline if deadline > 0 else 0.0, reason if deadline <= 0 else "")

    async def set_topology(self, key: object, command: list[bytes]) -> None:
        """Replace the module's slot map, leaders and CLUSTER replies (key: what they derive from)."""
        await self.execute(*command)
        self.topology_key = key
        self.topology_at = time.monotonic()

    def topology_due(self, key: object) -> bool:
        return key != self.topology_key or time.monotonic() - self.topology_at >= TOPOLOGY_REFRESH

    async def disconnect_clients(self) -> None:
        """Hang up on every client: a deposed primary must not run what they have queued."""
        for kind in ("normal", "pubsub"):
            await self.execute_now("CLIENT", "KILL", "TYPE", kind, "SKIPME", "yes")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
